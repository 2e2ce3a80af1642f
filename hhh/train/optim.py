"""The optimizer every hhh trainer uses: AdamW under linear warmup and cosine decay, with global-norm clipping
and no weight decay on vectors (norm scales, biases), built from an `OptimConfig`."""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

from hhh.config import OptimConfig


def make_optimizer(ocfg: OptimConfig, total_steps: int, *, lr_in_state: bool = False
                   ) -> tuple[optax.GradientTransformation, Callable]:
  """(optimizer, learning-rate schedule) for a run of `total_steps`: warmup to `lr`, then cosine decay to
  lr * min_lr_ratio at the last step.

  With `lr_in_state` the peak learning rate is held in the optimizer state (`optax.inject_hyperparams`) instead
  of being baked into the program, so one compiled step serves every learning rate of a grid.
  """
  warmup = min(ocfg.warmup_steps, max(total_steps - 1, 0))
  decay_steps = max(total_steps, warmup + 1)
  # No weight decay on norms, biases and vectors: decaying a norm's scale toward 0 only hurts.
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)

  def chain(schedule):
    return optax.chain(
        optax.clip_by_global_norm(ocfg.clip_norm),
        optax.adamw(schedule, b1=ocfg.b1, b2=ocfg.b2, eps=ocfg.eps, weight_decay=ocfg.weight_decay,
                    mask=decay_mask))

  if not lr_in_state:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=ocfg.lr, warmup_steps=warmup, decay_steps=decay_steps,
        end_value=ocfg.lr * ocfg.min_lr_ratio)
    return chain(schedule), schedule
  unit = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, decay_steps, ocfg.min_lr_ratio)
  tx = optax.inject_hyperparams(lambda lr: chain(lambda count: lr * unit(count)))(lr=ocfg.lr)
  return tx, lambda count: ocfg.lr * unit(count)
