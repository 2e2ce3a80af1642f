"""Language models from anywhere, as one record: hhh checkpoints and bundles, HF directories, GGUF files, names.

`load_lm(spec)` is the single entry point evals, generation and context distillation use:

    smollm2-135m-instruct     a registered name (see NAMES)
    PATH/                     an hhh training workdir, checkpoint step dir or reward bundle
    PATH/                     an HF-format directory (config.json + *.safetensors + tokenizer.json)
    PATH.gguf                 a GGUF file

Pretrained weights are mapped into the `Transformer` parameter tree in float32
(`assemble_params` checks every shape against the config). A checkpoint has no
preference head, so a pretrained LM's `reward_head` starts at zero.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from hhh.model.config import ModelConfig


@dataclasses.dataclass
class LM:
  """A loaded decoder: config, float32 parameters (nested pure dict, `Transformer` layout) and tokenizer."""
  cfg: ModelConfig
  params: Any
  tokenizer: Any
  name: str
  chat_template: str | None = None   # a Jinja chat template from the checkpoint, when it has one

  @property
  def graphdef(self):
    return model_structure(self.cfg)[0]


@functools.lru_cache(maxsize=8)
def model_structure(cfg: ModelConfig):
  """(graphdef, abstract params) of `cfg`'s `Transformer`, cached: tracing a 30-layer model takes seconds."""
  from hhh.train.step import abstract_params
  return abstract_params(cfg)


def _smollm2() -> LM:
  from hhh.pretrained import gguf
  return gguf.load_gguf(gguf.fetch_smollm2(), name="smollm2-135m-instruct")


# Registered names -> loaders (each fetches its files once into the cache, see `hhh.pretrained.gguf.cache_dir`).
NAMES: dict[str, Callable[[], LM]] = {
    "smollm2-135m-instruct": _smollm2,
}


def flat_param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """Dotted parameter names ("layers.0.attn.wq") -> shapes, for `cfg`'s `Transformer`."""
  import jax
  leaves = jax.tree_util.tree_flatten_with_path(model_structure(cfg)[1])[0]
  return {".".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def assemble_params(cfg: ModelConfig, flat: Mapping[str, np.ndarray], source: str) -> dict:
  """The nested float32 param dict of `cfg`'s `Transformer` from dotted names; shapes are checked.

  The reward head may be absent (a pretrained LM has none): it then starts at zero.
  """
  import jax.numpy as jnp
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
  import jax
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  return {".".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf, np.float32) for path, leaf in leaves}


def load_hhh(path) -> LM:
  """An hhh training workdir (latest checkpoint), checkpoint step dir, or reward bundle."""
  import jax
  from hhh.reward import bundle as bundle_lib
  from hhh.train import checkpoint as ckpt_lib
  from hhh.train.step import abstract_params
  path = pathlib.Path(path)
  if (path / "bundle.json").exists():
    cfg, params, tok, _ = bundle_lib.read(path)
    return LM(cfg, params, tok, name=str(path), chat_template=getattr(tok, "chat_template", None))
  meta = ckpt_lib.load_meta(path)
  model = meta.get("config", {}).get("model") if isinstance(meta.get("config"), dict) else None
  # The checkpoint may come from anyone too: its model config passes the bundle reader's checks and bounds.
  cfg = bundle_lib.model_config(model if isinstance(model, dict) else None, f"{path}: checkpoint meta")
  # Restore onto one local device, whatever topology the run was trained on.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                          abstract_params(cfg)[1])
  params, meta = ckpt_lib.load_params(path, abstract)
  tok = ckpt_lib.tokenizer_from_meta(meta)
  return LM(cfg, params, tok, name=str(path), chat_template=getattr(tok, "chat_template", None))


def load_lm(spec: str) -> LM:
  """See the module docstring."""
  if spec in NAMES:
    return NAMES[spec]()
  path = pathlib.Path(spec)
  if path.exists() and ((path / "bundle.json").exists() or (path / "checkpoints").exists()
                        or any(path.glob("*/meta")) or (path / "meta").exists()):
    return load_hhh(path)
  if path.is_file() and path.suffix == ".gguf":
    from hhh.pretrained import gguf
    return gguf.load_gguf(path)
  if path.is_dir() and (path / "config.json").exists():
    from hhh.pretrained import hf
    return hf.load_hf(path)
  raise FileNotFoundError(f"{spec}: not a known model name ({', '.join(sorted(NAMES))}), hhh checkpoint, "
                          "HF directory or .gguf file")
