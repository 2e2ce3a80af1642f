"""Serve a reward bundle over HTTP, so RL pipelines in other processes can use a trained PM as their reward.

    hhh serve runs/tiny_pm/bundle --port 8000
    # or: from hhh.reward import server; server.serve("runs/tiny_pm/bundle", port=8000)

Concurrent requests are batched: each connection has its own thread, which puts
its pairs on a queue and waits, and one worker thread (the only one that touches
the model) gathers up to `max_batch` pairs from whatever requests are waiting
(or waits `max_wait_ms` for more), scores them with ONE `RewardModel.score` call
and hands each request its slice. A reward does not depend on what it was
batched with, so answers equal `RewardModel.score` on the same pairs.

Endpoints (JSON in and out):

  GET /health
    -> {"status": "ok", "objective": "ranked", "max_len": 1024, "normalization": {"mean": .., "std": .., ...},
        "truncated": 0, "stats": {"requests": .., "pairs": .., "score_calls": ..}}
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

Errors are JSON `{"error": "one line"}` with a 4xx status: 400 invalid JSON, 404 unknown path, 405 wrong
method, 408 body not received in time, 411 no Content-Length, 413 body over `max_body_bytes` (refused from
Content-Length before reading) or more than `max_items` pairs, 422 wrong types, missing fields, mismatched
lengths or input the model rejects. An internal failure is a JSON 500 and the server keeps serving; 503 means
it is shutting down or scoring timed out. The server listens on 127.0.0.1 unless told otherwise: it has no
authentication, so expose it only on a trusted network.
"""

from __future__ import annotations

import argparse
import http.server
import json
import logging
import queue
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from http import HTTPStatus
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)

_STOP = object()


class _Job:
  """One request's pairs, waiting for the worker."""
  __slots__ = ("contexts", "responses", "done", "raw", "error")

  def __init__(self, contexts: list[str], responses: list[str]):
    self.contexts, self.responses = contexts, responses
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

  def score(self, contexts: list[str], responses: list[str], timeout: float | None = None) -> np.ndarray:
    """Raw rewards of these pairs, scored together with whatever else is waiting."""
    job = _Job(contexts, responses)
    with self._lock:
      if self._stopped:
        raise Unavailable("the server is shutting down")
      self._queue.put(job)
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

  def _score(self, contexts: list[str], responses: list[str]) -> np.ndarray:
    self.score_calls += 1
    raw = np.asarray(self.model.score(contexts, responses), np.float32)
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
          except Exception as e:  # noqa: BLE001 -- handed to that request's thread
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
        j.done.set()


class HTTPError(Exception):

  def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
    super().__init__(message)
    self.status, self.message, self.headers = int(status), message, headers or {}


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split()) or type(e).__name__
  return text[:500]


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


class _Handler(http.server.BaseHTTPRequestHandler):
  server: RewardServer
  protocol_version = "HTTP/1.1"  # keep-alive for clients that reuse connections
  server_version = "hhh-reward/1"
  # Not HTTP/0.9 (the base default), whose answers have no status line: a garbled request still gets a 400.
  default_request_version = "HTTP/1.0"
  timeout = 60  # seconds a read may stall before the connection is dropped; a slow client holds only its thread

  # --- routing --------------------------------------------------------------------------------------------------

  def do_GET(self):
    self._dispatch()

  do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

  def _dispatch(self) -> None:
    self._body_read = False
    try:
      path = urllib.parse.urlsplit(self.path).path
      route = _ROUTES.get(path.rstrip("/") or "/")
      if route is None:
        raise HTTPError(404, f"no endpoint {path!r}; there are GET /health, POST /score and POST /get_reward")
      method, fn = route
      if self.command != method:
        raise HTTPError(405, f"{path} takes {method}, not {self.command}", {"Allow": method})
      self._reply(200, fn(self, self._read_json() if method == "POST" else None))
    except HTTPError as e:
      self._reply(e.status, {"error": e.message}, e.headers)
    except Exception as e:  # noqa: BLE001 -- a bug answers 500 and the server goes on
      log.exception("hhh serve: internal error on %s %s", self.command, self.path)
      self._reply(500, {"error": f"internal error: {_one_line(e)}"})

  # --- endpoints ------------------------------------------------------------------------------------------------

  def _health(self, _body) -> dict[str, Any]:
    model, b = self.server.model, self.server.batcher
    return {"status": "ok", "objective": model.info.get("objective"), "max_len": int(model.max_len),
            "normalization": model.info.get("normalization"), "truncated": int(model.truncated),
            "stats": {"requests": b.requests, "pairs": b.pairs, "score_calls": b.score_calls}}

  def _score_endpoint(self, body) -> dict[str, Any]:
    body = self._object(body)
    pairs = body.get("pairs")
    if "pairs" not in body:
      raise HTTPError(422, 'missing field "pairs" (a list of {"context": str, "response": str})')
    if not isinstance(pairs, list):
      raise HTTPError(422, f'"pairs" must be a list, not {type(pairs).__name__}')
    self._check_count(len(pairs))
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
    raw, normalized = self._rewards(contexts, responses)
    return {"rewards": normalized if normalize else raw, "raw": raw, "normalized": normalized}

  def _get_reward(self, body) -> dict[str, Any]:
    body = self._object(body)
    queries = _string_list(body, "query")
    self._check_count(len(queries))
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
    raw, normalized = self._rewards(contexts, responses)
    return {"rewards": normalized, "scores": raw}

  # --- helpers --------------------------------------------------------------------------------------------------

  def _rewards(self, contexts: list[str], responses: list[str]) -> tuple[list[float], list[float]]:
    if not contexts:
      return [], []
    try:
      raw = self.server.batcher.score(contexts, responses, timeout=self.server.score_timeout_s)
    except Unavailable as e:
      raise HTTPError(503, _one_line(e)) from e
    except ValueError as e:  # the model rejects this input (e.g. text its tokenizer cannot encode)
      raise HTTPError(422, f"cannot score this input: {_one_line(e)}") from e
    model = self.server.model
    # The same float32 arithmetic as `RewardModel.score(normalize=True)`, so both agree exactly.
    normalized = (raw - model.mean) / model.std
    return raw.tolist(), normalized.tolist()

  def _object(self, body) -> dict:
    if not isinstance(body, dict):
      raise HTTPError(422, f"the body must be a JSON object, not {type(body).__name__}")
    return body

  def _check_count(self, n: int) -> None:
    if n > self.server.max_items:
      raise HTTPError(413, f"{n} items is more than this server's limit of {self.server.max_items} per request; "
                      "split them over several requests")

  def _content_length(self) -> int:
    if self.headers.get("Transfer-Encoding"):
      raise HTTPError(411, "chunked bodies are not supported; send a Content-Length")
    values = self.headers.get_all("Content-Length") or []
    if not values:
      raise HTTPError(411, "a POST needs a Content-Length header")
    if len(set(v.strip() for v in values)) > 1 or not values[0].strip().isdigit():
      raise HTTPError(400, f"bad Content-Length {', '.join(values)[:60]!r}")
    n = int(values[0])
    if n > self.server.max_body_bytes:
      raise HTTPError(413, f"body of {n} bytes is over this server's limit of {self.server.max_body_bytes}")
    return n

  def _read_json(self):
    n = self._content_length()
    try:
      data = self.rfile.read(n)
    except TimeoutError as e:
      raise HTTPError(408, f"the body did not arrive within {self.timeout} s") from e
    self._body_read = True
    if len(data) < n:
      raise HTTPError(400, f"the body ended after {len(data)} of {n} bytes")
    try:
      return json.loads(data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError too
      raise HTTPError(400, f"invalid JSON: {_one_line(e)}") from e

  def handle_expect_100(self) -> bool:
    # Refuse an oversized body before the client sends it, rather than after.
    if self.command == "POST":
      try:
        self._content_length()
      except HTTPError as e:
        if e.status == 413:
          self._body_read = False
          self._reply(e.status, {"error": e.message})
          return False
    return super().handle_expect_100()

  def send_error(self, code, message=None, explain=None):
    # The base class calls this for malformed requests (bad request line, huge headers, unknown method): JSON
    # like every other answer, and an unknown method is a 405, not a 501.
    if code == HTTPStatus.NOT_IMPLEMENTED:
      code, message = 405, f"method {self.command!r} is not allowed"
    self._body_read = False
    self._reply(int(code), {"error": message or HTTPStatus(code).phrase})

  def _reply(self, status: int, obj: dict, headers: dict[str, str] | None = None) -> None:
    body = json.dumps(obj).encode()
    # An unread request body would be parsed as the next request, so any error closes the connection.
    unread = status >= 400 and not getattr(self, "_body_read", False) and self._has_body()
    if status >= 400:
      self.close_connection = True
    try:
      self.send_response(status)
      self.send_header("Content-Type", "application/json")
      self.send_header("Content-Length", str(len(body)))
      for k, v in (headers or {}).items():
        self.send_header(k, v)
      if self.close_connection:
        self.send_header("Connection", "close")
      self.end_headers()
      if self.command != "HEAD":
        self.wfile.write(body)
      self.wfile.flush()
      if unread:
        self._linger()
    except OSError:
      self.close_connection = True  # the client left; nothing to answer

  def _has_body(self) -> bool:
    headers = getattr(self, "headers", None)
    if headers is None:
      return False
    cl = headers.get("Content-Length", "0").strip()
    return bool(headers.get("Transfer-Encoding")) or not cl.isdigit() or int(cl) > 0

  def _linger(self, limit_bytes: int = 64 << 20, limit_s: float = 2.0) -> None:
    # Closing a socket with unread input resets the connection, and the client may lose our answer with it;
    # so end our side, then discard what the client is still sending, for a bounded time.
    try:
      self.connection.shutdown(socket.SHUT_WR)
      deadline = time.monotonic() + limit_s
      while limit_bytes > 0 and (left := deadline - time.monotonic()) > 0:
        self.connection.settimeout(left)
        chunk = self.connection.recv(min(1 << 16, limit_bytes))
        if not chunk:
          break
        limit_bytes -= len(chunk)
    except OSError:
      pass

  def log_message(self, format, *args):  # noqa: A002 -- the base class's name
    if self.server.verbose:
      sys.stderr.write(f"hhh serve: {self.address_string()} {format % args}\n")


_ROUTES: dict[str, tuple[str, Callable]] = {
    "/health": ("GET", _Handler._health),
    "/score": ("POST", _Handler._score_endpoint),
    "/get_reward": ("POST", _Handler._get_reward),
}


class RewardServer(http.server.ThreadingHTTPServer):
  """A ThreadingHTTPServer (one thread per connection) whose requests share one batching worker."""
  daemon_threads = True

  def __init__(self, model, host: str, port: int, *, max_body_bytes: int, max_items: int, max_batch: int,
               max_wait_ms: float, score_timeout_s: float = 600.0, verbose: bool = False):
    for name, value in (("max_body_bytes", max_body_bytes), ("max_items", max_items), ("max_batch", max_batch)):
      if int(value) < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    if max_wait_ms < 0:
      raise ValueError(f"max_wait_ms must be >= 0, not {max_wait_ms}")
    self.model, self.verbose = model, verbose
    self.max_body_bytes, self.max_items, self.score_timeout_s = int(max_body_bytes), int(max_items), score_timeout_s
    self.batcher = Batcher(model, int(max_batch), max_wait_ms)
    if ":" in host:
      self.address_family = socket.AF_INET6
    super().__init__((host, port), _Handler)
    self.batcher.start()

  def server_bind(self) -> None:
    # HTTPServer.server_bind looks up the host's FQDN, which can stall for seconds without DNS.
    socketserver.TCPServer.server_bind(self)
    self.server_name, self.server_port = self.server_address[0], self.server_address[1]

  @property
  def url(self) -> str:
    host, port = self.server_address[0], self.server_address[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

  @property
  def score_calls(self) -> int:
    """How many times the worker has called `model.score`: fewer than the requests when batching happens."""
    return self.batcher.score_calls

  def shutdown(self) -> None:
    super().shutdown()
    self.batcher.stop()

  def server_close(self) -> None:
    super().server_close()
    self.batcher.stop()


def make_server(model, host: str = "127.0.0.1", port: int = 0, *, max_body_bytes: int = 8 << 20,
                max_items: int = 1024, max_batch: int = 256, max_wait_ms: float = 5.0,
                score_timeout_s: float = 600.0, verbose: bool = False) -> tuple[RewardServer, str]:
  """A bound (not yet serving) server for `model` and its URL; port 0 picks a free port.

  Run it with `server.serve_forever()` (e.g. in a thread); stop it with `server.shutdown()` from another
  thread, then `server.server_close()`.
  """
  server = RewardServer(model, host, port, max_body_bytes=max_body_bytes, max_items=max_items,
                        max_batch=max_batch, max_wait_ms=max_wait_ms, score_timeout_s=score_timeout_s,
                        verbose=verbose)
  return server, server.url


def serve(bundle_path, host: str = "127.0.0.1", port: int = 8000, **limits) -> None:
  """Loads a bundle and serves it until interrupted (blocking)."""
  from hhh.reward.api import RewardModel
  model = RewardModel(bundle_path)
  # Compile the smallest length bucket now, so the first client does not wait for it.
  model.score([""], [""])
  server, url = make_server(model, host, port, **limits)
  print(f"hhh: serving {bundle_path} on {url}", flush=True)
  try:
    server.serve_forever()
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
  p.add_argument("--verbose", action="store_true", help="log one line per request to stderr")
  p.set_defaults(func=lambda args: serve(args.bundle, args.host, args.port, max_batch=args.max_batch,
                                         max_wait_ms=args.max_wait_ms, max_body_bytes=args.max_body_bytes,
                                         max_items=args.max_items, verbose=args.verbose))
