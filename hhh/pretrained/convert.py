"""Any loaded LM (GGUF, HF directory, hhh run) as an hhh checkpoint: `hhh convert MODEL --out DIR`.

The result is an ordinary training workdir (`DIR/checkpoints/0/{state,meta}`), so everything that takes an hhh
checkpoint takes it: `init_from=DIR` starts LM or PM training from a pretrained model, and `hhh generate`,
`hhh eval` and `load_lm` read it back.

`hhh convert HF_DIR --out BUNDLE --as-bundle` instead reads an HF sequence-classification reward model
(`*ForSequenceClassification`, num_labels 1) into a reward bundle: `hhh.reward.hf_export.convert_command`.
"""

from __future__ import annotations

import dataclasses
import pathlib

from hhh import config as config_lib
from hhh import outdir

CONVERT = "hhh convert"  # what its outputs are marked as (hhh/outdir.py)


def save_checkpoint(lm, workdir, *, step: int = 0, extra_meta: dict | None = None, force: bool = False,
                    sources=()) -> pathlib.Path:
  """Writes `lm` as checkpoint `step` of a new workdir, as `hhh convert` does; returns the step directory.
  `workdir` is refused, or with `force` replaced, as hhh/outdir.py says (`sources`: what `lm` was read from)."""
  with outdir.staged(workdir, CONVERT, sources=sources, force=force) as tmp:
    write_checkpoint(lm, tmp, step=step, extra_meta=extra_meta)
  return pathlib.Path(workdir).absolute() / "checkpoints" / str(step)


def write_checkpoint(lm, workdir, *, step: int = 0, extra_meta: dict | None = None) -> None:
  """save_checkpoint's work, into a workdir that is not there yet (a caller's staging directory)."""
  from hhh.train import checkpoint as ckpt_lib
  width = min(lm.cfg.max_len, 512)
  run_cfg = config_lib.TrainConfig(
      objective="lm", model=lm.cfg,
      data=dataclasses.replace(config_lib.DataConfig(), max_len=width, buckets=(width,)))
  meta = {"config": config_lib.to_dict(run_cfg), "tokenizer": lm.tokenizer.to_json(), "objective": "lm",
          "converted_from": lm.name, **(extra_meta or {})}
  if lm.chat_template:
    meta["chat_template"] = lm.chat_template
  pathlib.Path(workdir).mkdir(parents=True)
  ckpts = ckpt_lib.Checkpoints(workdir, keep=1)
  try:
    ckpts.save(step, {"params": lm.params}, None, meta)
  finally:
    ckpts.close()
  (pathlib.Path(workdir) / "config.json").write_text(config_lib.dumps(run_cfg))


def convert_command(args) -> None:
  from hhh.model import family
  from hhh.pretrained import load_lm
  if args.as_bundle:
    return args.bundle_command(args)   # hhh.reward.hf_export.convert_command, given by the CLI
  # A model named, not given as a path, is read from hhh's cache: nothing of the user's to protect there.
  sources = [args.model] if pathlib.Path(args.model).exists() else []
  outdir.check(args.out, CONVERT, sources=sources, force=args.force)  # before the load, which may take minutes
  lm = load_lm(args.model)
  where = save_checkpoint(lm, args.out, force=args.force, sources=sources)
  n = family.param_counts(lm.cfg)
  print(f"hhh: wrote {lm.name} ({n['total']:,} parameters) as an hhh checkpoint: {where}")


def add_cli(sub, bundle_command) -> None:
  """`hhh convert`; `bundle_command(args)` does `--as-bundle` (hhh.reward.hf_export.convert_command), which reads
  into a reward bundle: passed in by the CLI, since the reward package builds on this one."""
  p = sub.add_parser("convert", help="write a pretrained LM (name, .gguf, HF dir) as an hhh checkpoint")
  p.add_argument("model", help="smollm2-135m-instruct, a .gguf file, an HF directory, or an hhh run")
  p.add_argument("--out", required=True, help="output workdir (usable as init_from=DIR), or bundle with --as-bundle")
  p.add_argument("--as-bundle", action="store_true",
                 help="MODEL is an HF sequence-classification reward model: write an hhh reward bundle")
  p.add_argument("--force", action="store_true", help="replace --out if it holds an earlier output of this command")
  p.set_defaults(func=convert_command, bundle_command=bundle_command)
