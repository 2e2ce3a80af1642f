"""The training loop, top to bottom: data -> jitted step -> metrics -> eval -> checkpoint.

Re-running with the same workdir resumes from the latest checkpoint (state and
data iterator together), so a killed run continues bit-identically.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from hhh import config as config_lib
from hhh import objectives as obj
from hhh.data import packing, pipeline, sources, stream
from hhh.data import tokenizer as tokenizer_lib
from hhh.model import family
from hhh.model import sharding as shd
from hhh.model.config import ModelConfig
from hhh.model.transformer import INIT_STD
from hhh.train import checkpoint as ckpt_lib
from hhh.train import workdir as workdir_lib
from hhh.train.logger import MetricsWriter, measure_matmul_peak
from hhh.model.params import abstract_params, graphdef_and_params
from hhh.train.step import Steps


class NonFiniteLoss(RuntimeError):
  pass


def init_distributed(dcfg):
  """Joins a multi-process run. "auto" lets JAX read the cluster (SLURM, TPU pods) from the environment."""
  if not dcfg.coordinator or jax.distributed.is_initialized():
    return
  if jax.config.jax_platforms in (None, "", "cpu") or jax.config.jax_platforms.startswith("cpu"):
    # CPU collectives across processes need gloo; accelerators bring their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if dcfg.coordinator == "auto":
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(dcfg.coordinator, dcfg.num_processes, dcfg.process_id)


def _fresh_reward_head(cfg: config_lib.TrainConfig, params, key, lead: bool):
  """A language model's checkpoint has no preference head (it is all zeros): a PM trained from it starts with a
  fresh one, drawn as the model draws it from scratch and as transformers draws a new sequence-classification
  `score` (normal, std 0.02). With a zero head the trunk gets no gradient until the head has grown, and a run
  at a fine-tuning learning rate barely moves (HH-RLHF from SmolLM2 stayed at loss 0.69 for 325 steps)."""
  kernel = params["reward_head"]["kernel"]
  # Reduced on the devices: the answer is a replicated scalar that every process can read.
  if cfg.objective not in obj.PM_OBJECTIVES or bool(jax.jit(lambda k: jnp.any(k != 0))(kernel)):
    return params
  fresh = jax.jit(lambda k: INIT_STD * jax.random.normal(k, kernel.shape, kernel.dtype),
                  out_shardings=kernel.sharding)(jax.random.fold_in(key, 1))
  if lead:
    print(f"hhh: {cfg.init_from} has no reward head; starting from a fresh one (normal, std {INIT_STD})",
          flush=True)
  return {**params, "reward_head": {**params["reward_head"], "kernel": fresh}}


def _named_keys(seed: int):
  """One root key split into named streams, so adding a stream never shifts another."""
  root = jax.random.key(seed)
  return {name: jax.random.fold_in(root, i) for i, name in enumerate(("model", "data", "train"))}


def _load_raw(cfg, split: str):
  """Texts (objective lm) or comparisons of one split, read once per run."""
  d = cfg.data
  spec = d.train if split == "train" else d.validation
  if cfg.objective == "lm":
    return sources.load_texts(spec, d, split)
  return sources.load_comparisons(spec, d, split, cfg.seed)


def _encode(cfg, tok, raw):
  """Tokenize once, in memory; LM runs cut text into max_len windows, PM runs encode comparisons."""
  d = cfg.data
  if cfg.objective == "lm":
    return pipeline.encode_text(raw, tok, d.max_len), None
  return pipeline.encode_all(raw, tok, d.max_len, d.max_k, d.context_cut)


# From this many in-memory training comparisons (held by every process), a run that could stream
# says so. Streaming is not the default: on small stores its first run builds a length index beside the store.
STREAM_HINT = 1_000_000


def stream_hint(cfg, n_train: int) -> str | None:
  """The note for a run that reads a large store into memory although it could stream it."""
  if cfg.data.stream or cfg.objective == "lm" or n_train < STREAM_HINT or not stream.streamable(cfg.data.train):
    return None
  return (f"hhh: note: {n_train:,} training comparisons are read into memory on every process; "
          "--set data.stream=true reads them lazily from the store, each process only its own rows")


def _streamed(cfg, split: str) -> bool:
  """Whether a split is read lazily from its store (data.stream, PM objectives, dataset directories only)."""
  spec = cfg.data.train if split == "train" else cfg.data.validation
  return cfg.data.stream and cfg.objective != "lm" and stream.streamable(spec)


def _stream_examples(cfg, tok, split: str, kw) -> stream.Examples:
  d = cfg.data
  return stream.examples(d.train if split == "train" else d.validation, d, split, cfg.seed, tok,
                         workers=d.stream_workers, process_index=kw["process_index"],
                         process_count=kw["process_count"])


def _tokenizer(cfg, resume_meta, init_meta, raw_train):
  for meta in (resume_meta, init_meta):
    if meta is not None:
      return ckpt_lib.tokenizer_from_meta(meta)
  corpus = None
  if cfg.data.tokenizer.startswith("bpe:"):
    # A streamed run reads its comparisons once here to train the BPE: give a tokenizer .json at scale.
    raw_train = raw_train if raw_train is not None else _load_raw(cfg, "train")
    corpus = raw_train if cfg.objective == "lm" else sources.texts_of(raw_train)
  return tokenizer_lib.from_spec(cfg.data.tokenizer, corpus)


def _model_config(cfg, tok, init_meta) -> ModelConfig:
  if init_meta is not None:
    # The architecture is the checkpoint's; only run-time switches come from this config.
    base = config_lib.from_dict(ModelConfig, init_meta["config"]["model"])
    return dataclasses.replace(base, dropout=cfg.model.dropout, dtype=cfg.model.dtype, remat=cfg.model.remat)
  return dataclasses.replace(cfg.model, vocab_size=tok.vocab_size)


def evaluate(steps: Steps, params, source: pipeline.BatchSource, objective: str) -> dict[str, float]:
  outs, scores, valid = [], [], []
  for batch in source.eval_batches():
    # Each process feeds its own rows; the outputs come back replicated (all rows).
    outs.append(ckpt_lib.host_scalar_tree(steps.eval(params, steps.put_batch(source.local_rows(batch)))))
    scores.append(batch["scores"])
    valid.append(batch["lengths"] > 0)
  cat = lambda xs: jnp.asarray(np.concatenate([np.asarray(x) for x in xs]))
  s, v = cat(scores), cat(valid)
  if objective in obj.PM_OBJECTIVES:
    m = obj.preference_metrics(cat([o["reward"] for o in outs]), s, v)
    return {k: float(x) for k, x in m.items()}
  nll = float(np.sum([np.asarray(o["nll_sum"]) for o in outs]))
  n_tok = float(np.sum([np.asarray(o["n_tokens"]) for o in outs]))
  res = {"loss": nll / max(n_tok, 1.0)}
  if objective == "imitation":
    m = obj.preference_metrics(cat([o["loglik_sum"] for o in outs]), s, v)
    res.update({k: float(x) for k, x in m.items()})
    res["accuracy_mean_loglik"] = float(
        obj.preference_metrics(cat([o["loglik_mean"] for o in outs]), s, v)["accuracy"])
  return res


def _lm_head(cfg) -> bool:
  return cfg.objective in ("lm", "imitation") or bool(cfg.lm_coef)


def _packed(cfg) -> bool:
  return cfg.data.pack and cfg.objective in obj.PM_OBJECTIVES


def _step_tokens(local, objective: str) -> float:
  """Real (unpadded) tokens the step computes on: every sequence for PM objectives, only the preferred one for
  imitation (its step runs one forward over B sequences, not B * K); on packed rows, every non-padding slot
  (each context once)."""
  if "segments" in local:
    return float((np.asarray(local["segments"]) >= 0).sum())
  lengths_BxK = np.asarray(local["lengths"])
  if objective != "imitation":
    return float(lengths_BxK.sum())
  scores_BxK = np.where(lengths_BxK > 0, np.asarray(local["scores"]), -np.inf)
  return float(np.take_along_axis(lengths_BxK, scores_BxK.argmax(-1)[:, None], 1).sum())


def _peak(cfg, lead: bool) -> float:
  """Per-device peak FLOP/s for MFU: `peak_tflops` when set, else a matmul measured now in the compute dtype."""
  if cfg.peak_tflops:
    return cfg.peak_tflops * 1e12
  measured = measure_matmul_peak(cfg.model.dtype)
  if lead:
    print(f"hhh: MFU is read against {measured['flops'] / 1e9:,.0f} GFLOP/s per device, measured now "
          f"({measured['what']}); set peak_tflops to fix it", flush=True)
  return measured["flops"]


def train(cfg, workdir) -> dict[str, float]:
  """Runs (or resumes) the training described by `cfg` in `workdir`; returns the final held-out metrics."""
  init_distributed(cfg.distributed)
  # One run per workdir: process 0's lock keeps other runs out for all processes of this one.
  with workdir_lib.locked(workdir, enabled=jax.process_index() == 0):
    return _train(cfg, workdir)


def _train(cfg, workdir) -> dict[str, float]:
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  lead = jax.process_index() == 0
  mesh = shd.make_mesh(cfg.mesh)
  keys = _named_keys(cfg.seed)
  ckpts = ckpt_lib.Checkpoints(workdir, cfg.keep_checkpoints)
  latest, resume_meta = ckpts.newest_intact()  # checked against its manifest; corrupt newer ones set aside
  init_meta = ckpt_lib.load_meta(cfg.init_from) if cfg.init_from and latest is None else None
  streamed = _streamed(cfg, "train")
  if cfg.data.stream and not streamed and lead:
    print("hhh: note: data.stream reads dataset directories only (and not for objective lm); this run's training "
          "data is read into memory", flush=True)
  raw_train = None if streamed else _load_raw(cfg, "train")
  if raw_train is not None and lead and (hint := stream_hint(cfg, len(raw_train))):
    print(hint, flush=True)
  raw_valid = None if _streamed(cfg, "validation") else _load_raw(cfg, "validation")
  tok = _tokenizer(cfg, resume_meta, init_meta, raw_train)
  model_cfg = resume_meta and config_lib.from_dict(ModelConfig, resume_meta["config"]["model"])
  model_cfg = model_cfg or _model_config(cfg, tok, init_meta)
  cfg = dataclasses.replace(cfg, model=model_cfg)
  meta = {"config": config_lib.to_dict(cfg), "tokenizer": tok.to_json(), "objective": cfg.objective}
  if lead:
    (workdir / "config.json").write_text(config_lib.dumps(cfg))

  data_seed = int(jax.random.randint(keys["data"], (), 0, 2**31 - 1))
  kw = dict(batch_size=cfg.batch_size, max_k=1 if cfg.objective == "lm" else cfg.data.max_k,
            buckets=cfg.data.buckets, pad_id=tok.pad_id, process_index=jax.process_index(),
            process_count=jax.process_count())
  # Each batch shard (device along the batch axes) packs its own comparisons into its own rows.
  n_shards = int(np.prod([mesh.shape[a] for a in shd.BATCH_AXES]))
  row_len = packing.row_length(cfg.data.buckets, cfg.data.pack_len, cfg.data.batch_tokens, jax.default_backend(),
                               n_shards)
  if streamed:
    train_ex = _stream_examples(cfg, tok, "train", kw)
    stats = train_ex.stats()
    train_src = stream.StreamBatchSource(train_ex, seed=data_seed, packed=_packed(cfg), row_len=row_len,
                                         n_shards=n_shards, batch_tokens=cfg.data.batch_tokens if _packed(cfg) else 0,
                                         workers=cfg.data.stream_workers, **kw)
  else:
    train_ex, stats = _encode(cfg, tok, raw_train)
    if _packed(cfg):
      train_src = packing.PackedBatchSource(train_ex, row_len=row_len, n_shards=n_shards, seed=data_seed,
                                            batch_tokens=cfg.data.batch_tokens, **kw)
    else:
      train_src = pipeline.BatchSource(train_ex, seed=data_seed, **kw)
  # Held-out scoring stays one sequence per row: a forward pass only, and its numbers are the same either way.
  if raw_valid is None:
    valid_src = stream.StreamBatchSource(_stream_examples(cfg, tok, "validation", kw), seed=0, **kw)
  else:
    valid_src = pipeline.BatchSource(_encode(cfg, tok, raw_valid)[0], seed=0, **kw)
  train_it = train_src.train_iter()

  graphdef, params_abs = abstract_params(model_cfg)
  steps = Steps(cfg, mesh, graphdef, params_abs, cfg.steps, packed=_packed(cfg))
  if latest is not None:
    latest, state = ckpts.restore_intact(latest, steps.abstract_state(params_abs), train_it)
    start = int(ckpt_lib.host_scalar_tree(state["step"]))
  else:
    if cfg.init_from:
      abs_sh = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), params_abs,
                            steps.param_sh)
      params, _ = ckpt_lib.load_params(cfg.init_from, abs_sh)
      params = _fresh_reward_head(cfg, params, keys["model"], lead)
    else:
      params = jax.jit(lambda k: graphdef_and_params(model_cfg, k)[1], out_shardings=steps.param_sh)(keys["model"])
    state = {"params": params, "opt_state": steps.init_opt(params),
             "step": jax.device_put(jnp.int32(0), steps.state_sh["step"]),
             "rng": jax.device_put(jax.random.key_data(keys["train"]), steps.state_sh["rng"])}
    start = 0
  writer = MetricsWriter(workdir, latest, enabled=lead)
  if lead:
    n_par = family.param_counts(model_cfg)
    print(f"hhh: {cfg.objective} | params {n_par['total']:,} ({n_par['non_embedding']:,} non-embedding) | "
          f"{len(train_ex)} train / {len(valid_src.examples)} held-out examples | {jax.device_count()} device(s), mesh "
          f"{dict(mesh.shape)}" + (f" | resuming at step {start}" if latest is not None else ""), flush=True)
    if stats and (stats.contexts_truncated or stats.responses_truncated or stats.responses_dropped):
      print(f"hhh: data: {stats.contexts_truncated} contexts and {stats.responses_truncated} responses "
            f"truncated to {cfg.data.max_len} tokens, {stats.responses_dropped} responses beyond max_k dropped")
    if _packed(cfg):
      ps = train_ex.pack_summary(row_len) if streamed else packing.summary(train_ex, row_len)
      fallback = (f", {ps.fallback} unpacked (responses cut against different contexts: data.context_cut=each)"
                  if ps.fallback else "")
      budget = (f"; steps of {cfg.data.batch_tokens} tokens, at most {cfg.batch_size} comparisons"
                if cfg.data.batch_tokens else "")
      print(f"hhh: packed rows of up to {row_len} tokens: {ps.packed} comparisons with their context once, "
            f"{ps.split} split over rows (context repeated){fallback}{budget}", flush=True)

  peak = _peak(cfg, lead)
  bar = tqdm(total=cfg.steps, initial=start, disable=not (cfg.progress and lead), dynamic_ncols=True,
             desc="train")
  last_good = latest
  # Throughput is steady state: the window opens once this process's first step (its compile) is done, and
  # re-opens after every eval and checkpoint, so neither counts as training time.
  timer = {"t": None, "tokens": 0.0, "flops": 0.0}

  def drain(pending, force_log=False):
    """Reads step N-1's metrics (already computed by now) and logs them; stops on a non-finite loss."""
    step, metrics, tokens, L = pending
    m = {k: float(v) for k, v in ckpt_lib.host_scalar_tree(metrics).items()}
    if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
      where = f"step {last_good} in {ckpts.dir}" if last_good is not None else "none was written"
      raise NonFiniteLoss(f"step {step}: loss={m['loss']} grad_norm={m['grad_norm']}; stopped. "
                          f"Last good checkpoint: {where}")
    if timer["t"] is None:
      timer.update(t=time.perf_counter(), tokens=0.0, flops=0.0)
    else:
      timer["tokens"] += tokens
      timer["flops"] += tokens * family.step_flops_per_token(model_cfg, L, cfg.objective, lm_head=_lm_head(cfg))
    if not (step % cfg.log_every == 0 or force_log or step == cfg.steps):
      return
    post = {"loss": f"{m['loss']:.4f}"}
    if timer["tokens"]:
      dt = max(time.perf_counter() - timer["t"], 1e-9)
      m["tokens_per_s"] = tps = timer["tokens"] / dt
      m["mfu"] = timer["flops"] / dt / (peak * jax.device_count())
      timer.update(t=time.perf_counter(), tokens=0.0, flops=0.0)
      post.update({"tok/s": f"{tps:,.0f}", "mfu": f"{m['mfu']:.1%}"})
    if "accuracy" in m:
      post["acc"] = f"{m['accuracy']:.3f}"
    m["time"] = time.time()  # wall clock: a run's training time and rate, across resumes (validation rows have none)
    writer.write(step, "train", m)
    bar.set_postfix(post, refresh=False)

  pending = None
  final = {}
  try:
    for step in range(start, cfg.steps):
      local = next(train_it)
      tokens = _step_tokens(local, cfg.objective) * jax.process_count()
      state, metrics = steps.train(state, steps.put_batch(local))
      if pending is not None:
        drain(pending)
      pending = (step + 1, metrics, tokens, local["tokens"].shape[-1])
      bar.update(1)
      done = step + 1
      is_ckpt = done % cfg.checkpoint_every == 0 or done == cfg.steps
      if is_ckpt or done % cfg.eval_every == 0:
        drain(pending, force_log=True)  # a checkpoint must never hold a non-finite state
        pending = None
      if done % cfg.eval_every == 0 or done == cfg.steps:
        final = evaluate(steps, state["params"], valid_src, cfg.objective)
        writer.write(done, "validation", final)
      if is_ckpt:
        ckpts.save(done, state, train_it, meta)
        last_good = done
      if is_ckpt or done % cfg.eval_every == 0:
        timer["t"] = None
    if pending is not None:
      drain(pending)
    if not final:
      final = evaluate(steps, state["params"], valid_src, cfg.objective)
  finally:
    bar.close()
    writer.close()
    ckpts.close()
  if lead:
    shown = {k: round(v, 4) for k, v in final.items() if k in ("accuracy", "loss", "ece", "margin")}
    print(f"hhh: held-out {json.dumps(shown)} at step {cfg.steps}", flush=True)
  return final
