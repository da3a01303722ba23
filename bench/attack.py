"""Attack benchmark of ``lbnl serve`` on loopback (issue #18): do normal clients keep their latency?

Starts ``lbnl serve`` (a tiny random checkpoint unless ``--model`` is given) on 127.0.0.1, then
runs three phases of ``--seconds`` each, 8 normal clients sending SciFact-sized rerank requests
(a query and 20 passages) back to back in all of them:

1. ``alone``: only the normal clients;
2. ``15 MiB documents``: plus one attacker (its own process) posting a 15 MiB document of digits
   back to back (the request of issue #18 row 1);
3. ``1,000 idle sockets``: plus 1,000 connections that never send a byte, reopened as soon as the
   server closes them (row 2);
4. optionally (``--phases ...,slowloris``) ``slowloris``: plus 500 connections that each send a
   request line and then one header line a second, never finishing the head (reopened when closed).

It reports p50/p99 latency and status codes of the normal clients per phase, the attacker's own
answers, and the server's RSS before and after. Everything is bounded: loopback only, fixed
durations, at most ``--idle`` sockets, and the server is stopped at the end.

    taskset -c 0 python bench/attack.py                 # writes runs/attack.md and runs/attack.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import platform
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from lbnl.testing.server import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = Path(os.environ.get("LBNL_SCIFACT", "/nonexistent"))  # real text when set, else synthetic
HOST = "127.0.0.1"


def normal_bodies(n: int, seed: int = 0) -> list[dict]:
    """Rerank requests of SciFact sizes: a real query and 20 passages of up to 60 words."""
    rng = random.Random(seed)
    if (SCIFACT / "corpus.jsonl.gz").exists():
        with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for _, line in zip(range(3000), f)]
            corpus = [f"{r['title']}\n{' '.join(r['text'].split()[:60])}" for r in rows]
        with gzip.open(SCIFACT / "queries.jsonl.gz", "rt", encoding="utf-8") as f:
            queries = [r["text"] for r in map(json.loads, f)]
    else:
        words = "tea coffee leaf brain heart sport market rain river stone cell gene protein".split()
        corpus = [" ".join(rng.choice(words) for _ in range(100)) for _ in range(500)]
        queries = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(100)]
    return [{"query": rng.choice(queries), "documents": rng.sample(corpus, 20), "return_documents": False}
            for _ in range(n)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def normal_clients(url: str, bodies: list[dict], clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` threads sending requests back to back for ``seconds``; latency in ms and statuses."""
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run(k: int) -> None:
        with httpx.Client(timeout=120) as http:
            i = k
            while time.monotonic() < stop:
                start = time.perf_counter()
                try:
                    code = str(http.post(url + "/v1/rerank", json=bodies[i % len(bodies)]).status_code)
                except httpx.HTTPError as exc:
                    code = type(exc).__name__
                elapsed = (time.perf_counter() - start) * 1000
                with lock:
                    statuses[code] = statuses.get(code, 0) + 1
                    if code == "200":
                        latencies.append(elapsed)
                i += clients

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"requests": sum(statuses.values()), "statuses": statuses, "p50_ms": pct(latencies, 50),
            "p99_ms": pct(latencies, 99), "max_ms": max(latencies, default=float("nan"))}


def attacker(url: str, mib: int, seconds: float, out: Any) -> None:
    """Post one document of ``mib`` MiB of digits, back to back, for ``seconds`` (runs in its own process)."""
    body = json.dumps({"query": "numbers", "documents": ["1234567890" * (mib * 2**20 // 10)]}).encode()
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    stop = time.monotonic() + seconds
    with httpx.Client(timeout=300) as http:
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                r = http.post(url + "/v1/rerank", content=body, headers={"Content-Type": "application/json"})
                code = str(r.status_code)
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            latencies.append((time.perf_counter() - start) * 1000)
            statuses[code] = statuses.get(code, 0) + 1
    out.put({"requests": len(latencies), "statuses": statuses, "body_bytes": len(body),
             "p50_ms": pct(latencies, 50), "max_ms": max(latencies, default=float("nan"))})


class IdleSockets:
    """``count`` loopback connections that send nothing; closed ones are reopened every 0.2 s.

    With ``drip``, each connection instead starts a request head and sends one more header line
    every ``drip`` seconds without ever finishing it (a slowloris).
    """

    def __init__(self, host: str, port: int, count: int, drip: float | None = None):
        self.address = (host, port)
        self.count = count
        self.drip = drip
        self._last_drip = 0.0
        self.sockets: list[socket.socket] = []
        self.opened = 0
        self.closed_by_server = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep, daemon=True)

    def _open(self) -> None:
        while len(self.sockets) < self.count and not self._stop.is_set():
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(self.address)
            self.sockets.append(s)
            self.opened += 1
            if self.drip is not None:
                self._send(s, b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\n")

    @staticmethod
    def _send(s: socket.socket, data: bytes) -> None:
        try:
            s.send(data)
        except OSError:
            pass

    def _keep(self) -> None:
        self._open()
        while not self._stop.wait(0.2):
            alive = []
            for s in self.sockets:
                try:
                    data = s.recv(1)
                    gone = data == b""
                except BlockingIOError:
                    gone = False
                except OSError:
                    gone = True
                if gone:
                    s.close()
                    self.closed_by_server += 1
                else:
                    alive.append(s)
            self.sockets = alive
            self._open()
            if self.drip is not None and time.monotonic() - self._last_drip >= self.drip:
                self._last_drip = time.monotonic()
                for s in self.sockets:
                    self._send(s, b"X-Slow: 1\r\n")

    def __enter__(self) -> "IdleSockets":
        self._thread.start()
        deadline = time.monotonic() + 10
        while len(self.sockets) < self.count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        for s in self.sockets:
            s.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint to serve (default: a tiny random Qwen3 checkpoint)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each phase (default 20)")
    p.add_argument("--clients", type=int, default=8, help="normal clients (default 8)")
    p.add_argument("--attack-mib", type=int, default=15, help="size of the attacker's document in MiB (default 15)")
    p.add_argument("--idle", type=int, default=1000, help="idle sockets in phase 3 (default 1000, at most 5000)")
    p.add_argument("--out", default=str(ROOT / "runs" / "attack"), help="output path without extension")
    p.add_argument("--server-arg", action="append", default=[], help="extra lbnl serve argument (repeatable)")
    p.add_argument("--slowloris", type=int, default=500,
                   help="connections dripping a request head in the slowloris phase (default 500, at most 5000)")
    p.add_argument("--phases", default="alone,attack,idle",
                   help="comma-separated subset of alone,attack,idle,slowloris to run (default: the first three)")
    args = p.parse_args()
    if not 1 <= args.idle <= 5000 or not 1 <= args.slowloris <= 5000 or not 0 < args.seconds <= 300:
        p.error("--idle and --slowloris must be in 1..5000 and --seconds in (0, 300]")

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from lbnl.testing.checkpoints import build_random_checkpoint

            model = str(build_random_checkpoint(Path(tmp) / "tiny"))
        server_args = ["--model", model, "--device", "cpu", "--host", HOST, "--no-access-log",
                       *args.server_arg]
        bodies = normal_bodies(256)
        rows: list[dict[str, Any]] = []
        server = ServerProcess(server_args, Path(tmp) / "server.log")
        with server:
            assert server.proc is not None and server.url.startswith(f"http://{HOST}:")
            pid = server.proc.pid
            port = int(server.url.rsplit(":", 1)[1])
            normal_clients(server.url, bodies, args.clients, 3.0)  # warm up
            rss_start = rss_mb(pid)

            def phase(name: str, run: Any) -> None:
                before = rss_mb(pid)
                row = {"phase": name, **run()}
                row["rss_before_mb"], row["rss_after_mb"] = before, rss_mb(pid)
                rows.append(row)
                print(json.dumps(row), flush=True)

            phases = set(args.phases.split(","))
            if "alone" in phases:
                phase("alone", lambda: normal_clients(server.url, bodies, args.clients, args.seconds))

            def with_attacker() -> dict[str, Any]:
                queue: Any = mp.get_context("spawn").Queue()
                proc = mp.get_context("spawn").Process(target=attacker,
                                                       args=(server.url, args.attack_mib, args.seconds, queue))
                proc.start()
                time.sleep(1.0)  # the attacker builds its body first
                result = normal_clients(server.url, bodies, args.clients, args.seconds - 1.0)
                attack = queue.get(timeout=args.seconds + 600)
                proc.join(60)
                return {**result, "attacker": attack}

            if "attack" in phases:
                phase(f"{args.attack_mib} MiB documents", with_attacker)

            def with_idle() -> dict[str, Any]:
                with IdleSockets(HOST, port, args.idle) as idle:
                    result = normal_clients(server.url, bodies, args.clients, args.seconds)
                    return {**result, "idle": {"open_at_end": len(idle.sockets), "opened": idle.opened,
                                               "closed_by_server": idle.closed_by_server}}

            if "idle" in phases:
                phase(f"{args.idle:,} idle sockets", with_idle)

            def with_slowloris() -> dict[str, Any]:
                with IdleSockets(HOST, port, args.slowloris, drip=1.0) as slow:
                    result = normal_clients(server.url, bodies, args.clients, args.seconds)
                    return {**result, "idle": {"open_at_end": len(slow.sockets), "opened": slow.opened,
                                               "closed_by_server": slow.closed_by_server}}

            if "slowloris" in phases:
                phase(f"{args.slowloris:,} slowloris sockets (a header line a second)", with_slowloris)
            rss_end = rss_mb(pid)
            log = server.log()
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((line.split(":", 1)[1].strip() for line in cpu.splitlines()
                       if line.startswith("Model name")), "?")
    report = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "cpu": model_name,
              "python": platform.python_version(), "server_args": server_args[2:], "rss_start_mb": rss_start,
              "rss_end_mb": rss_end, "phases": rows, "server_tracebacks": log.count("Traceback")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = ["| phase | requests | statuses | p50 ms | p99 ms | max ms | server RSS before → after (MB) |",
             "| --- | ---: | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        lines.append(f"| {r['phase']} | {r['requests']} | {r['statuses']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['max_ms']:.1f} | {r['rss_before_mb']:.0f} → {r['rss_after_mb']:.0f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    for r in rows:
        if "attacker" in r:
            print("attacker:", json.dumps(r["attacker"]))
        if "idle" in r:
            print("idle sockets:", json.dumps(r["idle"]))
    print(f"server RSS {rss_start:.0f} MB after warm-up, {rss_end:.0f} MB at the end; "
          f"tracebacks in the server log: {report['server_tracebacks']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
