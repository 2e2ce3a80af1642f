"""The Ray backend: each trial a Ray task asking for its devices (num_gpus, or the TPU resource) and CPUs.

`address=None` starts a local Ray instance; `--address HOST:PORT` (or `auto`) joins an existing cluster, whose
nodes must see the sweep directory at the same path (a shared filesystem) and have hhh installed. The task body
is the same as the local backend's (`trial.run_blocking`): the trial's process is a child of the Ray worker with
a parent-death signal, the trial's lock is taken on the worker's node, and result.json is written there
atomically, so a driver killed mid-sweep and started again finishes with nothing lost or run twice. Ray's own
task retries are off: failed attempts are retried here, each with its own log.

A local instance binds every port to loopback (127.0.0.1) unless `ray_host` (`--ray-host`) names another address
of this machine, for other nodes to join it. An `--address` is first probed with a plain TCP connection of at
most ADDRESS_TIMEOUT_S seconds, so an address where nothing answers is one line at once, not a wait in Ray's
reconnect loop.

For long sweeps start the cluster once (`ray start --head`) and pass `--address`: a local instance that a driver
starts dies with the driver's SIGKILL except for Ray's agent processes, which `ray stop` clears (the trials'
processes die either way).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import sys

from tqdm import tqdm

from hhh.sweep import trial as trial_lib
from hhh.sweep.spec import Spec, Trial


def _task(trial: Trial, trial_dir: str, cwd: str) -> dict:
  env = {"JAX_PLATFORMS": "cpu"} if trial.resources.devices == 0 else {}
  return trial_lib.run_blocking(trial, trial_dir, env_extra=env, cwd=cwd)


ADDRESS_TIMEOUT_S = 10.0
LOOPBACK = "127.0.0.1"
# Ray picks the machine's outward address for a local instance's ports unless this is off (it is meant for
# Windows and macOS, where Ray keeps to loopback); read when Ray is imported, in this process and in Ray's own.
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _import_ray():
  try:
    import ray
  except ImportError:
    raise ValueError('the ray backend needs Ray: pip install -e ".[ray]"') from None
  return ray


def probe(address: str, timeout: float = ADDRESS_TIMEOUT_S) -> None:
  """Raises a one-line ValueError unless something accepts a TCP connection at `address` (HOST:PORT, with an
  optional ray:// or similar scheme) within `timeout` seconds. `auto` (Ray's own lookup) is not probed."""
  if address == "auto":
    return
  hostport = address.split("://", 1)[-1].rstrip("/")
  host, sep, port = hostport.rpartition(":")
  host = host.strip("[]")
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise ValueError(f"ray: --address {address!r}: expected HOST:PORT or auto")
  try:
    with socket.create_connection((host, int(port)), timeout=timeout):
      pass
  except socket.timeout:
    raise ValueError(f"ray: no Ray cluster answers at {address}: no reply within {timeout:g} s") from None
  except OSError as e:
    why = e.strerror or type(e).__name__
    raise ValueError(f"ray: no Ray cluster answers at {address}: {why}") from None


@contextlib.contextmanager
def _local_instance_on(host: str):
  """Keeps a local Ray instance started inside the block on `host`'s ports (loopback by default)."""
  if host not in (LOOPBACK, "localhost", "::1"):
    yield {"_node_ip_address": host}
    return
  old = os.environ.get(_LOOPBACK_ENV)
  os.environ[_LOOPBACK_ENV] = "0"
  consts = sys.modules.get("ray._private.ray_constants")   # already imported: the flag was read before
  old_const = getattr(consts, "ENABLE_RAY_CLUSTER", None)
  if consts is not None:
    consts.ENABLE_RAY_CLUSTER = False
  try:
    yield {"_node_ip_address": LOOPBACK}
  finally:
    if old is None:
      os.environ.pop(_LOOPBACK_ENV, None)
    else:
      os.environ[_LOOPBACK_ENV] = old
    if consts is not None:
      consts.ENABLE_RAY_CLUSTER = old_const


def run(spec: Spec, *, address: str | None = None, max_parallel: int | None = None,
        progress: bool = True, ray_host: str = LOOPBACK) -> list[dict]:
  """Runs every unfinished trial on Ray, stage by stage; returns the records of the trials that failed."""
  if address is not None:
    probe(address)
  out = pathlib.Path(spec.out).resolve()
  if all(trial_lib.is_done(out / "trials" / t.id) for t in spec.trials):
    return []
  # The workers' working directory is not ours: every path they get is absolute, and `cwd` is what relative
  # paths in a trial's config (experiment files, data) are read against.
  cwd = os.getcwd()
  with contextlib.ExitStack() as stack:
    local = {} if address is not None else stack.enter_context(_local_instance_on(ray_host))
    ray = _import_ray()
    try:
      ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
               configure_logging=False, **local)
    except (ConnectionError, RuntimeError, ValueError) as e:
      raise ValueError(f"ray: cannot start or join a cluster at {address or 'a new local instance'}: "
                       f"{(str(e).strip().splitlines() or [type(e).__name__])[-1][:300]}") from None
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
  done = {t.id for t in spec.trials if trial_lib.is_done(out / "trials" / t.id)}
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
