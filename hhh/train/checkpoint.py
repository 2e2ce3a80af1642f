"""Orbax checkpoints: train state, data-iterator state and JSON metadata (config, tokenizer) saved together.

Layout: `WORKDIR/checkpoints/<step>/{state,data,meta}`. `meta` is plain JSON, so a
checkpoint is self-describing (model config and tokenizer) and loads without pickle.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
from orbax.checkpoint import v1 as ocp

from hhh.data import tokenizer as tokenizer_lib


class Checkpoints:

  def __init__(self, workdir, keep: int):
    self.dir = pathlib.Path(workdir).absolute() / "checkpoints"
    self._ckpt = ocp.training.Checkpointer(
        self.dir, preservation_policy=ocp.training.preservation_policies.LatestN(keep))

  def latest_step(self) -> int | None:
    latest = self._ckpt.latest
    return None if latest is None else int(latest.step)

  def save(self, step: int, state, data_iter, meta: dict[str, Any]):
    checkpointables = {"state": state, "meta": meta}
    if data_iter is not None:
      checkpointables["data"] = data_iter
    self._ckpt.save_checkpointables(step, checkpointables, force=True)

  def restore(self, step: int, abstract_state, data_iter):
    """Loads the state onto `abstract_state`'s shardings and rewinds `data_iter` in place."""
    abstract = {"state": abstract_state, "meta": None}
    if data_iter is not None:
      abstract["data"] = data_iter
    out = self._ckpt.load_checkpointables(step, abstract)
    return out["state"], out["meta"]

  def close(self):
    self._ckpt.close()


def _resolve(path) -> pathlib.Path:
  """A run's workdir (its latest checkpoint), its checkpoints dir, or one step dir."""
  path = pathlib.Path(path).absolute()
  if (path / "state").is_dir():
    return path
  root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
  steps = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / "state").is_dir()),
                 reverse=True) if root.is_dir() else []
  if not steps:
    raise FileNotFoundError(f"no checkpoint found under {path}")
  return root / str(steps[0])


def load_meta(path) -> dict[str, Any]:
  return ocp.load_checkpointables(_resolve(path), {"meta": None})["meta"]


def load_params(path, abstract_params=None):
  """Parameters and metadata of a checkpoint, e.g. to start PM training from an LM (init_from).

  With `abstract_params` (ShapeDtypeStructs, optionally with shardings) the arrays
  are restored onto those shapes and shardings; a shape mismatch is an error.
  """
  step_dir = _resolve(path)
  meta = load_meta(step_dir)
  if abstract_params is None:
    state = ocp.load_checkpointables(step_dir, {"state": None})["state"]
    return state["params"], meta
  abstract = {"state": {"params": abstract_params}}
  ctx = ocp.Context()
  ctx.pytree.loading.partial_load = True  # the checkpoint also holds opt_state, step and rng
  with ctx:
    state = ocp.load_checkpointables(step_dir, abstract)["state"]
  return state["params"], meta


def tokenizer_from_meta(meta: dict[str, Any]):
  return tokenizer_lib.from_json(meta["tokenizer"])


def host_scalar_tree(tree):
  """Local copy of replicated arrays (works on every process, unlike device_get on global arrays)."""
  return jax.tree.map(lambda x: x.addressable_data(0) if hasattr(x, "addressable_data") else x, tree)
