"""Language models from anywhere, as one record: hhh checkpoints and bundles, HF directories, GGUF files, names.

`load_lm(spec)` is the single entry point evals, generation and context distillation use:

    smollm2-135m-instruct     a registered name (see NAMES)
    PATH/                     an hhh training workdir, checkpoint step dir or reward bundle
    PATH/                     an HF-format directory (config.json + *.safetensors + tokenizer.json)
    PATH.gguf                 a GGUF file

Pretrained weights are mapped into the `Transformer` parameter tree in float32
(`hhh.model.params.assemble_params` checks every shape against the config). A checkpoint has no
preference head, so a pretrained LM's `reward_head` starts at zero.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

from hhh.pretrained.lm import LM


def _smollm2() -> LM:
  from hhh.pretrained import gguf
  return gguf.load_gguf(gguf.fetch_smollm2(), name="smollm2-135m-instruct")


# Registered names -> loaders (each fetches its files once into the cache, see `hhh.pretrained.gguf.cache_dir`).
NAMES: dict[str, Callable[[], LM]] = {
    "smollm2-135m-instruct": _smollm2,
}


def load_hhh(path) -> LM:
  """An hhh training workdir (latest checkpoint), checkpoint step dir, or reward bundle."""
  from hhh.model import bundle as bundle_lib
  from hhh.model import params as params_lib
  from hhh.model.validate import model_config
  from hhh.train import checkpoint as ckpt_lib
  path = pathlib.Path(path)
  if (path / "bundle.json").exists():
    cfg, params, tok, _ = bundle_lib.read(path)
    return LM(cfg, params, tok, name=str(path), chat_template=getattr(tok, "chat_template", None))
  meta = ckpt_lib.load_meta(path)
  model = meta.get("config", {}).get("model") if isinstance(meta.get("config"), dict) else None
  # The checkpoint may come from anyone too: its model config passes the bundle reader's checks and bounds.
  cfg = model_config(model if isinstance(model, dict) else None, f"{path}: checkpoint meta")
  # Restore onto one local device, whatever topology the run was trained on.
  params, meta = ckpt_lib.load_params(path, params_lib.on_first_device(cfg))
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
