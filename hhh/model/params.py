"""A model's parameters as plain nested dicts of arrays: fresh from a key, abstract (shapes only, for restoring
without allocating), and by dotted name ("layers.0.attn.wq") for reading and writing other formats.

Every trainer, loader and exporter gets its parameter trees here, so the tree's layout is defined in one place:
the `Transformer`'s own (`nnx.split` then `nnx.to_pure_dict`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hhh.model.config import ModelConfig
from hhh.model.transformer import Transformer


def graphdef_and_params(cfg: ModelConfig, key):
  """(graphdef, params) of a freshly initialized `Transformer`, its parameters drawn from `key`."""
  model = Transformer(cfg, rngs=nnx.Rngs(params=key))
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state)


def abstract_params(cfg: ModelConfig):
  """(graphdef, params) with `jax.ShapeDtypeStruct` leaves: the tree's layout, nothing allocated."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  return graphdef, nnx.to_pure_dict(state)


@functools.lru_cache(maxsize=8)
def model_structure(cfg: ModelConfig):
  """`abstract_params(cfg)`, cached: tracing a 30-layer model takes seconds."""
  return abstract_params(cfg)


def on_first_device(cfg: ModelConfig):
  """The abstract parameter tree placed on this process's first device: what a checkpoint or bundle is restored
  against when one process reads it, whatever topology it was written on."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), abstract_params(cfg)[1])


def flat_param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Dotted parameter names ("layers.0.attn.wq") -> shapes, for `cfg`'s `Transformer`."""
  leaves = jax.tree_util.tree_flatten_with_path(model_structure(cfg)[1])[0]
  return {".".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def assemble_params(cfg: ModelConfig, flat: Mapping[str, np.ndarray], source: str) -> dict:
  """The nested float32 param dict of `cfg`'s `Transformer` from dotted names; shapes are checked.

  The reward head may be absent (a pretrained LM has none): it then starts at zero.
  """
  shapes = flat_param_shapes(cfg)
  flat = dict(flat)
  flat.setdefault("reward_head.kernel", np.zeros((cfg.d_model, 1), np.float32))
  flat.setdefault("reward_head.bias", np.zeros((1,), np.float32))
  missing, extra = sorted(set(shapes) - set(flat)), sorted(set(flat) - set(shapes))
  if missing or extra:
    raise ValueError(f"{source}: parameters do not match the model config (missing {missing}, unexpected {extra})")
  params: dict = {}
  for name, shape in shapes.items():
    value = np.asarray(flat[name])
    if value.shape != shape:
      raise ValueError(f"{source}: {name} has shape {value.shape}, the config needs {shape}")
    node = params
    *parents, leaf = [int(k) if k.isdigit() else k for k in name.split(".")]
    for k in parents:
      node = node.setdefault(k, {})
    # One device copy now, instead of a host-to-device transfer on every jitted call.
    node[leaf] = jnp.asarray(value, jnp.float32)
  return params


def flatten_params(params) -> dict[str, np.ndarray]:
  """Inverse of `assemble_params`: dotted names -> float32 numpy arrays."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return {".".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf, np.float32) for path, leaf in leaves}
