"""Language models from anywhere, as one record: hhh checkpoints and bundles, HF directories, GGUF files, names.

`load_lm(spec)` is the single entry point evals, generation and context distillation use:

    smollm2-135m-instruct     a registered name (see NAMES)
    PATH/                     an hhh training workdir, checkpoint step dir or reward bundle
    PATH/                     an HF-format directory (config.json + *.safetensors + tokenizer.json)
    PATH.gguf                 a GGUF file
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

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
    from hhh.train.step import abstract_params
    return abstract_params(self.cfg)[0]


def load_hhh(path) -> LM:
  """An hhh training workdir (latest checkpoint), checkpoint step dir, or reward bundle."""
  import jax
  from hhh import config as config_lib
  from hhh.reward import bundle as bundle_lib
  from hhh.train import checkpoint as ckpt_lib
  from hhh.train.step import abstract_params
  path = pathlib.Path(path)
  if (path / "bundle.json").exists():
    cfg, params, tok, _ = bundle_lib.read(path)
    return LM(cfg, params, tok, name=str(path))
  cfg = config_lib.from_dict(ModelConfig, ckpt_lib.load_meta(path)["config"]["model"])
  # Restore onto one local device, whatever topology the run was trained on.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                          abstract_params(cfg)[1])
  params, meta = ckpt_lib.load_params(path, abstract)
  return LM(cfg, params, ckpt_lib.tokenizer_from_meta(meta), name=str(path))


def load_lm(spec: str) -> LM:
  """See the module docstring."""
  path = pathlib.Path(spec)
  if path.exists() and ((path / "bundle.json").exists() or (path / "checkpoints").exists()
                        or any(path.glob("*/meta")) or (path / "meta").exists()):
    return load_hhh(path)
  raise FileNotFoundError(f"{spec}: not a known model name, hhh checkpoint, HF directory or .gguf file")
