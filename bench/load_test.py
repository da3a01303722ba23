"""Bounded load test of ``lbnl serve`` on loopback: latency and throughput at several client counts.

Starts ``lbnl serve`` as a child process (a tiny random checkpoint unless ``--model`` is given),
then for each concurrency level sends a fixed number of rerank requests from that many
concurrent clients (stopping early after ``--max-seconds``), and records p50/p99 latency,
requests/s and documents/s. Queries and documents are SciFact's (read in place from
``shared/data/scifact``), so requests have realistic lengths.

    python bench/load_test.py                       # tiny random model, writes runs/load_test.md (copy the table into docs/results.md)
    python bench/load_test.py --model path/to/ckpt --requests 32 --compare-unbatched
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from tqdm.auto import tqdm

from lbnl.testing.server import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"


def load_texts(data: Path, n_docs: int, n_queries: int, doc_words: int, seed: int) -> tuple[list[str], list[str]]:
    """SciFact queries and passages (title + the abstract's first ``doc_words`` words), a fixed random sample."""
    with gzip.open(data / "corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        corpus = [f"{row['title']}\n{' '.join(row['text'].split()[:doc_words])}" for row in map(json.loads, f)]
    with gzip.open(data / "queries.jsonl.gz", "rt", encoding="utf-8") as f:
        queries = [row["text"] for row in map(json.loads, f)]
    rng = random.Random(seed)
    return rng.sample(queries, n_queries), rng.sample(corpus, n_docs)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def run_level(url: str, bodies: list[dict], concurrency: int, max_seconds: float) -> dict:
    """Send ``bodies`` from ``concurrency`` clients; stop issuing new requests after ``max_seconds``."""
    load = os.getloadavg()[0]
    latencies: list[float] = []
    errors: dict[int, int] = {}
    tokens = 0
    next_index = 0
    start = time.perf_counter()
    bar = tqdm(total=len(bodies), desc=f"{concurrency:>2} clients", unit="req", leave=False)

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal next_index, tokens
        while next_index < len(bodies) and time.perf_counter() - start < max_seconds:
            body = bodies[next_index]
            next_index += 1
            t0 = time.perf_counter()
            r = await http.post(f"{url}/v1/rerank", json=body)
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
                tokens += r.json()["usage"]["total_tokens"]
            else:
                errors[r.status_code] = errors.get(r.status_code, 0) + 1
            bar.update()

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    bar.close()
    done = len(latencies)
    docs = sum(len(b["documents"]) for b in bodies[:done])
    return {"concurrency": concurrency, "requests": done, "errors": errors, "seconds": wall,
            "p50_ms": 1000 * percentile(latencies, 50), "p99_ms": 1000 * percentile(latencies, 99),
            "rps": done / wall, "docs_per_s": docs / wall, "tokens_per_request": tokens / max(1, done),
            "load": load}


def batch_count(url: str) -> tuple[float, float]:
    """(batches, requests in batches) so far, from the server's Prometheus metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    values = {}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in family.samples:
            if s.name in ("lbnl_batch_requests_count", "lbnl_batch_requests_sum"):
                values[s.name] = s.value
    return values.get("lbnl_batch_requests_count", 0.0), values.get("lbnl_batch_requests_sum", 0.0)


def measure(label: str, server_args: list[str], bodies_per_level: list[list[dict]], levels: list[int],
            max_seconds: float, log_dir: Path) -> list[dict]:
    rows = []
    with ServerProcess(server_args, log_dir / f"server-{label}.log") as server:
        for _ in range(3):
            httpx.post(f"{server.url}/v1/rerank", json=bodies_per_level[0][0], timeout=600)
        for level, bodies in zip(levels, bodies_per_level):
            before = batch_count(server.url)
            row = asyncio.run(run_level(server.url, bodies, level, max_seconds))
            after = batch_count(server.url)
            row["requests_per_batch"] = (after[1] - before[1]) / max(1.0, after[0] - before[0])
            row["setup"] = label
            rows.append(row)
            print(f"{label:>10}  {level:>2} clients: p50 {row['p50_ms']:.0f} ms  p99 {row['p99_ms']:.0f} ms  "
                  f"{row['rps']:.2f} req/s  {row['docs_per_s']:.0f} docs/s  "
                  f"{row['requests_per_batch']:.1f} req/batch  errors {row['errors'] or 0}", flush=True)
    return rows


def write_markdown(path: Path, rows: list[dict], args: argparse.Namespace, model_note: str) -> None:
    import torch

    command = "python bench/load_test.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        "# `lbnl serve` load test",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Model: {model_note}. Each request: one SciFact query and {args.docs} SciFact passages "
        f"(title + first {args.doc_words} words of the abstract; {rows[0]['tokens_per_request']:.0f} query + "
        "document tokens per request on average). "
        f"{args.requests} requests per concurrency level (capped at {args.max_seconds:g} s), after 3 warm-up "
        "requests; clients and server on the same machine over loopback "
        f"({os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        "float32), so the clients take some of the CPU too. The last column is the machine's 1-minute load "
        "average when the level started: above the core count, other jobs were competing for the CPU and "
        "the figures are pessimistic.",
        "",
        "| setup | clients | requests | p50 latency (ms) | p99 latency (ms) | requests/s | documents/s "
        "| requests per batch | errors | load avg |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in rows:
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "0"
        lines.append(f"| {r['setup']} | {r['concurrency']} | {r['requests']} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} "
                     f"| {r['rps']:.2f} | {r['docs_per_s']:.0f} | {r['requests_per_batch']:.1f} | {errors} "
                     f"| {r['load']:.1f} |")
    lines += [
        "",
        "*batched*: the server defaults (`--batch-wait-ms 5 --max-batch-tokens 16384`). "
        + ("*unbatched*: `--max-batch-tokens 1`, one request per batch and one prompt per forward. "
           if any(r["setup"] == "unbatched" for r in rows) else "")
        + "Requests per batch is measured from the server's `lbnl_batch_requests` histogram.",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="checkpoint to serve (default: a tiny random model built on the spot)")
    p.add_argument("--requests", type=int, default=48, help="requests per concurrency level (default 48)")
    p.add_argument("--docs", type=int, default=20, help="documents per request (default 20)")
    p.add_argument("--doc-words", type=int, default=80,
                   help="words kept of each abstract, like a RAG passage (default 80)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="client counts (default 1 4 16)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="stop a level after this long (default 120)")
    p.add_argument("--compare-unbatched", action="store_true", help="also measure with batching off")
    p.add_argument("--data", type=Path, default=SCIFACT, help="BEIR-layout SciFact directory")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "load_test.md")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            from lbnl.testing.checkpoints import TINY_QWEN3, build_random_checkpoint

            model = str(build_random_checkpoint(Path(tmp) / "tiny"))
            model_note = (f"tiny random Qwen3 LBNL checkpoint ({TINY_QWEN3['num_hidden_layers']} layers, "
                          f"hidden {TINY_QWEN3['hidden_size']}, real Qwen3 tokenizer): it measures the server, "
                          "not a real model's compute")
        else:
            model, model_note = args.model, f"`{args.model}`"
        levels = args.concurrency
        queries, docs = load_texts(args.data, 400, len(levels) * args.requests, args.doc_words, args.seed)
        rng = random.Random(args.seed)
        bodies = [{"model": "lbnl", "query": q, "documents": rng.sample(docs, args.docs), "top_n": 5} for q in queries]
        per_level = [bodies[i * args.requests:(i + 1) * args.requests] for i in range(len(levels))]
        base = ["--model", model, "--no-access-log", "--max-queue", str(max(64, 2 * max(levels)))]
        setups = [("batched", base)]
        if args.compare_unbatched:
            setups.append(("unbatched", [*base, "--max-batch-tokens", "1"]))
        rows = [row for label, server_args in setups
                for row in measure(label, server_args, per_level, levels, args.max_seconds, Path(tmp))]
    write_markdown(args.out, rows, args, model_note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
