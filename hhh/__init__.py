"""hhh: preference modeling and HHH alignment baselines in JAX/Flax NNX."""

import os as _os

__version__ = "0.1.0"

# XLA:CPU's default dot path (YNNPACK fusions) leaves the weight-gradient matmuls of a train step, whose
# operands contract over their leading (token) axis, to a transposing copy or a slower fallback; with YNNPACK
# fusions off, every dot goes to Eigen's contraction, which reads either layout. On 2 AVX2 cores that made the
# PM train step 9-20% faster in each interleaved round we ran (benchmarks/train_step.py, variant `ynn`); since
# the matmuls flatten their token axes the two are within noise on an AVX-512 Xeon. It changes nothing on GPU or
# TPU. Applied only for the jaxlib minor version it was measured on (XLA aborts on a flag it does not know),
# only before JAX starts its backend, and never over a user's own setting of the flag; HHH_XLA_DEFAULTS=0 turns
# it off.
_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)


def _set_xla_defaults():
  if _os.environ.get("HHH_XLA_DEFAULTS", "1") == "0":
    return
  try:
    from importlib.metadata import version
    if not version("jaxlib").startswith("0.10."):
      return
  except Exception:  # no jaxlib metadata: leave XLA as it is
    return
  flags = _os.environ.get("XLA_FLAGS", "")
  extra = [f for f in _CPU_FLAGS if f.split("=")[0] not in flags]
  if extra:
    _os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


_set_xla_defaults()
