"""Issue #18 (the server rows) through real ``lbnl serve`` processes on loopback.

Row 1 bounded tokenizer work and the token budget; row 2 header/body deadlines, keep-alive and
idle-connection eviction; rows 3, 9, 10, 12 bad input and a NaN model; row 4 auth; row 11 the
batching guarantee. Each test names its row.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from lbnl import Reranker
from lbnl.testing.server import ServerProcess, serving

KEY = "clé-ключ-🔑"
AUTH = {"Authorization": b"Bearer " + KEY.encode()}
MAX_DOC = 64
BUDGET = 2000
HEADER_S = 1.0
BODY_S = 2.0
KEEP_ALIVE_S = 1.0
MAX_CONNECTIONS = 40


@pytest.fixture(scope="module")
def nan_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nan") / "ckpt"
    out.mkdir()
    for f in tiny_checkpoint.iterdir():
        if f.is_file():
            (out / f.name).write_bytes(f.read_bytes())
    weights = load_file(out / "model.safetensors")
    weights["model.norm.weight"] = torch.full_like(weights["model.norm.weight"], float("nan"))
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def servers(tiny_checkpoint: Path, nan_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("hard-logs")
    key_file = logs / "key"
    key_file.write_text(KEY + "\n", encoding="utf-8")
    hard = ServerProcess(["--model", str(tiny_checkpoint), "--device", "cpu", "--max-doc-length", str(MAX_DOC),
                          "--max-request-tokens", str(BUDGET), "--header-timeout", str(HEADER_S),
                          "--body-timeout", str(BODY_S), "--keep-alive-timeout", str(KEEP_ALIVE_S),
                          "--max-connections", str(MAX_CONNECTIONS), "--api-key-file", str(key_file)],
                         logs / "hard.log")
    nan = ServerProcess(["--model", str(nan_checkpoint), "--device", "cpu"], logs / "nan.log")
    nan.env.pop("LBNL_API_KEY", None)
    with serving(hard, nan):
        yield hard, nan


@pytest.fixture(scope="module")
def hard(servers) -> ServerProcess:
    return servers[0]


@pytest.fixture(scope="module")
def nan_server(servers) -> ServerProcess:
    return servers[1]


def post(server: ServerProcess, body: Any, **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("headers", AUTH)
    return httpx.post(server.url + "/v1/rerank", json=body, timeout=60, **kwargs)


def post_raw(server: ServerProcess, content: bytes, headers: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.post(server.url + "/v1/rerank", content=content, timeout=60,
                      headers={"Content-Type": "application/json", **AUTH, **(headers or {})})


def rss_mb(server: ServerProcess) -> float:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def address(server: ServerProcess) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (reading whatever it sends first)."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except socket.timeout:
            continue
        except OSError:
            return True
    return False


# Row 1: bounded tokenizer work, usage from the same pass, a per-request token budget.

def test_row1_a_15_mib_document_costs_its_limit_not_its_size(hard: ServerProcess, tiny_reranker: Reranker) -> None:
    before = rss_mb(hard)
    digits = "1234567890" * (15 * 2**20 // 10)
    docs = [digits, "tea leaves", "green tea " * 100]
    start = time.monotonic()
    r = post(hard, {"query": "tea", "documents": docs, "return_documents": False})
    elapsed = time.monotonic() - start
    assert r.status_code == 200, r.text
    assert elapsed < 20, f"one 15 MiB document took {elapsed:.1f} s (it was minutes when tokenized whole)"
    out = r.json()
    expected = tiny_reranker.rerank("tea", docs, max_doc_length=MAX_DOC)
    assert [x["index"] for x in out["results"]] == [e.index for e in expected]
    assert [x["relevance_score"] for x in out["results"]] == [pytest.approx(e.relevance_score, abs=1e-6)
                                                             for e in expected]
    q, d = tiny_reranker.count_tokens("tea", docs, max_doc_length=MAX_DOC)
    assert out["usage"] == {"total_tokens": q + d, "truncated_documents": 2, "query_truncated": False}
    assert rss_mb(hard) - before < 400, "RSS grew by more than the request's body and batch"


def test_row1_a_run_that_cannot_be_cut_is_refused(hard: ServerProcess) -> None:
    r = post(hard, {"query": "tea", "documents": ["fine", "😀" * 100_000]})
    assert r.status_code == 422, r.text
    assert r.json()["errors"] == [{"field": "documents.1", "message": r.json()["errors"][0]["message"]}]
    assert "word boundary" in r.json()["detail"]


def test_row1_token_budget(hard: ServerProcess) -> None:
    r = post(hard, {"query": "tea", "documents": ["tea " * 200] * 40})
    assert r.status_code == 413, r.text
    assert f"limit of {BUDGET}" in r.json()["detail"] and set(r.json()) == {"detail"}
    assert post(hard, {"query": "tea", "documents": ["tea " * 200] * 20}).status_code == 200


# Row 2: connection hygiene.

def test_row2_idle_sockets_cannot_lock_the_server(hard: ServerProcess) -> None:
    idle = [socket.create_connection(address(hard)) for _ in range(MAX_CONNECTIONS + 20)]
    try:
        time.sleep(0.2)
        for _ in range(5):
            r = post(hard, {"query": "tea", "documents": ["a", "b"]})
            assert r.status_code == 200, r.text
        assert all(closed_within(s, HEADER_S + 5) for s in idle), "idle sockets are closed by the header deadline"
    finally:
        for s in idle:
            s.close()


def test_row2_slow_bodies_cannot_lock_the_server(hard: ServerProcess) -> None:
    head = (b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 100000\r\n\r\n{")
    slow = []
    try:
        for _ in range(MAX_CONNECTIONS + 10):
            s = socket.create_connection(address(hard))
            s.sendall(head)
            slow.append(s)
        time.sleep(0.2)
        r = post(hard, {"query": "tea", "documents": ["a", "b"]})
        assert r.status_code == 200, r.text
    finally:
        for s in slow:
            s.close()


def test_row2_drip_fed_headers_are_cut_off(hard: ServerProcess) -> None:
    with socket.create_connection(address(hard)) as s:
        start = time.monotonic()
        s.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\n")
        closed = False
        while time.monotonic() - start < HEADER_S + 6:
            try:
                s.sendall(b"X")
            except OSError:
                closed = True
                break
            if closed_within(s, 0.3):
                closed = True
                break
        assert closed and time.monotonic() - start < HEADER_S + 5


@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/score"])
def test_row2_drip_fed_body_gets_408(hard: ServerProcess, path: str) -> None:
    with socket.create_connection(address(hard)) as s:
        head = (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Authorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 1000\r\n\r\n")
        s.sendall(head)
        start = time.monotonic()
        answer = b""
        while time.monotonic() - start < BODY_S + 8:
            # Read whatever arrived before dripping the next byte: a byte sent after the server's 408 and
            # close would draw a reset that can discard the unread answer.
            readable, _, _ = select.select([s], [], [], 0.3)
            if readable:
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
                continue
            if answer:
                continue  # the answer has begun: only read from now on
            try:
                s.sendall(b" ")
            except OSError:
                break
        elapsed = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 408"), answer
    body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert f"{BODY_S:g} s" in body["detail"] and elapsed < BODY_S + 6


def test_row2_keep_alive_connections_are_closed_when_idle(hard: ServerProcess) -> None:
    with socket.create_connection(address(hard)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        start = time.monotonic()
        assert closed_within(s, KEEP_ALIVE_S + 5) and time.monotonic() - start >= KEEP_ALIVE_S * 0.5


# Rows 3, 10, 12: bad input gets 4xx with the documented body, never 500.

@pytest.mark.parametrize("content, field, words", [
    (b'{"query": "tea", "documents": ["\\ud800"]}', "documents.0", "lone surrogate"),
    (b'{"query": "tea", "documents": [{"text": "a\\udfffb"}]}', "documents.0", "lone surrogate (U+DFFF)"),
    (b'{"query": "t\\ud800", "documents": ["a"]}', "query", "lone surrogate"),
    (b'{"query": "caf\xe9", "documents": ["a"]}', "body", "not valid UTF-8"),
    (b'{"query": "tea", "documents": ["a"], "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "body", "nested"),
    (b'{"query": "tea", "documents": ["a"], "top_n": ' + b"9" * 5000 + b"}", "body", "digits"),
    (b'{"query": "<|embed_token|>", "documents": ["a"]}', "query", "must not be empty"),
    (b'{"query": " <|embed_<|rerank_token|>token|> ", "documents": ["a"]}', "query", "special-token"),
], ids=["surrogate", "surrogate-object", "surrogate-query", "latin1", "nesting", "huge-int", "embed-token",
        "forged-token"])
def test_rows_3_10_12_bad_bodies_get_422(hard: ServerProcess, content: bytes, field: str, words: str) -> None:
    r = post_raw(hard, content)
    assert r.status_code == 422, r.text
    body = r.json()
    assert [e["field"] for e in body["errors"]] == [field] and words in body["detail"], body
    assert "Traceback" not in hard.log() and "internal error" not in hard.log()


@pytest.mark.parametrize("path", ["/rerank", "/score"])
def test_row10_every_body_route_answers_the_same(hard: ServerProcess, path: str) -> None:
    r = httpx.post(hard.url + path, content=b'{"query": "caf\xe9", "texts": ["a"]}', timeout=60,
                   headers={"Content-Type": "application/json", **AUTH})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body", r.text
    big = b'{"query": "tea", "texts": ["' + b"x" * (17 * 2**20) + b'"]}'

    def chunks():
        for i in range(0, len(big), 2**20):
            yield big[i: i + 2**20]

    r = httpx.post(hard.url + path, content=chunks(), timeout=60, headers={"Content-Type": "application/json", **AUTH})
    assert r.status_code == 413 and "16777216" in r.json()["detail"], r.text


def test_row10_gzip_body_gets_422(hard: ServerProcess) -> None:
    import gzip

    r = post_raw(hard, gzip.compress(b'{"query": "tea", "documents": ["a"]}'), {"Content-Encoding": "gzip"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body" and "gzip" in r.json()["detail"]


def test_row10_openapi_lists_401_and_a_non_blank_query(hard: ServerProcess, servers) -> None:
    schema = httpx.get(hard.url + "/openapi.json").json()
    assert "401" in schema["paths"]["/v1/models"]["get"]["responses"]
    assert "401" in schema["paths"]["/v1/rerank"]["post"]["responses"]
    query = schema["components"]["schemas"]["RerankRequest"]["properties"]["query"]
    assert query["minLength"] == 1 and query["pattern"] == "\\S" and "non-blank" in query["description"]
    open_schema = httpx.get(servers[1].url + "/openapi.json").json()
    assert "401" not in open_schema["paths"]["/v1/rerank"]["post"]["responses"], "no key, no 401"


# Row 9: a model producing NaN.

def test_row9_nan_scores_are_a_500_and_health_says_so(nan_server: ServerProcess) -> None:
    assert httpx.get(nan_server.url + "/health").status_code == 200
    r = httpx.post(nan_server.url + "/v1/rerank", json={"query": "tea", "documents": ["a", "b"]}, timeout=60)
    assert r.status_code == 500 and "non-finite" in r.json()["detail"] and "null" not in r.text
    health = httpx.get(nan_server.url + "/health")
    assert health.status_code == 503
    assert health.json()["status"] == "error" and "non-finite" in health.json()["detail"]


# Row 4: auth.

def test_row4_key_file_newline_and_non_ascii_key(hard: ServerProcess) -> None:
    body = {"query": "tea", "documents": ["a"]}
    assert post(hard, body).status_code == 200, "the key file's trailing newline is not part of the key"
    assert post(hard, body, headers={"Authorization": b"Bearer " + KEY.encode()[:-1]}).status_code == 401
    assert post(hard, body, headers={}).status_code == 401


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lbnl", "serve", "--port", "0", "--model", "no/such-dir", *args],
                          capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "LBNL_API_KEY"} | (env or {}))


def test_row4_an_empty_key_refuses_to_start(tmp_path: Path) -> None:
    empty_file = tmp_path / "empty"
    empty_file.write_text("\n")
    for args, env in [(["--api-key", ""], None), ([], {"LBNL_API_KEY": ""}), ([], {"LBNL_API_KEY": "\n"}),
                      (["--api-key-file", str(empty_file)], None)]:
        done = run_cli(*args, env=env)
        assert done.returncode == 2 and "empty" in done.stderr and "Traceback" not in done.stderr, (args, env, done)
    done = run_cli("--no-auth", "--api-key", "k")
    assert done.returncode == 2 and "contradict" in done.stderr


def test_row4_key_resolution_and_loopback() -> None:
    import argparse

    from lbnl.serve.run import is_loopback
    from lbnl.cli.serve import resolve_api_key

    def ns(**kw: Any) -> argparse.Namespace:
        return argparse.Namespace(**({"api_key": None, "api_key_file": None, "no_auth": False} | kw))

    assert resolve_api_key(ns(), {"LBNL_API_KEY": "k\n"}) == "k"
    assert resolve_api_key(ns(), {"LBNL_API_KEY": "k\r\n"}) == "k"
    assert resolve_api_key(ns(), {}) is None
    assert resolve_api_key(ns(no_auth=True), {"LBNL_API_KEY": ""}) is None
    assert resolve_api_key(ns(api_key="a b"), {}) == "a b"
    assert [is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost", "0.0.0.0", "::", "10.0.0.1")] == \
        [True, True, True, True, False, False, False]


# Row 11: what batching guarantees.

def test_row11_batched_scores_within_1e_6_and_same_ranking(hard: ServerProcess) -> None:
    words = "tea coffee leaf brain heart sport market rain river stone".split()
    requests = [{"query": f"{words[i]} {words[(i + 3) % 10]}",
                 "documents": [" ".join(words[(i * k + j) % 10] for j in range(k % 7 + 1)) for k in range(12)]}
                for i in range(8)]
    alone = [post(hard, body).json()["results"] for body in requests]
    barrier = threading.Barrier(len(requests))
    together: list[Any] = [None] * len(requests)

    def send(i: int) -> None:
        barrier.wait()
        together[i] = post(hard, requests[i]).json()["results"]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for a, b in zip(alone, together):
        scores_a = {x["index"]: x["relevance_score"] for x in a}
        scores_b = {x["index"]: x["relevance_score"] for x in b}
        assert max(abs(scores_a[i] - scores_b[i]) for i in scores_a) <= 1e-6
        # The ranking is the same except between documents whose scores are within the bound.
        for x, y in zip(a, b):
            assert x["index"] == y["index"] or abs(scores_a[x["index"]] - scores_a[y["index"]]) <= 2e-6


def test_row4_warning_beyond_loopback_without_a_key(tiny_reranker: Reranker, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """``serve`` on 0.0.0.0 without a key warns (checked without binding beyond loopback: uvicorn is not run)."""
    import logging

    import uvicorn

    from lbnl.serve import run as run_module
    from lbnl.serve.app import create_app
    from lbnl.serve.settings import ServeSettings

    monkeypatch.setattr(run_module, "_listen", lambda host, port: socket.create_server(("127.0.0.1", 0)))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    monkeypatch.setattr(run_module, "_configure_logging", lambda level: None)
    with caplog.at_level(logging.WARNING, logger="lbnl.serve"):
        run_module.serve(tiny_reranker, ServeSettings(), host="0.0.0.0", port=0)
        run_module.serve(tiny_reranker, ServeSettings(api_key="k"), host="0.0.0.0", port=0)
        run_module.serve(tiny_reranker, ServeSettings(), host="127.0.0.1", port=0)
    warnings = [r.getMessage() for r in caplog.records if "without an API key" in r.getMessage()]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0]
    with pytest.raises(Exception, match="empty"):
        create_app(tiny_reranker, ServeSettings(api_key=""))
