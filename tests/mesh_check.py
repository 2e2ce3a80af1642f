"""Runs two train steps of one tiny PM on several meshes; prints JSON with each mesh's losses and parameters.

Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 (see test_distributed.py).
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from hhh.config import DataConfig, TrainConfig
from hhh.data import pipeline, toy
from hhh.data.tokenizer import ByteTokenizer
from hhh.model import sharding as shd
from hhh.model.config import ModelConfig
from hhh.model.params import abstract_params, graphdef_and_params
from hhh.train.step import Steps


def main(meshes):
  tok = ByteTokenizer()
  cfg = TrainConfig(objective=sys.argv[1], lm_coef=0.1 if sys.argv[1] == "ranked" else 0.0,
                    model=ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_len=64),
                    data=DataConfig(max_len=64, buckets=(64,), max_k=3), batch_size=8, steps=2)
  ex, _ = pipeline.encode_all(toy.generate_comparisons(32, k=3, seed=1), tok, 64, 3)
  src = pipeline.BatchSource(ex, batch_size=8, max_k=3, buckets=(64,), pad_id=tok.pad_id, seed=0)
  batches = [src.dataset(shuffle=True, epochs=1)[i] for i in range(2)]
  out = {}
  for shape in meshes:
    devices = jax.devices()[: int(np.prod(shape))]
    mesh = shd.make_mesh(shd.MeshConfig(*shape), devices)
    graphdef, params_abs = abstract_params(cfg.model)
    steps = Steps(cfg, mesh, graphdef, params_abs, cfg.steps)
    params = jax.jit(lambda k: graphdef_and_params(cfg.model, k)[1], out_shardings=steps.param_sh)(jax.random.key(0))
    state = {"params": params, "opt_state": steps.init_opt(params),
             "step": jax.device_put(jnp.int32(0), steps.state_sh["step"]),
             "rng": jax.device_put(jax.random.key_data(jax.random.key(1)), steps.state_sh["rng"])}
    losses = []
    for b in batches:
      state, m = steps.train(state, steps.put_batch(b))
      losses.append(float(m["loss"]))
    wq = state["params"]["layers"][0]["attn"]["wq"]
    out[str(shape)] = {"losses": losses, "params": [float(x) for x in np.asarray(
        jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(state["params"])]))[::97]],
        "wq_spec": str(wq.sharding.spec),
        "embed_spec": str(state["params"]["embed"].sharding.spec), "devices": len(devices)}
  print(json.dumps(out))


if __name__ == "__main__":
  main([(1, 1, 1), (8, 1, 1), (2, 4, 1), (2, 2, 2)])
