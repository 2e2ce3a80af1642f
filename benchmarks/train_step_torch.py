"""The PyTorch side of benchmarks/train_step.py: HF transformers + TRL's RewardTrainer, or a plain torch loop.

Runs in the separate environment made by benchmarks/setup_torch_env.sh (torch, transformers and trl are never
hhh dependencies). It speaks the worker protocol of train_step.py over stdin/stdout: after warm-up it prints a
`{"ready": ...}` line, then answers each `run N` line with the seconds of N more train steps and the machine's
torch.matmul fp32 2048^2 rate measured just before them; `quit` ends it.

Both modes build the same Llama-shaped `LlamaForSequenceClassification` (num_labels 1, reward read at the last
non-pad token) and train it on the same token batches as the hhh side: 8 comparisons x 2 sequences x L tokens,
fp32, AdamW, global-norm clipping at 1.0.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import torch


def emit(obj):
  sys.stdout.write(json.dumps(obj) + "\n")
  sys.stdout.flush()


def matmul_gflops(n=2048, reps=5):
  a, b = torch.rand(n, n), torch.rand(n, n)
  a @ b
  ts = []
  for _ in range(reps):
    t0 = time.perf_counter()
    a @ b
    ts.append(time.perf_counter() - t0)
  return 2 * n**3 / float(np.median(ts)) / 1e9


def build_model(shape):
  from transformers import LlamaConfig, LlamaForSequenceClassification
  cfg = LlamaConfig(
      vocab_size=shape["vocab_size"], hidden_size=shape["d_model"], num_hidden_layers=shape["n_layers"],
      num_attention_heads=shape["n_heads"], num_key_value_heads=shape["n_kv_heads"],
      intermediate_size=shape["d_ff"], max_position_embeddings=max(shape["max_len"], 2048),
      rope_theta=shape["rope_theta"], tie_word_embeddings=True, num_labels=1, pad_token_id=0,
      attention_dropout=0.0, rms_norm_eps=1e-5)
  torch.manual_seed(0)
  return LlamaForSequenceClassification(cfg).float()


def batches(shape, batch_size, length, seed=0):
  """The same token rows as the hhh side: every sequence full length (no padding), chosen first."""
  rng = np.random.default_rng(seed)
  while True:
    tokens_BxKxL = rng.integers(3, shape["vocab_size"], (batch_size, 2, length))
    yield tokens_BxKxL


class Protocol:
  """Counts steps; after warm-up and after each requested round, reports and waits for the next command."""

  def __init__(self, warmup):
    self.warmup, self.times, self.target, self.t0 = warmup, [], warmup, None
    self.faults, self.sys_s = [], []

  def step_begin(self):
    self.r0 = resource.getrusage(resource.RUSAGE_SELF)
    self.t0 = time.perf_counter()

  def step_end(self) -> bool:
    """True when training should stop."""
    self.times.append(time.perf_counter() - self.t0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    self.faults.append(r1.ru_minflt - self.r0.ru_minflt)
    self.sys_s.append(r1.ru_stime - self.r0.ru_stime)
    if len(self.times) < self.target:
      return False
    if self.target == self.warmup:
      emit({"ready": True, "warmup_s": self.times})
    else:
      n = self.requested
      emit({"times": self.times[-n:], "minflt": self.faults[-n:], "sys_s": self.sys_s[-n:],
            "peak_gflops": self.peak})
    line = sys.stdin.readline().strip()
    if not line or line == "quit":
      return True
    self.requested = int(line.split()[1])
    self.peak = matmul_gflops()
    self.target = len(self.times) + self.requested
    return False


def run_trl(shape, batch_size, length, proto):
  from datasets import Dataset
  from tokenizers import Tokenizer, models
  from transformers import PreTrainedTokenizerFast, TrainerCallback
  from trl import RewardConfig, RewardTrainer

  vocab = {f"t{i}": i for i in range(shape["vocab_size"])}
  tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t1")),
                                pad_token="t0", eos_token="t2", unk_token="t1")
  gen = batches(shape, batch_size, length)
  rows = []
  for _ in range(4):
    for pair in next(gen):
      rows.append({"chosen_ids": pair[0].tolist(), "rejected_ids": pair[1].tolist()})
  dataset = Dataset.from_list(rows)

  class Timing(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
      proto.step_begin()

    def on_step_end(self, args, state, control, **kw):
      if proto.step_end():
        control.should_training_stop = True

  args = RewardConfig(
      output_dir="/tmp/hhh-bench-trl", per_device_train_batch_size=batch_size, max_steps=100000,
      learning_rate=1e-4, weight_decay=0.01, max_grad_norm=1.0, logging_steps=10**9, save_strategy="no",
      report_to="none", max_length=length, disable_dropout=True, dataloader_num_workers=0, use_cpu=True,
      bf16=False, fp16=False, seed=0)
  trainer = RewardTrainer(model=build_model(shape), args=args, train_dataset=dataset, processing_class=tok,
                          callbacks=[Timing()])
  trainer.train()


def run_plain(shape, batch_size, length, proto):
  model = build_model(shape)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
  gen = batches(shape, batch_size, length)
  while True:
    tokens_BxKxL = torch.as_tensor(next(gen))
    proto.step_begin()
    # Chosen rows first, then rejected, in one forward pass (as the reward trainer's collator lays them out).
    ids = torch.cat([tokens_BxKxL[:, 0], tokens_BxKxL[:, 1]], 0)
    r = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits.squeeze(-1)
    r_chosen, r_rejected = r.chunk(2)
    loss = -torch.nn.functional.logsigmoid(r_chosen - r_rejected).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    loss.item()  # the step's result reaches the host, as a logged loss would
    if proto.step_end():
      return


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--mode", choices=["trl", "torch"], required=True)
  ap.add_argument("--shape", required=True, help="JSON model shape")
  ap.add_argument("--batch-size", type=int, default=8)
  ap.add_argument("--length", type=int, default=256)
  ap.add_argument("--warmup", type=int, default=2)
  args = ap.parse_args()
  proto = Protocol(args.warmup)
  torch.set_grad_enabled(True)
  emit({"versions": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                     **_versions()}})
  (run_trl if args.mode == "trl" else run_plain)(json.loads(args.shape), args.batch_size, args.length, proto)


def _versions():
  import transformers
  out = {"transformers": transformers.__version__}
  try:
    import trl
    out["trl"] = trl.__version__
  except ImportError:
    pass
  return out


if __name__ == "__main__":
  main()
