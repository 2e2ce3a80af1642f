"""Device mesh with (data, fsdp, tensor) axes and the parameter -> PartitionSpec rules."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch dimension is split over both; fsdp also splits parameters.

# Leaf name -> mesh axis per dimension. Matmul inputs split over fsdp, heads/MLP width over tensor.
_RULES: dict[str, tuple] = {
    "embed": ("tensor", "fsdp"), "pos_embed": (None, "fsdp"), "lm_head": ("fsdp", "tensor"),
    "wq": ("fsdp", "tensor"), "wk": ("fsdp", "tensor"), "wv": ("fsdp", "tensor"), "wo": ("tensor", "fsdp"),
    "w_gate": ("fsdp", "tensor"), "w_up": ("fsdp", "tensor"), "w_down": ("tensor", "fsdp"),
    "bq": ("tensor",), "bk": ("tensor",), "bv": ("tensor",), "b_gate": ("tensor",), "b_up": ("tensor",),
}


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int = -1    # -1: all devices not used by fsdp and tensor
  fsdp: int = 1
  tensor: int = 1


def make_mesh(cfg: MeshConfig, devices=None) -> Mesh:
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  data = cfg.data if cfg.data != -1 else n // max(cfg.fsdp * cfg.tensor, 1)
  shape = (data, cfg.fsdp, cfg.tensor)
  if int(np.prod(shape)) != n or min(shape) < 1:
    raise ValueError(f"mesh data={cfg.data} fsdp={cfg.fsdp} tensor={cfg.tensor} does not fit {n} devices")
  return Mesh(np.asarray(devices).reshape(shape), AXES)


def param_spec(path, shape, mesh: Mesh) -> P:
  """The rule for the leaf's name, dropping any axis that does not divide its dimension."""
  name = str(getattr(path[-1], "key", path[-1])) if path else ""
  rule = _RULES.get(name, ())
  if name == "kernel" and len(shape) == 2:  # reward head
    rule = ("fsdp", None)
  spec = []
  for dim, axis in zip(shape, rule + (None,) * (len(shape) - len(rule))):
    spec.append(axis if axis is not None and dim % mesh.shape[axis] == 0 else None)
  return P(*spec)


def param_shardings(params, mesh: Mesh):
  return jax.tree_util.tree_map_with_path(lambda p, x: NamedSharding(mesh, param_spec(p, x.shape, mesh)), params)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
