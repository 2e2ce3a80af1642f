"""`LM`: a loaded decoder (config, float32 parameters, tokenizer), whatever it was loaded from."""

from __future__ import annotations

import dataclasses
from typing import Any

from hhh.model.config import ModelConfig
from hhh.model.params import model_structure


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
