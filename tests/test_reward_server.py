"""The reward server: answers equal `RewardModel.score`, concurrent requests are batched, bad input is a 4xx."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from hhh.reward import export as export_lib
from hhh.reward import server as server_lib
from hhh.reward.api import RewardModel
from tests.conftest import REPO, TINY_EXPERIMENT, hhh_env, run_hhh

TIMEOUT = 30  # seconds per request: a hung server fails the test instead of stalling it


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
  root = tmp_path_factory.mktemp("reward_server")
  (root / "tiny_experiment.py").write_text(TINY_EXPERIMENT)
  run_hhh("train", root / "tiny_experiment.py", "--workdir", root / "run")
  export_lib.export(root / "run", root / "bundle")
  return root / "bundle"


@pytest.fixture(scope="module")
def reference(bundle_path) -> RewardModel:
  """A second instance of the model, scored directly: what the server's answers must equal."""
  return RewardModel(bundle_path)


def _start(model, **limits):
  server, url = server_lib.make_server(model, "127.0.0.1", 0, **limits)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  return server, url, thread


def _stop(server, thread):
  server.shutdown()
  server.server_close()
  thread.join(TIMEOUT)
  assert not thread.is_alive()


@pytest.fixture(scope="module")
def served(bundle_path):
  model = RewardModel(bundle_path)
  server, url, thread = _start(model, max_items=64, max_body_bytes=1 << 20, max_batch=256, max_wait_ms=5.0)
  yield server, url
  _stop(server, thread)


def _request(url: str, path: str, body=None, method: str | None = None) -> tuple[int, dict]:
  data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
  req = urllib.request.Request(url + path, data=data, method=method,
                               headers={"Content-Type": "application/json"} if data is not None else {})
  try:
    with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
      assert resp.headers["Content-Type"] == "application/json"
      return resp.status, json.loads(resp.read())
  except urllib.error.HTTPError as e:
    assert e.headers["Content-Type"] == "application/json"
    return e.code, json.loads(e.read())


def _raw(url: str, request: bytes) -> tuple[int, dict]:
  """Sends `request` bytes as they are (to break the protocol on purpose) and parses the answer."""
  host, port = url.removeprefix("http://").split(":")
  with socket.create_connection((host, int(port)), timeout=TIMEOUT) as s:
    s.sendall(request)
    resp = http.client.HTTPResponse(s)
    resp.begin()
    assert resp.getheader("Content-Type") == "application/json"
    return resp.status, json.loads(resp.read())


PAIRS = [("Human: What is 2 + 2?\n\nAssistant:", " 4."),
         ("Human: What is 2 + 2?\n\nAssistant:", " I would rather not say."),
         ("", "Just a response, no context."),
         ("Human: Tell me a long story.\n\nAssistant:", " Once upon a time " * 20),  # longer than max_len
         ("Human: héllo ✓\n\nAssistant:", " ünïcode 🙂")]


def test_health(served, reference):
  server, url = served
  status, body = _request(url, "/health")
  assert status == 200
  assert body["status"] == "ok"
  assert body["objective"] == "ranked"
  assert body["max_len"] == reference.max_len == 64
  assert body["normalization"]["mean"] == pytest.approx(reference.mean)
  assert body["normalization"]["std"] == pytest.approx(reference.std)
  assert isinstance(body["truncated"], int)
  # HEAD: the same status and headers, no body.
  host, port = url.removeprefix("http://").split(":")
  conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
  try:
    conn.request("HEAD", "/health")
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("Content-Type"), resp.read()) == (200, "application/json", b"")
    assert int(resp.getheader("Content-Length")) > 0
  finally:
    conn.close()


def test_score_equals_direct(served, reference):
  _, url = served
  contexts, responses = [c for c, _ in PAIRS], [r for _, r in PAIRS]
  raw = reference.score(contexts, responses)
  normalized = reference.score(contexts, responses, normalize=True)
  pairs = [{"context": c, "response": r} for c, r in PAIRS]
  status, body = _request(url, "/score", {"pairs": pairs})
  assert status == 200
  np.testing.assert_allclose(body["raw"], raw, atol=1e-6)
  np.testing.assert_allclose(body["normalized"], normalized, atol=1e-6)
  np.testing.assert_allclose(body["rewards"], raw, atol=1e-6)
  status, body = _request(url, "/score", {"pairs": pairs, "normalize": True})
  assert status == 200
  np.testing.assert_allclose(body["rewards"], normalized, atol=1e-6)
  assert _request(url, "/score", {"pairs": []}) == (200, {"rewards": [], "raw": [], "normalized": []})
  # The fourth pair does not fit in max_len: it is truncated, and /health counts it.
  assert _request(url, "/health")[1]["truncated"] >= 2


def test_get_reward_splits_prompts(served, reference):
  _, url = served
  # The last prompt is longer than max_len: split, its start is cut (context from the left) and the response
  # kept; unsplit, the whole text is a response and its end is cut. So the split shows in the rewards.
  long_prompt = "Human: " + "why is the sky blue? " * 5 + "\n\nAssistant:"
  prompts = ["Human: What is 2 + 2?\n\nAssistant:", "not a prefix", long_prompt]
  queries = [prompts[0] + " 4.", "Human: hi\n\nAssistant: Hey.", long_prompt + " Rayleigh scattering."]
  split = reference.score([prompts[0], "", long_prompt], [" 4.", queries[1], " Rayleigh scattering."])
  unsplit = reference.score([""] * 3, queries)
  assert abs(split[2] - unsplit[2]) > 1e-4
  # With prompts: a prompt that prefixes its query is the context; one that does not leaves context "".
  status, body = _request(url, "/get_reward", {"query": queries, "prompts": prompts, "labels": ["", "", ""]})
  assert status == 200
  np.testing.assert_allclose(body["scores"], split, atol=1e-6)
  np.testing.assert_allclose(body["rewards"], (split - reference.mean) / reference.std, atol=1e-6)
  # Without prompts (or prompts: null) every query is a response to an empty context.
  for payload in ({"query": queries}, {"query": queries, "prompts": None}):
    status, body = _request(url, "/get_reward", payload)
    assert status == 200
    np.testing.assert_allclose(body["scores"], unsplit, atol=1e-6)
    np.testing.assert_allclose(body["rewards"], reference.score([""] * 3, queries, normalize=True), atol=1e-6)
  assert _request(url, "/get_reward", {"query": []}) == (200, {"rewards": [], "scores": []})


def test_concurrent_requests_are_batched_and_correct(served, reference):
  server, url = served
  rng = random.Random(0)
  words = "the a helpful harmless honest assistant answer question why how please thanks".split()

  def text(n):
    return " ".join(rng.choice(words) for _ in range(n))

  n_clients, per_client = 16, 10
  plans = [[[(f"Human: {text(rng.randint(0, 8))}\n\nAssistant:", " " + text(rng.randint(1, 12)))
             for _ in range(rng.randint(1, 40))] for _ in range(per_client)] for _ in range(n_clients)]
  flat = [p for client in plans for req in client for p in req]
  expected = dict(zip(flat, reference.score([c for c, _ in flat], [r for _, r in flat]).tolist()))

  def client(reqs):
    errors = []
    for pairs in reqs:
      status, body = _request(url, "/score", {"pairs": [{"context": c, "response": r} for c, r in pairs]})
      if status != 200:
        errors.append((status, body))
        continue
      want = [expected[p] for p in pairs]
      if not np.allclose(body["raw"], want, atol=1e-6, rtol=0):
        errors.append(("mismatch", body["raw"], want))
    return errors

  calls_before = server.score_calls
  start = time.monotonic()
  with concurrent.futures.ThreadPoolExecutor(n_clients) as pool:
    results = list(pool.map(client, plans, timeout=120))
  elapsed = time.monotonic() - start
  assert [e for r in results for e in r] == []
  assert elapsed < 60
  calls = server.score_calls - calls_before
  # Requests from different clients shared model.score calls.
  assert 0 < calls < n_clients * per_client


def test_many_clients_with_a_fresh_connection_per_request(served, reference):
  # 64 clients x 20 requests, each on a new TCP connection: the listen backlog and the accept loop must keep
  # up with bursts of connects, and no request may be refused, reset or answered wrongly.
  _, url = served
  n_clients, per_client = 64, 20
  texts = [(f"Human: question {i}?\n\nAssistant:", f" answer {i % 7}") for i in range(n_clients * per_client)]
  expected = reference.score([c for c, _ in texts], [r for _, r in texts])

  def client(k):
    errors = []
    for i in range(k * per_client, (k + 1) * per_client):
      try:
        status, body = _request(url, "/score", {"pairs": [{"context": texts[i][0], "response": texts[i][1]}]})
      except OSError as e:
        errors.append((i, repr(e)))
        continue
      if status != 200 or not np.allclose(body["raw"], expected[i:i + 1], atol=1e-6, rtol=0):
        errors.append((i, status, body))
    return errors

  with concurrent.futures.ThreadPoolExecutor(n_clients) as pool:
    results = list(pool.map(client, range(n_clients), timeout=300))
  assert [e for r in results for e in r] == []


@pytest.mark.parametrize("name,request_bytes,status", [
    ("invalid JSON", b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{\"pairs\":", 400),
    ("not UTF-8", b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n\xff\xfe", 400),
    ("no Content-Length", b"POST /score HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 411),
    ("bad Content-Length", b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: -3\r\n\r\n", 400),
    ("huge Content-Length", b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999999\r\n\r\n{}", 413),
    ("huge, expecting 100", b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n"
     b"Expect: 100-continue\r\n\r\n", 413),
    ("chunked", b"POST /score HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 411),
    ("unknown method", b"BREW /score HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    ("garbage request line", b"hello\r\n\r\n", 400),
])
def test_protocol_errors(served, name, request_bytes, status):
  _, url = served
  got, body = _raw(url, request_bytes)
  assert got == status, (name, body)
  assert isinstance(body["error"], str) and "\n" not in body["error"]


@pytest.mark.parametrize("path,payload,status", [
    ("/score", [1, 2], 422),  # a JSON list, not an object
    ("/score", "pairs", 422),
    ("/score", {}, 422),
    ("/score", {"pairs": {"context": "a", "response": "b"}}, 422),
    ("/score", {"pairs": [["a", "b"]]}, 422),
    ("/score", {"pairs": [{"context": "a"}]}, 422),
    ("/score", {"pairs": [{"context": 1, "response": "b"}]}, 422),
    ("/score", {"pairs": [{"context": "a", "response": None}]}, 422),
    ("/score", {"pairs": [], "normalize": "yes"}, 422),
    ("/score", {"pairs": [{"context": "a", "response": "b"}] * 65}, 413),  # max_items is 64
    ("/get_reward", {}, 422),
    ("/get_reward", {"query": "one text"}, 422),
    ("/get_reward", {"query": ["a", 2]}, 422),
    ("/get_reward", {"query": ["a", "b"], "prompts": ["a"]}, 422),
    ("/get_reward", {"query": ["a"], "prompts": [None]}, 422),
    ("/get_reward", {"query": ["a"] * 65}, 413),
    ("/nowhere", {"pairs": []}, 404),
])
def test_bad_requests(served, path, payload, status):
  _, url = served
  got, body = _request(url, path, payload)
  assert got == status, body
  assert isinstance(body["error"], str) and body["error"]


def test_bad_methods_and_paths(served):
  _, url = served
  assert _request(url, "/score")[0] == 405  # GET
  assert _request(url, "/get_reward", method="PUT", body={})[0] == 405
  assert _request(url, "/health", body={})[0] == 405  # POST
  assert _request(url, "/")[0] == 404
  assert _request(url, "/score/../../etc/passwd")[0] == 404


def test_input_the_model_rejects_is_422(served, reference):
  _, url = served
  # A lone surrogate is valid JSON but not encodable text: the tokenizer raises ValueError.
  body = b'{"pairs": [{"context": "a", "response": "\\ud800"}]}'
  status, answer = _request(url, "/score", body)
  assert status == 422, answer
  # Nothing was broken by it.
  status, answer = _request(url, "/score", {"pairs": [{"context": "a", "response": "b"}]})
  assert status == 200
  assert answer["raw"] == pytest.approx(reference.score(["a"], ["b"]).tolist(), abs=1e-6)


def test_still_healthy_after_errors(served):
  # Runs after the error tests (file order): nothing they sent took the server down.
  status, body = _request(served[1], "/health")
  assert status == 200 and body["status"] == "ok"


class _FlakyModel:
  """A stand-in model: rejects "bad" (ValueError), fails on "boom" (a bug), scores the rest by length."""
  info = {"objective": "ranked", "normalization": {"mean": 1.0, "std": 2.0}}
  max_len, mean, std, truncated = 64, 1.0, 2.0, 0

  def __init__(self):
    self.calls = []

  def score(self, contexts, responses, normalize=False):
    self.calls.append(len(contexts))
    time.sleep(0.01)
    if "boom" in responses:
      raise RuntimeError("a bug")
    if "bad" in responses:
      raise ValueError("bad input")
    return np.asarray([len(c) + len(r) for c, r in zip(contexts, responses)], np.float32)


def test_worker_survives_failures_and_isolates_bad_requests():
  model = _FlakyModel()
  server, url, thread = _start(model, max_wait_ms=200.0)
  try:
    status, body = _request(url, "/score", {"pairs": [{"context": "", "response": "boom"}]})
    assert status == 500 and "a bug" in body["error"]
    # Batched with a bad request, good requests still get their answers; the bad one alone gets a 422.
    payloads = [[{"context": "ab", "response": "c"}], [{"context": "", "response": "bad"}],
                [{"context": "x", "response": "yz"}, {"context": "", "response": "1234"}]]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
      results = list(pool.map(lambda p: _request(url, "/score", {"pairs": p}), payloads, timeout=TIMEOUT))
    assert results[0] == (200, {"rewards": [3.0], "raw": [3.0], "normalized": [1.0]})
    assert results[1][0] == 422 and "bad input" in results[1][1]["error"]
    assert results[2] == (200, {"rewards": [3.0, 4.0], "raw": [3.0, 4.0], "normalized": [1.0, 1.5]})
    assert 4 in model.calls  # the three requests were first scored together
    assert _request(url, "/health")[0] == 200
  finally:
    _stop(server, thread)
  with pytest.raises(ValueError):
    server_lib.make_server(model, max_batch=0)


class _InfiniteModel(_FlakyModel):
  """Gives +inf for "inf" and nan for "nan": rewards JSON cannot carry."""

  def score(self, contexts, responses, normalize=False):
    return np.asarray([{"inf": np.inf, "nan": np.nan}.get(r, 1.0) for r in responses], np.float32)


def test_non_finite_rewards_are_a_json_500():
  server, url, thread = _start(_InfiniteModel())
  try:
    for bad in ("inf", "nan"):
      for path, body in (("/score", {"pairs": [{"context": "", "response": "ok"}, {"context": "", "response": bad}]}),
                         ("/get_reward", {"query": ["ok", bad]})):
        status, answer = _request(url, path, body)  # json.loads would accept Infinity; the server must not send it
        assert status == 500, answer
        assert answer["error"].startswith("the model gave a non-finite reward") and "pair 1" in answer["error"]
    assert _request(url, "/get_reward", {"query": ["ok"]}) == (200, {"rewards": [0.0], "scores": [1.0]})
  finally:
    _stop(server, thread)


def _read_answer(sock) -> tuple[int, dict]:
  resp = http.client.HTTPResponse(sock)
  resp.begin()
  assert resp.getheader("Content-Type") == "application/json"
  assert resp.getheader("Connection") == "close"
  return resp.status, json.loads(resp.read())


def test_slow_clients_are_cut_off_and_others_still_served():
  server, url, thread = _start(_FlakyModel(), read_timeout_s=1.0)
  host, port = url.removeprefix("http://").split(":")
  addr = (host, int(port))
  socks = []
  try:
    # Stalls mid-body: 10 of 100 promised bytes, then nothing.
    body_staller = socket.create_connection(addr, timeout=TIMEOUT)
    body_staller.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b'{"pairs": ')
    # Stalls mid-head: a request line and one header, never the blank line.
    head_staller = socket.create_connection(addr, timeout=TIMEOUT)
    head_staller.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\n")
    # Connects and says nothing.
    silent = socket.create_connection(addr, timeout=TIMEOUT)
    socks += [body_staller, head_staller, silent]
    # Trickles its body a byte at a time, forever: the deadline is for the whole body, not for each read.
    trickler = socket.create_connection(addr, timeout=TIMEOUT)
    socks.append(trickler)
    trickler.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
    trickle_result = []

    def trickle():
      try:
        for _ in range(int(TIMEOUT / 0.1)):
          if select.select([trickler], [], [], 0.1)[0]:
            break  # the server answered
          trickler.sendall(b" ")
        trickle_result.append(_read_answer(trickler))
      except OSError as e:  # a byte that crossed the server's close in flight resets the connection
        trickle_result.append(e)

    trickling = threading.Thread(target=trickle)
    trickling.start()
    # Meanwhile everyone else is served.
    for i in range(5):
      assert _request(url, "/score", {"pairs": [{"context": "ab", "response": "c" * i}]})[1]["raw"] == [2.0 + i]
    status, answer = _read_answer(body_staller)
    assert status == 408 and answer["error"] == "the body did not arrive within 1 s (10 of 100 bytes)"
    status, answer = _read_answer(head_staller)
    assert status == 408 and answer["error"] == "the request head did not arrive within 1 s"
    assert silent.recv(100) == b""  # closed without a word: there was no request to answer
    trickling.join(TIMEOUT)
    (result,) = trickle_result
    if not isinstance(result, OSError):
      assert result[0] == 408 and result[1]["error"].startswith("the body did not arrive within 1 s (")
    assert _request(url, "/health")[0] == 200
  finally:
    for s in socks:
      s.close()
    _stop(server, thread)


def test_keep_alive_connection_serves_several_requests():
  server, url, thread = _start(_FlakyModel(), read_timeout_s=1.0)
  host, port = url.removeprefix("http://").split(":")
  conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
  try:
    answers = []
    for pairs in ([{"context": "ab", "response": "c"}], [{"context": 1, "response": "c"}],
                  [{"context": "", "response": "1234"}]):
      conn.request("POST", "/score", json.dumps({"pairs": pairs}), {"Content-Type": "application/json"})
      resp = conn.getresponse()
      answers.append((resp.status, json.loads(resp.read())["raw" if resp.status == 200 else "error"]))
      if len(answers) == 1:
        sock = conn.sock
      assert conn.sock is sock  # the same connection: a 422 after a fully read body does not close it
    assert answers == [(200, [3.0]), (422, 'pairs[0]["context"] must be a string, not int'), (200, [4.0])]
  finally:
    conn.close()
    _stop(server, thread)


def test_cli_parser():
  import argparse
  parser = argparse.ArgumentParser()
  server_lib.add_cli(parser.add_subparsers(dest="command"))
  args = parser.parse_args(["serve", "some/bundle", "--port", "9000", "--max-batch", "32",
                            "--max-body-bytes", "1000"])
  assert (args.bundle, args.host, args.port, args.max_batch, args.max_body_bytes) == \
      ("some/bundle", "127.0.0.1", 9000, 32, 1000)
  assert callable(args.func)


def test_serve_prints_its_url_and_stops_on_interrupt(bundle_path):
  code = "import sys; from hhh.reward.server import serve; serve(sys.argv[1], port=0, max_batch=8)"
  proc = subprocess.Popen([sys.executable, "-c", code, str(bundle_path)], env=hhh_env(), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  watchdog = threading.Timer(60, proc.kill)  # a hung server fails the test instead of stalling it
  watchdog.start()
  try:
    line = proc.stdout.readline().strip()
    prefix = f"hhh: serving {bundle_path} on http://127.0.0.1:"
    assert line.startswith(prefix), (line, proc.stderr.read() if proc.poll() is not None else "")
    url = line[len(prefix) - len("http://127.0.0.1:"):]
    status, body = _request(url, "/score", {"pairs": [{"context": "a", "response": "b"}]})
    assert status == 200 and len(body["raw"]) == 1
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    assert proc.stdout.read() == ""  # one line on stdout, nothing per request
  finally:
    watchdog.cancel()
    if proc.poll() is None:
      proc.kill()
      proc.wait()


# A server in its own process under a low descriptor limit, with a model that needs no JAX. With `hog` the
# process then opens files of its own until only that many descriptors are left, so accept() itself fails.
_FD_SERVER = """
import os, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
import numpy as np
from hhh.reward import server

class Model:
  info = {"objective": "ranked", "normalization": {"mean": 0.0, "std": 1.0}}
  max_len, mean, std, truncated = 64, 0.0, 1.0, 0

  def score(self, contexts, responses, normalize=False):
    return np.zeros(len(contexts), np.float32)

srv, url = server.make_server(Model(), read_timeout_s=120.0, keep_alive_s=120.0)
hog = []
if len(sys.argv) > 1:
  try:
    while True:
      hog.append(os.open("/dev/null", os.O_RDONLY))
  except OSError:
    for fd in hog[-int(sys.argv[1]):]:
      os.close(fd)
print(url, srv.connections.max, flush=True)
try:
  srv.serve_forever()
except KeyboardInterrupt:  # the test's SIGINT, which uvicorn re-raises after its graceful stop
  pass
"""


def _fd_starved_server(*args):
  proc = subprocess.Popen([sys.executable, "-c", _FD_SERVER, *args], env=hhh_env(), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  url, cap = proc.stdout.readline().split()
  return proc, url, int(cap)


def _idle_sockets(url, n):
  host, port = url.removeprefix("http://").split(":")
  socks = []
  for _ in range(n):
    s = socket.socket()
    s.settimeout(TIMEOUT)
    s.connect((host, int(port)))   # the kernel's backlog completes the handshake whether or not it is accepted
    socks.append(s)
  return socks


def _stop_proc(proc) -> str:
  proc.send_signal(signal.SIGINT)
  try:
    proc.wait(30)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()
  return proc.stderr.read()


@pytest.mark.parametrize("hog", [None, "8"], ids=["capped", "emfile"])
def test_health_answers_with_idle_sockets_past_the_fd_limit(hog):
  """`ulimit -n 128` and 200 idle connections (which would hold their descriptors for the 120 s read
  timeout): /health still answers, and the pressure is logged once, not per connection."""
  proc, url, cap = _fd_starved_server(*([hog] if hog else []))
  socks = []
  t0 = time.monotonic()
  try:
    assert 1 <= cap <= 128 - server_lib.FD_RESERVE
    socks = _idle_sockets(url, 200)
    time.sleep(0.5)
    for _ in range(3):
      t1 = time.monotonic()
      status, body = _request(url, "/health")
      assert status == 200 and body["status"] == "ok"
      assert time.monotonic() - t1 < 10
  finally:
    for s in socks:
      s.close()
    stderr = _stop_proc(proc)
  bursts = 1 + (time.monotonic() - t0) / server_lib.LOG_EVERY_S   # one line per LOG_EVERY_S at most
  lines = [line for line in stderr.splitlines() if line.startswith("hhh serve: ")]
  assert "Traceback" not in stderr, stderr[-3000:]
  assert 1 <= len(lines) <= bursts, stderr[-3000:]
  if hog is None:
    # The cap is below the limit: accept() never fails; the oldest idle connections make room.
    assert all(line.startswith(f"hhh serve: {cap} connections open, at the cap of {cap} (file descriptor "
                               "limit 128): ") for line in lines), lines
  else:
    # 8 descriptors were left: accept() runs out far below the cap, and that is logged.
    assert all(line.startswith("hhh serve: accept() failed: Too many open files (") for line in lines), lines
  # Whether the first burst finds idle connections depends on how many accept() calls asyncio makes before
  # their connection_made runs (a loaded machine interleaves them): either relief is right, each said in full.
  assert re.search(r": (none idle to close, accepting again in 1 s|closed the \d+ oldest idle)"
                   r"( \(\d+ times since the last such line\))?$", lines[0]), lines[0]
