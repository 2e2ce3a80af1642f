"""Serve a reward bundle over HTTP, so RL pipelines in other processes can use a trained PM as their reward.

    hhh serve runs/tiny_pm_bundle --port 8000
    # or: from hhh.reward import server; server.serve("runs/tiny_pm_bundle", port=8000)

A small Starlette app on uvicorn (h11): one event loop reads requests and writes answers, and one worker
thread (the only one that touches the model) gathers up to `max_batch` pairs from whatever requests are
waiting (or waits `max_wait_ms` for more), scores them with ONE `RewardModel.score` call and hands each
request its slice. A reward does not depend on what it was batched with, so answers equal
`RewardModel.score` on the same pairs. A waiting request costs a coroutine, not a thread, and a client
that sends its request slowly is cut off after `read_timeout_s` (408), so slow clients cannot hold the server.

Endpoints (JSON in and out):

  GET /health    (HEAD /health: the same status, no body)
    -> {"status": "ok", "objective": "ranked", "max_len": 1024, "normalization": {"mean": .., "std": .., ...},
        "truncated": 0, "stats": {"requests": .., "pairs": .., "score_calls": .., "score_s": ..}}
    `truncated` counts pairs cut to fit max_len (context from the left) since the server started.

  POST /score  (native)
    {"pairs": [{"context": str, "response": str}, ...], "normalize": false}
    -> {"rewards": [...], "raw": [...], "normalized": [...]}
    `raw` are the PM's rewards, `normalized` are (raw - mean) / std with the bundle's export-time reference
    statistics, and `rewards` is one of the two as `normalize` asks (default raw).

      curl -s localhost:8000/score -H 'Content-Type: application/json' \\
        -d '{"pairs": [{"context": "Human: hi\\n\\nAssistant:", "response": " Hello!"}], "normalize": true}'

  POST /get_reward  (OpenRLHF's remote reward-model protocol: `--remote_rm_url http://HOST:PORT/get_reward`)
    {"query": [full texts], "prompts": [their prompts]}        ("prompts" optional; other keys, e.g.
                                                                 "labels", are ignored)
    -> {"rewards": [normalized rewards], "scores": [raw rewards]}
    OpenRLHF sends prompt + response concatenated in `query`. When `prompts` is given and `query[i]` starts
    with `prompts[i]`, the PM scores context = prompts[i], response = the rest of query[i]; otherwise (no
    prompts, or a prompt that is not a prefix) context = "" and response = the whole query[i]. `rewards` are
    normalized, which is what an RL loop should optimise; `scores` are the raw rewards.

Errors are JSON `{"error": "one line"}` with a 4xx status: 400 invalid JSON or a malformed HTTP request,
404 unknown path, 405 wrong method, 408 request head or body not received within `read_timeout_s`, 411 no
Content-Length (or a chunked body), 413 body over `max_body_bytes` (refused from Content-Length before
reading) or more than `max_items` pairs, 422 wrong types, missing fields, mismatched lengths or input the
model rejects. An internal failure (a non-finite reward included: the answer is always valid JSON) is a JSON
500 and the server keeps serving; 503 means it is shutting down or scoring timed out. The server listens on
127.0.0.1 unless told otherwise: it has no authentication, so expose it only on a trusted network.

File descriptors: the server keeps at most `max_connections` connections open (default: the process's
RLIMIT_NOFILE soft limit less the descriptors open at start and a reserve of FD_RESERVE). A new connection past
that closes the oldest idle one (a connection between requests, or that has sent nothing yet), so idle
sockets cannot lock out `/health` or anyone else. Should accept() still run out of descriptors (EMFILE: the
process opened files of its own), the oldest idle connections are closed as well, or, with none idle, accepting
pauses for a second. Both are logged to stderr, once per burst (at most every LOG_EVERY_S seconds, with a
count); queued connections wait in the kernel's backlog meanwhile, none is reset.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import queue
import socket
import sys
import threading
import time
from typing import Any, Callable

import h11
import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

_STOP = object()


class _Job:
  """One request's pairs, waiting for the worker."""
  __slots__ = ("contexts", "responses", "done", "raw", "error", "on_done")

  def __init__(self, contexts: list[str], responses: list[str], on_done: Callable[[_Job], None] | None = None):
    self.contexts, self.responses, self.on_done = contexts, responses, on_done
    self.done = threading.Event()
    self.raw: np.ndarray | None = None
    self.error: BaseException | None = None


class Unavailable(RuntimeError):
  """The batcher is stopped or did not answer in time."""


class Batcher:
  """The one thread that owns the model: scores the pairs of concurrent requests together."""

  def __init__(self, model, max_batch: int = 256, max_wait_ms: float = 5.0):
    self.model, self.max_batch, self.max_wait_s = model, max_batch, max_wait_ms / 1000.0
    self.score_calls = self.requests = self.pairs = 0
    self.score_s = 0.0  # wall time spent inside model.score: the rest of a request's latency is the server's
    self._queue: queue.Queue = queue.Queue()
    # Held while checking `_stopped` and enqueueing, so no job can land behind the stop marker and hang.
    self._lock = threading.Lock()
    self._stopped = False
    self._thread = threading.Thread(target=self._loop, name="hhh-reward-batcher", daemon=True)

  def start(self) -> None:
    self._thread.start()

  def stop(self, timeout: float | None = 10.0) -> None:
    with self._lock:
      if self._stopped:
        return
      self._stopped = True
      self._queue.put(_STOP)
    if self._thread.is_alive() and threading.current_thread() is not self._thread:
      self._thread.join(timeout)

  def submit(self, contexts: list[str], responses: list[str],
             on_done: Callable[[_Job], None] | None = None) -> _Job:
    """Queues these pairs; `on_done(job)` is called from the worker thread once `job.raw` or `job.error` is set."""
    job = _Job(contexts, responses, on_done)
    with self._lock:
      if self._stopped:
        raise Unavailable("the server is shutting down")
      self._queue.put(job)
    return job

  def score(self, contexts: list[str], responses: list[str], timeout: float | None = None) -> np.ndarray:
    """Raw rewards of these pairs, scored together with whatever else is waiting (blocking)."""
    job = self.submit(contexts, responses)
    if not job.done.wait(timeout):
      raise Unavailable(f"scoring did not finish within {timeout:g} s")
    if job.error is not None:
      raise job.error
    return job.raw

  def _loop(self) -> None:
    carry = None  # a job that did not fit in the last batch; it starts the next one
    stopping = False
    while not stopping:
      job = carry if carry is not None else self._queue.get()
      carry = None
      if job is _STOP:
        break
      batch, n = [job], len(job.contexts)
      deadline = time.monotonic() + self.max_wait_s
      while n < self.max_batch:
        wait = deadline - time.monotonic()
        try:
          nxt = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
        except queue.Empty:
          break
        if nxt is _STOP:
          stopping = True  # finish what was gathered first: those requests are already waiting
          break
        if n + len(nxt.contexts) > self.max_batch:
          carry = nxt
          break
        batch.append(nxt)
        n += len(nxt.contexts)
      self._run(batch)
    # Whatever is still queued after the stop marker (none, given the lock) must not wait forever.
    while True:
      try:
        job = self._queue.get_nowait()
      except queue.Empty:
        break
      if job is not _STOP:
        job.error = Unavailable("the server is shutting down")
        self._finish(job)

  def _score(self, contexts: list[str], responses: list[str]) -> np.ndarray:
    self.score_calls += 1
    t0 = time.perf_counter()
    try:
      raw = np.asarray(self.model.score(contexts, responses), np.float32)
    finally:
      self.score_s += time.perf_counter() - t0
    if raw.shape != (len(contexts),):
      raise RuntimeError(f"model.score returned shape {raw.shape} for {len(contexts)} pairs")
    return raw

  def _run(self, batch: list[_Job]) -> None:
    try:
      contexts = [c for j in batch for c in j.contexts]
      responses = [r for j in batch for r in j.responses]
      try:
        raw = self._score(contexts, responses)
      except Exception:
        if len(batch) == 1:
          raise
        # One request's bad input must not fail the others it was batched with: score each on its own.
        for j in batch:
          try:
            j.raw = self._score(j.contexts, j.responses)
          except Exception as e:  # noqa: BLE001 -- handed to that request
            j.error = e
      else:
        start = 0
        for j in batch:
          j.raw = raw[start:start + len(j.contexts)]
          start += len(j.contexts)
      self.requests += len(batch)
      self.pairs += len(contexts)
    except Exception as e:  # noqa: BLE001 -- the worker must outlive any failure
      for j in batch:
        if j.raw is None and j.error is None:
          j.error = e
    finally:
      for j in batch:
        self._finish(j)

  @staticmethod
  def _finish(job: _Job) -> None:
    job.done.set()
    if job.on_done is not None:
      try:
        job.on_done(job)
      except Exception:  # noqa: BLE001 -- e.g. the event loop already closed: nobody is waiting
        log.debug("hhh serve: a finished job had no one to hand its answer to", exc_info=True)


class HTTPError(Exception):

  def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
    super().__init__(message)
    self.status, self.message, self.headers = int(status), message, headers or {}


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split()) or type(e).__name__
  return text[:500]


def _json_bytes(obj: Any) -> bytes:
  # allow_nan=False: `-Infinity` is not JSON, and a client parser that accepts it would optimise garbage.
  return json.dumps(obj, allow_nan=False).encode()


def _string_list(body: dict, key: str, *, required: bool = True) -> list[str] | None:
  value = body.get(key)
  if value is None and not required:
    return None
  if key not in body:
    raise HTTPError(422, f'missing field "{key}"')
  if not isinstance(value, list):
    raise HTTPError(422, f'"{key}" must be a list of strings, not {type(value).__name__}')
  for i, v in enumerate(value):
    if not isinstance(v, str):
      raise HTTPError(422, f'"{key}"[{i}] must be a string, not {type(v).__name__}')
  return value


def _pairs_of_score_body(body: dict, max_items: int) -> tuple[list[str], list[str], bool]:
  pairs = body.get("pairs")
  if "pairs" not in body:
    raise HTTPError(422, 'missing field "pairs" (a list of {"context": str, "response": str})')
  if not isinstance(pairs, list):
    raise HTTPError(422, f'"pairs" must be a list, not {type(pairs).__name__}')
  _check_count(len(pairs), max_items)
  normalize = body.get("normalize", False)
  if not isinstance(normalize, bool):
    raise HTTPError(422, f'"normalize" must be true or false, not {json.dumps(normalize)[:40]}')
  contexts, responses = [], []
  for i, p in enumerate(pairs):
    if not isinstance(p, dict):
      raise HTTPError(422, f'pairs[{i}] must be an object {{"context": str, "response": str}}, '
                      f"not {type(p).__name__}")
    for key, out in (("context", contexts), ("response", responses)):
      if key not in p:
        raise HTTPError(422, f'pairs[{i}] has no "{key}"')
      if not isinstance(p[key], str):
        raise HTTPError(422, f'pairs[{i}]["{key}"] must be a string, not {type(p[key]).__name__}')
      out.append(p[key])
  return contexts, responses, normalize


def _pairs_of_get_reward_body(body: dict, max_items: int) -> tuple[list[str], list[str]]:
  queries = _string_list(body, "query")
  _check_count(len(queries), max_items)
  prompts = _string_list(body, "prompts", required=False)
  if prompts is not None and len(prompts) != len(queries):
    raise HTTPError(422, f'{len(queries)} "query" texts but {len(prompts)} "prompts"')
  contexts, responses = [], []
  for i, q in enumerate(queries):
    # OpenRLHF concatenates prompt + response; a prompt that is not a prefix leaves nothing to split on.
    if prompts is not None and q.startswith(prompts[i]):
      contexts.append(prompts[i])
      responses.append(q[len(prompts[i]):])
    else:
      contexts.append("")
      responses.append(q)
  return contexts, responses


def _check_count(n: int, max_items: int) -> None:
  if n > max_items:
    raise HTTPError(413, f"{n} items is more than this server's limit of {max_items} per request; "
                    "split them over several requests")


def _object(body) -> dict:
  if not isinstance(body, dict):
    raise HTTPError(422, f"the body must be a JSON object, not {type(body).__name__}")
  return body


class _ClientGone(Exception):
  """The client closed its connection mid-request: there is nobody to answer."""


class _App:
  """The endpoints, bound to one server's model, batcher and limits."""

  def __init__(self, server: RewardServer):
    self.server = server
    routes = [Route("/health", self._wrap(self._health), methods=["GET"]),  # Starlette adds HEAD to GET
              Route("/score", self._wrap(self._score), methods=["POST"]),
              Route("/get_reward", self._wrap(self._get_reward), methods=["POST"])]
    self.asgi = Starlette(routes=routes, exception_handlers={HTTPException: self._starlette_error})

  # --- plumbing -------------------------------------------------------------------------------------------------

  def _wrap(self, fn):
    async def endpoint(request: Request) -> Response:
      state = {"body_read": False}
      try:
        return self._reply(200, await fn(request, state))
      except HTTPError as e:
        return self._reply(e.status, {"error": e.message}, e.headers, close=not state["body_read"])
      except _ClientGone:
        return Response(status_code=400, headers={"Connection": "close"})  # never delivered
      except Exception as e:  # noqa: BLE001 -- a bug answers 500 and the server goes on
        log.exception("hhh serve: internal error on %s %s", request.method, request.url.path)
        return self._reply(500, {"error": f"internal error: {_one_line(e)}"}, close=not state["body_read"])
    return endpoint

  async def _starlette_error(self, request: Request, exc: HTTPException) -> Response:
    # Starlette's own 404 and 405 (unknown path, wrong method): JSON like every other answer.
    if exc.status_code == 404:
      message = f"no endpoint {request.url.path!r}; there are GET /health, POST /score and POST /get_reward"
    elif exc.status_code == 405:
      message = f"{request.url.path} takes {(exc.headers or {}).get('Allow', '?')}, not {request.method}"
    else:
      message = exc.detail
    return self._reply(exc.status_code, {"error": message}, dict(exc.headers or {}), close=True)

  def _reply(self, status: int, obj: dict, headers: dict[str, str] | None = None, *,
             close: bool = False) -> Response:
    try:
      body = _json_bytes(obj)
    except ValueError as e:  # a non-finite float slipped through: answer valid JSON anyway
      status, body, close = 500, _json_bytes({"error": f"internal error: {_one_line(e)}"}), True
    headers = dict(headers or {})
    # An error before the body was read leaves the body unread: end the connection rather than parse it as the
    # next request (uvicorn closes after the answer when it carries Connection: close).
    if close and status >= 400:
      headers["Connection"] = "close"
    return Response(body, status_code=status, headers=headers, media_type="application/json")

  async def _read_json(self, request: Request, state: dict):
    headers, limit = request.headers, self.server.max_body_bytes
    if headers.get("transfer-encoding"):
      raise HTTPError(411, "chunked bodies are not supported; send a Content-Length")
    values = headers.getlist("content-length")
    if not values:
      raise HTTPError(411, "a POST needs a Content-Length header")
    if len(set(v.strip() for v in values)) > 1 or not values[0].strip().isdigit():
      raise HTTPError(400, f"bad Content-Length {', '.join(values)[:60]!r}")
    n = int(values[0])
    if n > limit:
      raise HTTPError(413, f"body of {n} bytes is over this server's limit of {limit}")
    chunks, got = [], 0

    async def collect():
      nonlocal got
      async for chunk in request.stream():
        got += len(chunk)
        if got > limit:
          raise HTTPError(413, f"body over this server's limit of {limit} bytes")
        chunks.append(chunk)

    try:
      # One deadline for the whole body, not per chunk: a client trickling a byte a second is cut off too.
      await asyncio.wait_for(collect(), self.server.read_timeout_s)
    except asyncio.TimeoutError as e:  # not the builtin TimeoutError before Python 3.11
      raise HTTPError(408, f"the body did not arrive within {self.server.read_timeout_s:g} s "
                      f"({got} of {n} bytes)") from e
    except ClientDisconnect as e:
      raise _ClientGone() from e
    state["body_read"] = True
    data = b"".join(chunks)
    try:
      # Large bodies are parsed off the event loop, so other requests keep moving meanwhile.
      return json.loads(data) if len(data) < (64 << 10) else await asyncio.to_thread(json.loads, data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError too
      raise HTTPError(400, f"invalid JSON: {_one_line(e)}") from e

  async def _rewards(self, contexts: list[str], responses: list[str]) -> tuple[list[float], list[float]]:
    if not contexts:
      return [], []
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def resolve(job: _Job) -> None:  # worker thread -> event loop
      loop.call_soon_threadsafe(lambda: future.done() or future.set_result(job))

    try:
      self.server.batcher.submit(contexts, responses, resolve)
      job = await asyncio.wait_for(future, self.server.score_timeout_s)
    except Unavailable as e:
      raise HTTPError(503, _one_line(e)) from e
    except asyncio.TimeoutError as e:
      raise HTTPError(503, f"scoring did not finish within {self.server.score_timeout_s:g} s") from e
    if isinstance(job.error, ValueError):  # the model rejects this input (e.g. text its tokenizer cannot encode)
      raise HTTPError(422, f"cannot score this input: {_one_line(job.error)}") from job.error
    if job.error is not None:
      raise job.error
    model = self.server.model
    raw = job.raw
    # The same float32 arithmetic as `RewardModel.score(normalize=True)`, so both agree exactly.
    normalized = (raw - model.mean) / model.std
    bad = np.flatnonzero(~(np.isfinite(raw) & np.isfinite(normalized)))
    if bad.size:
      raise HTTPError(500, f"the model gave a non-finite reward ({raw[bad[0]]}) for pair {int(bad[0])}; "
                      "refusing to send it")
    return raw.tolist(), normalized.tolist()

  # --- endpoints ------------------------------------------------------------------------------------------------

  async def _health(self, request: Request, state: dict) -> dict[str, Any]:
    model, b = self.server.model, self.server.batcher
    return {"status": "ok", "objective": model.info.get("objective"), "max_len": int(model.max_len),
            "normalization": model.info.get("normalization"), "truncated": int(model.truncated),
            "stats": {"requests": b.requests, "pairs": b.pairs, "score_calls": b.score_calls,
                      "score_s": round(b.score_s, 3)}}

  async def _score(self, request: Request, state: dict) -> dict[str, Any]:
    body = _object(await self._read_json(request, state))
    contexts, responses, normalize = _pairs_of_score_body(body, self.server.max_items)
    raw, normalized = await self._rewards(contexts, responses)
    return {"rewards": normalized if normalize else raw, "raw": raw, "normalized": normalized}

  async def _get_reward(self, request: Request, state: dict) -> dict[str, Any]:
    body = _object(await self._read_json(request, state))
    contexts, responses = _pairs_of_get_reward_body(body, self.server.max_items)
    raw, normalized = await self._rewards(contexts, responses)
    return {"rewards": normalized, "scores": raw}


def _raw_answer(status: int, reason: str, message: str) -> bytes:
  body = _json_bytes({"error": message})
  return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
          "Connection: close\r\n\r\n").encode() + body


FD_RESERVE = 32     # descriptors left for the model, logs and the batcher when connections are capped
LOG_EVERY_S = 10.0  # a burst of fd pressure is logged once per this many seconds
_fd_log = logging.getLogger(__name__ + ".fd")   # its own stderr handler: these lines show without --verbose


def _fd_limit() -> int | None:
  try:
    import resource
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
  except (ImportError, OSError, ValueError):
    return None
  return None if soft == resource.RLIM_INFINITY else int(soft)


def _fds_open() -> int:
  for d in ("/proc/self/fd", "/dev/fd"):
    try:
      return len(os.listdir(d))
    except OSError:
      continue
  return 0


def default_max_connections() -> int | None:
  """RLIMIT_NOFILE less what is open now and FD_RESERVE (at least 1); None where there is no limit."""
  limit = _fd_limit()
  return None if limit is None else max(1, limit - _fds_open() - FD_RESERVE)


class _Connections:
  """The open connections of one server, oldest first, and the rate-limited log of descriptor pressure."""

  def __init__(self, max_connections: int | None):
    self.max = max_connections
    self.live: dict[Any, None] = {}   # insertion-ordered: the oldest first
    self.accepted = 0                 # accepted, their protocol not yet made (asyncio makes it in a task)
    self._counts = {"cap": 0, "emfile": 0}
    self._last_log = {"cap": -LOG_EVERY_S, "emfile": -LOG_EVERY_S}

  def add(self, proto) -> None:
    self.accepted = max(0, self.accepted - 1)
    self.live[proto] = None

  def discard(self, proto) -> None:
    self.live.pop(proto, None)

  def close_idle(self, n: int) -> int:
    """Closes up to n of the oldest connections that have no request in progress; returns how many."""
    closed = 0
    for proto in list(self.live):
      if closed >= n:
        break
      if proto.idle():
        proto.transport.abort()   # its descriptor is closed in the loop's next iteration, not after a goodbye
        self.live.pop(proto, None)
        closed += 1
    return closed

  def note(self, kind: str, what: str) -> None:
    self._counts[kind] += 1
    now = time.monotonic()
    if now - self._last_log[kind] >= LOG_EVERY_S:
      n, self._counts[kind] = self._counts[kind], 0
      self._last_log[kind] = now
      _fd_log.warning("%s%s", what, f" ({n} times since the last such line)" if n > 1 else "")


def _relief(closed: int) -> str:
  return f"closed the {closed} oldest idle" if closed else "none idle to close, accepting again in 1 s"


class _Listener(socket.socket):
  """The listening socket, whose accept() keeps the server under its connection cap and its descriptor limit.

  asyncio calls accept() in a loop while connections are queued. At the cap, the oldest idle connections are
  closed and accept() says "nothing queued" (BlockingIOError) until the next loop iteration, which frees their
  descriptors. With nothing idle to close, or on EMFILE, one EMFILE goes to asyncio, which stops accepting
  for a second (its other calls in the same pass say "nothing queued": asyncio would otherwise schedule a
  retry per call, a thousand a second).
  """

  connections: _Connections

  def accept(self):
    c = self.connections
    if self._paused_at is not None:
      if time.monotonic() - self._paused_at < 0.5:
        raise BlockingIOError(errno.EAGAIN, "accepting paused")
      self._paused_at = None
    if c.max is not None and len(c.live) + c.accepted >= c.max:
      closed = c.close_idle(len(c.live) + c.accepted - c.max + 1)
      c.note("cap", f"{len(c.live) + c.accepted + closed} connections open, at the cap of {c.max} (file "
             f"descriptor limit {_fd_limit()}): {_relief(closed)}")
      if closed:
        raise BlockingIOError(errno.EAGAIN, "making room")
      return self._pause(OSError(errno.EMFILE, "connection cap reached"))
    try:
      conn, addr = super().accept()
    except OSError as e:
      if e.errno not in (errno.EMFILE, errno.ENFILE):
        raise
      closed = c.close_idle(max(1, len(c.live) // 10))
      c.note("emfile", f"accept() failed: {e.strerror} ({len(c.live) + closed} connections open, file "
             f"descriptor limit {_fd_limit()}): {_relief(closed)}")
      if closed:
        raise BlockingIOError(errno.EAGAIN, "making room") from None
      return self._pause(e)
    c.accepted += 1
    return conn, addr

  def _pause(self, exc: OSError):
    self._paused_at = time.monotonic()
    raise exc


class _Protocol(H11Protocol):
  """uvicorn's h11 protocol, plus a deadline on the request head, and JSON for requests h11 cannot parse.

  uvicorn times out only idle keep-alive connections; a client that connects and sends nothing, or trickles
  its headers a byte at a time, would hold its connection forever. Here the head of every request must
  arrive within `head_timeout_s` of the connection opening (or of the previous answer).
  """
  head_timeout_s = 30.0  # set per server, on a subclass
  hhh_connections: _Connections = _Connections(None)   # likewise (uvicorn's own `connections` is a set)

  def connection_made(self, transport) -> None:
    super().connection_made(transport)
    self._head_timer: asyncio.TimerHandle | None = None
    self._head_started = False
    self._arm_head_timer()
    self.hhh_connections.add(self)

  def idle(self) -> bool:
    """Between requests (or before the first): closing it loses no request."""
    return (not self.transport.is_closing() and self.conn.their_state is h11.IDLE and not self._head_started
            and (self.cycle is None or self.cycle.response_complete))

  def data_received(self, data: bytes) -> None:
    super().data_received(data)
    if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
      self._head_started = True  # part of a request head is buffered, the rest has yet to come
      self._arm_head_timer()
    else:
      self._cancel_head_timer()

  def on_response_complete(self) -> None:
    super().on_response_complete()
    if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
      self._head_started = False
      self._cancel_head_timer()  # the keep-alive timeout covers the idle wait; data_received re-arms

  def connection_lost(self, exc) -> None:
    self._cancel_head_timer()
    self.hhh_connections.discard(self)
    super().connection_lost(exc)

  def _arm_head_timer(self) -> None:
    if self._head_timer is None:
      self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

  def _cancel_head_timer(self) -> None:
    if self._head_timer is not None:
      self._head_timer.cancel()
      self._head_timer = None

  def _head_timed_out(self) -> None:
    self._head_timer = None
    if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
      return
    if self._head_started:
      # h11 cannot send a response to a request it has not parsed, so this one is written by hand.
      self.transport.write(_raw_answer(408, "Request Timeout",
                                       f"the request head did not arrive within {self.head_timeout_s:g} s"))
    self.transport.close()

  def send_400_response(self, msg: str) -> None:
    # uvicorn answers an unparseable request (bad request line, header or Content-Length) in plain text.
    self.transport.write(_raw_answer(400, "Bad Request", "malformed HTTP request (request line, header or "
                                     "Content-Length)"))
    self.transport.close()


class RewardServer:
  """A bound (not yet serving) uvicorn server whose requests share one batching worker.

  `serve_forever()` serves in the calling thread until `shutdown()` (from another thread) or, in the main
  thread, SIGINT/SIGTERM; `server_close()` then releases the socket and stops the worker.
  """

  def __init__(self, model, host: str, port: int, *, max_body_bytes: int, max_items: int, max_batch: int,
               max_wait_ms: float, score_timeout_s: float = 600.0, read_timeout_s: float = 30.0,
               keep_alive_s: float = 5.0, backlog: int = 1024, max_connections: int | None = None,
               verbose: bool = False):
    for name, value in (("max_body_bytes", max_body_bytes), ("max_items", max_items), ("max_batch", max_batch),
                        ("backlog", backlog)):
      if int(value) < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    for name, value in (("max_wait_ms", max_wait_ms), ("score_timeout_s", score_timeout_s),
                        ("read_timeout_s", read_timeout_s), ("keep_alive_s", keep_alive_s)):
      if not value >= 0:
        raise ValueError(f"{name} must be >= 0, not {value}")
    self.model, self.verbose = model, verbose
    self.max_body_bytes, self.max_items = int(max_body_bytes), int(max_items)
    self.score_timeout_s, self.read_timeout_s = float(score_timeout_s), float(read_timeout_s)
    self.batcher = Batcher(model, int(max_batch), max_wait_ms)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    self.socket = _Listener(family, socket.SOCK_STREAM)
    self.socket._paused_at = None
    try:
      self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
      self.socket.bind((host, port))
      # The kernel caps this at net.core.somaxconn; the default of 128 on older kernels refuses bursts.
      self.socket.listen(int(backlog))
    except OSError:
      self.socket.close()
      raise
    self.server_address = self.socket.getsockname()[:2]
    if max_connections is not None and int(max_connections) < 1:
      raise ValueError(f"max_connections must be at least 1, not {max_connections}")
    self.connections = _Connections(default_max_connections() if max_connections is None else int(max_connections))
    self.socket.connections = self.connections
    protocol = type("_ServerProtocol", (_Protocol,), {"head_timeout_s": self.read_timeout_s,
                                                      "hhh_connections": self.connections})
    if verbose:
      _log_to_stderr()
    # asyncio's loop, not uvloop: asyncio accepts through _Listener.accept (uvloop calls accept in C, and meets
    # EMFILE by silently resetting every queued connection).
    config = uvicorn.Config(_App(self).asgi, http=protocol, ws="none", lifespan="off", log_config=None, loop="asyncio",
                            log_level="info" if verbose else "warning", access_log=verbose,
                            timeout_keep_alive=keep_alive_s, timeout_graceful_shutdown=5, backlog=int(backlog),
                            server_header=False, headers=[("server", "hhh-reward/1")])
    _log_to_stderr(_fd_log)
    self._uvicorn = _Uvicorn(config)
    self._serving = threading.Event()
    self._finished = threading.Event()
    self.batcher.start()

  @property
  def url(self) -> str:
    host, port = self.server_address
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

  @property
  def score_calls(self) -> int:
    """How many times the worker has called `model.score`: fewer than the requests when batching happens."""
    return self.batcher.score_calls

  def serve_forever(self) -> None:
    self._serving.set()
    try:
      self._uvicorn.run(sockets=[self.socket])
    finally:
      self._finished.set()

  def shutdown(self, timeout: float | None = 30.0) -> None:
    """Stops accepting, lets in-flight requests finish (5 s at most), and waits for `serve_forever` to return."""
    self._uvicorn.should_exit = True
    if self._serving.is_set():
      self._finished.wait(timeout)

  def server_close(self) -> None:
    self.socket.close()
    self.batcher.stop()


class _Uvicorn(uvicorn.Server):
  """uvicorn's server; its loop leaves the accept() pauses of `_Listener` (already logged, once per burst)
  unlogged, where asyncio would log a traceback for each."""

  async def serve(self, sockets=None) -> None:
    loop = asyncio.get_running_loop()

    def handler(loop, context):
      exc = context.get("exception")
      if not (context.get("message") == "socket.accept() out of system resource" and isinstance(exc, OSError)
              and exc.errno in (errno.EMFILE, errno.ENFILE)):
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    await super().serve(sockets)


def _log_to_stderr(*loggers) -> None:
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("hhh serve: %(message)s"))
  for logger in loggers or [logging.getLogger(n) for n in ("uvicorn.error", "uvicorn.access")]:
    if not logger.handlers:
      logger.addHandler(handler)
      logger.propagate = False
      logger.setLevel(logging.INFO)


def make_server(model, host: str = "127.0.0.1", port: int = 0, *, max_body_bytes: int = 8 << 20,
                max_items: int = 1024, max_batch: int = 256, max_wait_ms: float = 5.0,
                score_timeout_s: float = 600.0, read_timeout_s: float = 30.0, keep_alive_s: float = 5.0,
                backlog: int = 1024, max_connections: int | None = None,
                verbose: bool = False) -> tuple[RewardServer, str]:
  """A bound (not yet serving) server for `model` and its URL; port 0 picks a free port.

  Run it with `server.serve_forever()` (e.g. in a thread); stop it with `server.shutdown()` from another
  thread, then `server.server_close()`.
  """
  server = RewardServer(model, host, port, max_body_bytes=max_body_bytes, max_items=max_items,
                        max_batch=max_batch, max_wait_ms=max_wait_ms, score_timeout_s=score_timeout_s,
                        read_timeout_s=read_timeout_s, keep_alive_s=keep_alive_s, backlog=backlog,
                        max_connections=max_connections, verbose=verbose)
  return server, server.url


def serve(bundle_path, host: str = "127.0.0.1", port: int = 8000, **limits) -> None:
  """Loads a bundle and serves it until interrupted (blocking)."""
  from hhh.reward.api import RewardModel
  model = RewardModel(bundle_path)
  model.warn_truncation = False  # /health counts truncated pairs instead
  # Compile the smallest length bucket now, so the first client does not wait for it.
  model.score([""], [""])
  server, url = make_server(model, host, port, **limits)
  print(f"hhh: serving {bundle_path} on {url}", flush=True)
  try:
    server.serve_forever()  # uvicorn turns SIGINT/SIGTERM into a graceful stop, then re-raises the signal
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()


def add_cli(sub) -> None:
  """Registers `hhh serve BUNDLE ...` on an argparse subparsers object."""
  p = sub.add_parser("serve", help="serve a reward bundle over HTTP (OpenRLHF's /get_reward, and /score)",
                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("bundle", help="a reward bundle directory written by `hhh export`")
  p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; "
                 "there is no authentication)")
  p.add_argument("--port", type=int, default=8000)
  p.add_argument("--max-batch", type=int, default=256, help="pairs the worker scores together at most")
  p.add_argument("--max-wait-ms", type=float, default=5.0, help="how long the worker waits for more requests")
  p.add_argument("--max-body-bytes", type=int, default=8 << 20, help="largest request body accepted")
  p.add_argument("--max-items", type=int, default=1024, help="most pairs one request may carry")
  p.add_argument("--read-timeout", type=float, default=30.0,
                 help="seconds a client has to send a request's head, and again its body (then 408)")
  p.add_argument("--backlog", type=int, default=1024, help="connections the kernel queues before accepting")
  p.add_argument("--max-connections", type=int, default=None,
                 help="open connections at most; past it the oldest idle one is closed (default: the file "
                 f"descriptor limit less those open at start and {FD_RESERVE})")
  p.add_argument("--verbose", action="store_true", help="log one line per request to stderr")
  p.set_defaults(func=lambda args: serve(args.bundle, args.host, args.port, max_batch=args.max_batch,
                                         max_wait_ms=args.max_wait_ms, max_body_bytes=args.max_body_bytes,
                                         max_items=args.max_items, read_timeout_s=args.read_timeout,
                                         backlog=args.backlog, max_connections=args.max_connections,
                                         verbose=args.verbose))
