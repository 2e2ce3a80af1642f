"""The tiny PM started from a pretrained LM run (default: runs/tiny_lm, made by experiments/tiny_lm.py)."""

import dataclasses
import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("tiny_pm", pathlib.Path(__file__).with_name("tiny_pm.py"))
_tiny_pm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tiny_pm)


def config():
  return dataclasses.replace(_tiny_pm.config(), init_from="runs/tiny_lm")
