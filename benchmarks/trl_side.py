"""TRL's RewardTrainer as the reference side of hhh's real-data benchmarks: a timed worker and its client.

    python benchmarks/trl_side.py drive --hf-dir HF_DIR --rows ROWS.jsonl [--modes default,best] [--rounds 3]

HF_DIR is an HF sequence-classification directory (`hhh export RUN --format hf --out HF_DIR`); ROWS.jsonl holds
the comparisons, in the order to train on, one pair a line: `{"chosen_ids": [...], "rejected_ids": [...]}`
(token ids, ending in the reward token; `encode_rows` writes them from hhh's own encoding, so both sides compute
on identical tokens), or `{"prompt", "chosen", "rejected"}` text, which TRL tokenizes itself. A K-way ranking is
fed as its pairs (`kway_pairs`): every (better, worse) pair of one ranking, consecutively, each with
`"comparison": i` so the runner can count rankings.

Two modes, both fp32 without gradient checkpointing (TRL defaults to bf16 and gradient checkpointing; neither is
what a CPU user runs):
- `default`: what a user gets. `DataCollatorForPreference` pads chosen and rejected of a batch to its longest row.
  The rows come in the given order (a sequential sampler: the order is already shuffled, and a random sampler
  would only draw the same padding statistics in another order).
- `best`: TRL at its fastest on CPU: `train_sampling_strategy="group_by_length"` (megabatches of 50 batches, each
  sorted by length, so a batch pads to a near neighbour). It needs a `length` column and
  `remove_unused_columns=False`: the trainer drops unknown columns before it builds the sampler, which then looks
  for `input_ids` and fails. `pad_to_multiple_of` only adds work on CPU (eager kernels gain nothing from round
  shapes), so it is off unless asked for (`--pad-to-multiple-of`).

The worker speaks the protocol of benchmarks/train_step_torch.py over stdin/stdout: after `--warmup` steps it prints
`{"ready": true, ...}`; each `run N` line is answered, after N more steps, with one JSON line:
`{"times": [s per step], "rows": [pairs], "comparisons": [rankings, fractional for K-way], "real_tokens": [...],
"processed_tokens": [...], "loadavg": [1, 5, 15 min], "peak_gflops": torch fp32 matmul rate}`; `quit` ends it.
A step's time runs from the end of the previous step to the end of this one, so it includes fetching and
collating its batch (what a user waits for). Real tokens are the unpadded ones TRL computes on
(`attention_mask.sum()`: each pair's context twice, and once per pair for K-way), processed tokens every position
of the padded batch; a caller that counts the tokens a comparison needs (its context once) divides by its own
count. Everything else the trainer prints goes to stderr.

From Python (to interleave rounds with other sides): `w = TRLWorker(hf_dir, rows_path, mode="best",
batch_size=8); w.start(); w.run(3); w.stop()`, or `drive(...)`. `allocator="jemalloc"` starts the worker under
jemalloc (hhh.cpu_malloc's library and settings); `drive` runs one worker per (mode, allocator), so each side can
be reported at its better allocator.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
MODES = ("default", "best")


# ---------------------------------------------------------------- rows (no torch needed)


def encode_rows(comparisons, tok, max_len: int, max_k: int = 2, cut: str = "each") -> list[dict]:
  """hhh's exact token ids (context + response + <eoc>, context cut from the left to fit `max_len`, per response
  or, with cut "shared", once for all of a comparison's responses as `hhh train` does) as pair rows.

  A K-way ranking becomes all its (better, worse) pairs, ties skipped, each tagged with its comparison's index:
  the pairs `hhh.objectives.ranked_loss` averages over, so the two losses are the same function.
  """
  from hhh.data.pipeline import encode_comparison
  rows = []
  for i, c in enumerate(comparisons):
    ex = encode_comparison(c, tok, max_len, max_k, cut=cut)
    for a, b in kway_pairs(ex.scores):
      rows.append({"chosen_ids": ex.seqs[a].tolist(), "rejected_ids": ex.seqs[b].tolist(), "comparison": i})
  return rows


def kway_pairs(scores) -> list[tuple[int, int]]:
  """(better, worse) index pairs of one ranking, ties skipped; [1, 0] -> [(0, 1)]."""
  k = len(scores)
  return [(a, b) for a in range(k) for b in range(k) if scores[a] > scores[b]]


def load_comparisons(source: str, split: str = "all") -> list:
  """HH-RLHF (a file or folder of its .jsonl.gz, read by hhh's loader) or a dataset dir from `hhh data mine`."""
  from hhh.data import store
  if store.is_dataset_dir(source):
    splits = store.splits_of(source) if split == "all" else [split]
    return [c for sp in splits for c in store.load(source, sp)]
  from hhh.data.load import hh_rlhf
  from hhh.data.mine.common import MineStats
  return [c for _, c, sp in hh_rlhf.load(source, hh_rlhf.Options(), MineStats(hh_rlhf.SOURCE))
          if split == "all" or sp == split]


def write_rows(rows, path) -> pathlib.Path:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w") as f:
    for r in rows:
      f.write(json.dumps(r) + "\n")
  return path


def read_rows(path) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------- the TRL trainer


def reward_config(output_dir, *, batch_size: int, max_length: int, mode: str = "default", lr: float = 1e-4,
                  weight_decay: float = 0.0, max_grad_norm: float = 1.0, lr_scheduler_type: str = "constant",
                  lr_scheduler_kwargs: dict | None = None, warmup_steps: int = 0, max_steps: int = 10**9,
                  adam_beta1: float = 0.9, adam_beta2: float = 0.999, adam_epsilon: float = 1e-8,
                  pad_to_multiple_of: int | None = None, seed: int = 0, **extra):
  """A `RewardConfig` for CPU fp32 runs; `mode` picks the sampler (see the module docstring)."""
  from trl import RewardConfig
  if mode not in MODES:
    raise ValueError(f"mode={mode!r}: expected one of {MODES}")
  best = mode == "best"
  return RewardConfig(
      output_dir=str(output_dir), per_device_train_batch_size=batch_size, max_length=max_length,
      max_steps=max_steps, learning_rate=lr, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
      lr_scheduler_type=lr_scheduler_type, lr_scheduler_kwargs=lr_scheduler_kwargs or {}, warmup_steps=warmup_steps,
      adam_beta1=adam_beta1, adam_beta2=adam_beta2, adam_epsilon=adam_epsilon,
      train_sampling_strategy="group_by_length" if best else "sequential", remove_unused_columns=not best,
      pad_to_multiple_of=pad_to_multiple_of,
      # TRL's own defaults are bf16 and gradient checkpointing; this is the fp32 CPU run the benchmarks compare.
      bf16=False, fp16=False, gradient_checkpointing=False, disable_dropout=True, use_cpu=True,
      dataloader_num_workers=0, logging_steps=10**9, save_strategy="no", report_to="none", disable_tqdm=True,
      seed=seed, data_seed=seed, **extra)


def dataset_of(rows: list[dict]):
  """A `datasets.Dataset` of pair rows (ids, or text TRL tokenizes), with the `length` column group_by_length reads."""
  from datasets import Dataset
  if rows and "chosen_ids" in rows[0]:
    cols = {"chosen_ids": [r["chosen_ids"] for r in rows], "rejected_ids": [r["rejected_ids"] for r in rows],
            "length": [max(len(r["chosen_ids"]), len(r["rejected_ids"])) for r in rows]}
  else:
    cols = {k: [r[k] for r in rows] for k in ("prompt", "chosen", "rejected")}
  return Dataset.from_dict(cols)


def make_trainer(hf_dir, rows: list[dict], args, *, callbacks=(), trainer_cls=None, collate_hook=None):
  """RewardTrainer on `hf_dir` (loaded by TRL from the path, fp32, as a user would) and `rows` in order.

  `collate_hook(batch)` sees every collated batch (token accounting)."""
  from trl import RewardTrainer
  from trl.trainer.reward_trainer import DataCollatorForPreference
  from transformers import AutoTokenizer

  if args.train_sampling_strategy == "group_by_length" and rows and "chosen_ids" not in rows[0]:
    raise ValueError("mode best groups rows by their token counts: give it token-id rows (encode_rows)")
  tok = AutoTokenizer.from_pretrained(hf_dir)
  collator = DataCollatorForPreference(pad_token_id=tok.pad_token_id, pad_to_multiple_of=args.pad_to_multiple_of)
  if collate_hook is not None:
    inner = collator

    def collator(examples):
      batch = inner(examples)
      collate_hook(batch)
      return batch
  trainer_cls = trainer_cls or RewardTrainer
  trainer = trainer_cls(model=str(hf_dir), args=args, train_dataset=dataset_of(rows), processing_class=tok,
                        data_collator=collator, callbacks=list(callbacks))
  dropped = len(rows) - len(trainer.train_dataset)
  if dropped:
    # RewardTrainer filters (never truncates) rows over max_length; a benchmark must not lose any silently.
    raise ValueError(f"RewardTrainer dropped {dropped} of {len(rows)} rows longer than max_length="
                     f"{args.max_length}; cut them first (encode_rows does)")
  return trainer


# ---------------------------------------------------------------- the worker


def _matmul_gflops():
  # The same torch.matmul fp32 2048^2 rate the train-step benchmark's torch side records.
  sys.path.insert(0, str(HERE))
  from train_step_torch import matmul_gflops
  return matmul_gflops()


def worker(a) -> None:
  # The protocol owns the real stdout; whatever transformers or TRL print goes to stderr.
  proto = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)
  sys.stdout = sys.stderr

  def emit(obj):
    proto.write(json.dumps(obj) + "\n")
    proto.flush()

  import torch
  import transformers
  import trl
  from transformers import TrainerCallback

  rows = read_rows(a.rows)
  # A K-way ranking counts as one comparison once all its pairs are done: rankings per pair, on average.
  n_comp = len({r.get("comparison", i) for i, r in enumerate(rows)})
  per_row = n_comp / len(rows)
  pending = []  # collated batches not yet stepped (the trainer fetches a step's batch before the step)

  def on_batch(batch):
    mask = batch["attention_mask"]
    pending.append((int(mask.shape[0]) // 2, int(mask.sum()), int(mask.numel())))

  class Clock(TrainerCallback):
    def __init__(self):
      self.t, self.stats, self.target, self.n = None, [], a.warmup, 0

    def on_train_begin(self, args, state, control, **kw):
      self.t = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
      now = time.perf_counter()
      # With gradient accumulation a step is several collated micro-batches.
      micro = [pending.pop(0) for _ in range(a.grad_accum)]
      rows_b, real, processed = (sum(m[i] for m in micro) for i in range(3))
      self.stats.append((now - self.t, rows_b, real, processed))
      self.n += 1
      if self.n >= self.target:
        if self.target == a.warmup:
          emit({"ready": True, "warmup_s": [s[0] for s in self.stats]})
        else:
          got = self.stats[-self.requested:]
          emit({"times": [s[0] for s in got], "rows": [s[1] for s in got],
                "comparisons": [s[1] * per_row for s in got], "real_tokens": [s[2] for s in got],
                "processed_tokens": [s[3] for s in got], "loadavg": list(os.getloadavg()),
                "peak_gflops": self.peak})
        line = sys.stdin.readline().strip()
        if not line or line == "quit":
          control.should_training_stop = True
          return
        self.requested = int(line.split()[1])
        self.peak = _matmul_gflops()
        self.target = self.n + self.requested
      self.t = time.perf_counter()

  emit({"versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                     "threads": torch.get_num_threads(), "ld_preload": os.environ.get("LD_PRELOAD", "")},
        "rows": len(rows), "comparisons": n_comp})
  if a.batch_size % a.grad_accum:
    raise ValueError(f"--batch-size {a.batch_size} is not a multiple of --grad-accum {a.grad_accum}")
  args = reward_config(a.out, batch_size=a.batch_size // a.grad_accum, max_length=a.max_length, mode=a.mode,
                       pad_to_multiple_of=a.pad_to_multiple_of, weight_decay=0.01,
                       gradient_accumulation_steps=a.grad_accum)
  trainer = make_trainer(a.hf_dir, rows, args, callbacks=[Clock()], collate_hook=on_batch)
  trainer.train()


# ---------------------------------------------------------------- the client


@dataclasses.dataclass
class TRLWorker:
  """One worker process: `start()` returns after its warm-up steps, `run(n)` times n more steps."""
  hf_dir: str
  rows: str
  mode: str = "default"
  batch_size: int = 8
  max_length: int = 1024
  warmup: int = 2
  grad_accum: int = 1                 # micro-batches of batch_size / grad_accum rows per step (less memory)
  allocator: str = "glibc"            # or "jemalloc"
  pad_to_multiple_of: int | None = None
  name: str = ""
  proc: subprocess.Popen | None = None
  info: dict = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    self.name = self.name or f"trl_{self.mode}[{self.allocator}]"

  def env(self) -> dict:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if self.allocator == "jemalloc":
      from hhh import cpu_malloc
      lib = cpu_malloc.find_jemalloc()
      if lib is None:
        raise RuntimeError("allocator=jemalloc: no libjemalloc.so.2 found (apt install libjemalloc2)")
      env.update(LD_PRELOAD=lib, MALLOC_CONF=env.get("MALLOC_CONF", cpu_malloc.MALLOC_CONF))
    elif self.allocator != "glibc":
      raise ValueError(f"allocator={self.allocator!r}: expected glibc or jemalloc")
    return env

  def start(self):
    cmd = [sys.executable, str(HERE / "trl_side.py"), "worker", "--hf-dir", str(self.hf_dir), "--rows",
           str(self.rows), "--mode", self.mode, "--batch-size", str(self.batch_size), "--max-length",
           str(self.max_length), "--warmup", str(self.warmup), "--grad-accum", str(self.grad_accum)]
    if self.pad_to_multiple_of:
      cmd += ["--pad-to-multiple-of", str(self.pad_to_multiple_of)]
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                                 env=self.env())
    while True:
      msg = self._read()
      self.info.update(msg)
      if msg.get("ready"):
        return self

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"TRL worker {self.name} exited (code {self.proc.wait()}); see its stderr")
    return json.loads(line)

  def run(self, n: int) -> dict:
    self.proc.stdin.write(f"run {n}\n")
    self.proc.stdin.flush()
    return self._read()

  def stop(self):
    sys.path.insert(0, str(HERE))
    from train_step import Worker  # the same shutdown as the train-step benchmark's workers
    Worker.stop(self)


def summarize(rounds: list[dict]) -> dict:
  """Medians over rounds of each round's rates (a round's rate: its totals over its wall time)."""
  per = []
  for r in rounds:
    t = sum(r["times"])
    real, processed = sum(r["real_tokens"]), sum(r["processed_tokens"])
    per.append({"comparisons_per_s": sum(r["comparisons"]) / t, "pairs_per_s": sum(r["rows"]) / t,
                "real_tokens_per_s": real / t, "processed_over_real": processed / real,
                "s_per_step": t / len(r["times"])})
  return {k: statistics.median(p[k] for p in per) for k in per[0]} | {"rounds": len(per)}


def drive(hf_dir, rows, *, modes=MODES, allocators=("glibc",), batch_size=8, max_length=1024, rounds=3,
          steps=3, warmup=2, pad_to_multiple_of=None, log=print) -> dict:
  """Every (mode, allocator) worker started, then `rounds` interleaved rounds of `steps` steps each."""
  workers = [TRLWorker(str(hf_dir), str(rows), mode=m, batch_size=batch_size, max_length=max_length,
                       warmup=warmup, allocator=al, pad_to_multiple_of=pad_to_multiple_of)
             for m in modes for al in allocators]
  got = {w.name: [] for w in workers}
  try:
    for w in workers:
      log(f"trl_side: starting {w.name} ({warmup} warm-up steps)")
      w.start()
    for i in range(rounds):
      for w in workers:
        got[w.name].append(w.run(steps))
        log(f"trl_side: round {i + 1}/{rounds} {w.name}: {statistics.median(got[w.name][-1]['times']):.3f} s/step")
  finally:
    for w in workers:
      w.stop()
  return {"sides": {name: summarize(rs) for name, rs in got.items()}, "rounds": got,
          "versions": workers[0].info.get("versions", {}), "batch_size": batch_size, "max_length": max_length,
          "steps_per_round": steps, "warmup": warmup}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = ap.add_subparsers(dest="cmd", required=True)
  for name in ("worker", "drive"):
    p = sub.add_parser(name)
    p.add_argument("--hf-dir", required=True)
    p.add_argument("--rows", required=True, help="JSONL of pair rows, in training order")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--pad-to-multiple-of", type=int, default=None)
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (batch-size / N rows each)")
  r = sub.add_parser("rows", help="write pair rows (hhh's token ids) from HH-RLHF or a mined dataset dir")
  r.add_argument("source", help="HH-RLHF file or folder, or a dataset dir (`hhh data mine stackexchange ...`)")
  r.add_argument("--out", required=True)
  r.add_argument("--tokenizer", default="smollm2-135m-instruct", help="a `load_lm` spec whose tokenizer to use")
  r.add_argument("--max-length", type=int, default=1024)
  r.add_argument("--max-k", type=int, default=2)
  r.add_argument("--split", default="all")
  r.add_argument("--limit", type=int, default=0, help="first N comparisons of the shuffled order (0: all)")
  r.add_argument("--seed", type=int, default=0, help="the fixed shuffled order")
  w = sub.choices["worker"]
  w.add_argument("--mode", choices=MODES, default="default")
  w.add_argument("--out", default="/tmp/hhh-trl-side", help="the trainer's output_dir (nothing is saved)")
  d = sub.choices["drive"]
  d.add_argument("--modes", default=",".join(MODES))
  d.add_argument("--allocators", default="glibc,jemalloc")
  d.add_argument("--rounds", type=int, default=3)
  d.add_argument("--steps", type=int, default=3)
  d.add_argument("--json", default="", help="write the result here")
  a = ap.parse_args()
  if a.cmd == "worker":
    return worker(a)
  if a.cmd == "rows":
    import numpy as np
    from hhh.pretrained import load_lm
    cs = load_comparisons(a.source, a.split)
    cs = [cs[i] for i in np.random.default_rng(a.seed).permutation(len(cs))][:a.limit or None]
    from hhh.config import DataConfig
    rows = encode_rows(cs, load_lm(a.tokenizer).tokenizer, a.max_length, a.max_k, DataConfig.context_cut)
    write_rows(rows, a.out)
    print(json.dumps({"comparisons": len(cs), "pairs": len(rows), "out": a.out}))
    return
  res = drive(a.hf_dir, a.rows, modes=a.modes.split(","), allocators=a.allocators.split(","),
              batch_size=a.batch_size, max_length=a.max_length, rounds=a.rounds, steps=a.steps, warmup=a.warmup,
              pad_to_multiple_of=a.pad_to_multiple_of, log=lambda s: print(s, file=sys.stderr, flush=True))
  text = json.dumps(res, indent=2)
  if a.json:
    pathlib.Path(a.json).write_text(text + "\n")
  print(json.dumps(res["sides"], indent=2))


if __name__ == "__main__":
  main()
