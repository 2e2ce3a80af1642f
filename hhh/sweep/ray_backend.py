"""The Ray backend: each trial a Ray task asking for its devices (num_gpus, or the TPU resource) and CPUs.

`address=None` starts a local Ray instance; `--address HOST:PORT` (or `auto`) joins an existing cluster, whose
nodes must see the sweep directory at the same path (a shared filesystem) and have hhh installed. The task body
is the same as the local backend's (`trial.run_blocking`): the trial's process is a child of the Ray worker with
a parent-death signal, the trial's lock is taken on the worker's node, and result.json is written there
atomically, so a driver killed mid-sweep and started again finishes with nothing lost or run twice. Ray's own
task retries are off: failed attempts are retried here, each with its own log.

For long sweeps start the cluster once (`ray start --head`) and pass `--address`: a local instance that a driver
starts dies with the driver's SIGKILL except for Ray's agent processes, which `ray stop` clears (the trials'
processes die either way).
"""

from __future__ import annotations

import os
import pathlib

from tqdm import tqdm

from hhh.sweep import trial as trial_lib
from hhh.sweep.spec import Spec, Trial


def _task(trial: Trial, trial_dir: str, cwd: str) -> dict:
  env = {"JAX_PLATFORMS": "cpu"} if trial.resources.devices == 0 else {}
  return trial_lib.run_blocking(trial, trial_dir, env_extra=env, cwd=cwd)


def _import_ray():
  try:
    import ray
  except ImportError:
    raise ValueError('the ray backend needs Ray: pip install -e ".[ray]"') from None
  return ray


def run(spec: Spec, *, address: str | None = None, max_parallel: int | None = None,
        progress: bool = True) -> list[dict]:
  """Runs every unfinished trial on Ray, stage by stage; returns the records of the trials that failed."""
  ray = _import_ray()
  # The workers' working directory is not ours: every path they get is absolute, and `cwd` is what relative
  # paths in a trial's config (experiment files, data) are read against.
  cwd = os.getcwd()
  out = pathlib.Path(spec.out).resolve()
  try:
    ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
             configure_logging=False)
  except (ConnectionError, RuntimeError) as e:
    raise ValueError(f"ray: cannot start or join a cluster at {address or 'a new local instance'}: "
                     f"{str(e).strip().splitlines()[-1][:300]}") from None
  try:
    return _run(ray, spec, out, cwd, max_parallel, progress)
  finally:
    ray.shutdown()


def _run(ray, spec, out, cwd, max_parallel, progress) -> list[dict]:
  have = ray.cluster_resources()
  accel = "TPU" if have.get("TPU") and not have.get("GPU") else "GPU"
  for t in spec.trials:
    if t.resources.devices > have.get(accel, 0):
      raise ValueError(f"{t.title} needs {t.resources.devices} devices; the Ray cluster has "
                       f"{int(have.get(accel, 0))} {accel}")
  remote = ray.remote(_task)
  tdir = lambda t: str(out / "trials" / t.id)
  done = {t.id for t in spec.trials if (out / "trials" / t.id / "result.json").exists()}
  failed: dict[str, dict] = {}
  bar = tqdm(total=len(spec.trials), initial=len(done), desc=f"sweep {spec.path.stem} (ray)", unit="trial",
             dynamic_ncols=True, disable=None if progress else True)
  inflight: dict = {}
  try:
    for stage in spec.stages:
      queue = [t for t in spec.trials if t.stage == stage and t.id not in done]
      tries: dict[str, int] = {}
      while queue or inflight:
        while queue and (not max_parallel or len(inflight) < max_parallel):
          t = queue.pop(0)
          bad = [n for n in t.needs if n not in done]
          if bad:
            failed[t.id] = {"id": t.id, "error": f"needs trial {bad[0]}, which did not finish"}
            tqdm.write(f"hhh: sweep: {t.title} skipped: it needs trial {bad[0]}, which did not finish")
            continue
          trial_lib.prepare(t, tdir(t))
          res = {"num_cpus": t.resources.cpus, "max_retries": 0, "name": f"hhh-trial-{t.id}"}
          if t.resources.devices:
            res.update({"num_gpus": t.resources.devices} if accel == "GPU" else
                       {"resources": {"TPU": t.resources.devices}})
          inflight[remote.options(**res).remote(t, tdir(t), cwd)] = t
        ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
        for ref in ready:
          t = inflight.pop(ref)
          try:
            rec = ray.get(ref)
          except Exception as e:  # the worker died, the node left: an attempt that failed
            rec = {"id": t.id, "error": f"ray: {type(e).__name__}: {str(e).splitlines()[0][:200]}"}
          if "error" not in rec:
            done.add(t.id)
            failed.pop(t.id, None)
            bar.update(1)
            continue
          tries[t.id] = tries.get(t.id, 0) + 1
          if tries[t.id] <= t.retries:
            tqdm.write(f"hhh: sweep: {t.title} failed ({rec['error']}); retry {tries[t.id]} of {t.retries}")
            queue.append(t)
          else:
            failed[t.id] = rec
            tqdm.write(f"hhh: sweep: {t.title} failed ({rec['error']}); logs in {tdir(t)}")
  finally:
    for ref in inflight:
      try:
        ray.cancel(ref, force=True)
      except Exception:  # already finished or its worker is gone
        pass
    bar.close()
  return list(failed.values())
