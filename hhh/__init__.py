"""hhh: preference modeling and HHH alignment baselines in JAX/Flax NNX."""

__version__ = "0.1.0"
