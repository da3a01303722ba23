"""rerank-batch throughput: the local engine against Ray with 1 and 2 actors, on one generated file.

    python bench/batch_throughput.py                        # tiny random model (hidden 64, 2 layers)
    python bench/batch_throughput.py --hidden 256 --layers 4
    python bench/batch_throughput.py --part io --rows 20000   # input checking and chunk reading only

Rows are SciFact queries, each with ``--docs`` SciFact abstracts cut to ``--words`` words (about
1.3 tokens a word), scored by a random checkpoint in the official layout (float32, CPU). Every
engine runs the same file with ``--keep-parts``; the steady rate is taken from the commit times of
the parts, after each worker's first part, so it leaves out model loading and Ray start-up
(reported separately as the wall time of the whole run). Ray is started once, before the runs.
The 1-minute load average after each run is printed because the machine may be shared.

``--part io`` writes the rows once as JSON lines and as Parquet (row groups of 2000 rows) and, in a
fresh process per file and step, times the checking pass and the reading of every chunk, with the
process's peak memory (RSS): it stays flat as the file grows, since nothing holds the whole file.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

SCIFACT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scifact"


def _read(name: str, n: int) -> list[dict]:
    rows = []
    with gzip.open(SCIFACT / name, "rt") as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


def write_input(path: Path, rows: int, docs: int, words: int) -> None:
    """``rows`` SciFact queries, each with the next ``docs`` abstracts cut to ``words`` words."""
    queries = _read("queries.jsonl.gz", rows)
    corpus = _read("corpus.jsonl.gz", rows * docs)
    with open(path, "w") as f:
        for i, q in enumerate(queries):
            picked = corpus[i * docs:(i + 1) * docs]
            f.write(json.dumps({
                "query_id": q["_id"], "query": q["text"], "doc_ids": [d["_id"] for d in picked],
                "documents": [" ".join(f"{d['title']} {d['text']}".split()[:words]) for d in picked],
            }) + "\n")


def steady_rate(parts_dir: Path, workers: int) -> float:
    """Rows per second between the ``workers``-th part commit and the last one."""
    parts = sorted((p.stat().st_mtime, p) for p in parts_dir.glob("part-*.parquet"))
    import pyarrow.parquet as pq

    rows = [pq.ParquetFile(p).metadata.num_rows for _, p in parts]
    first = workers - 1
    elapsed = parts[-1][0] - parts[first][0]
    return sum(rows[first + 1:]) / elapsed if elapsed > 0 else float("nan")


IO_STEP = """
import resource, sys, time
from lbnl.batch.source import ChunkReader, scan_input
path, chunk_rows, step = sys.argv[1], int(sys.argv[2]), sys.argv[3]
start = time.perf_counter()
plan = scan_input(path, chunk_rows, progress=False)
if step == "read":
    start = time.perf_counter()
    reader = ChunkReader(plan.path, plan.format, chunk_rows)
    for chunk in plan.chunks:
        reader.read(chunk)
print(plan.rows, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


def bench_io(work: Path, args: argparse.Namespace) -> None:
    """Checking and chunk-reading speed and peak RSS, per format, each step in a fresh process."""
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    unique = work / "unique.jsonl"
    write_input(unique, min(args.rows, 300), args.docs, args.words)
    lines = unique.read_text().splitlines()
    jsonl, parquet = work / "io.jsonl", work / "io.parquet"
    with open(jsonl, "w") as f:
        for i in range(args.rows):
            row = json.loads(lines[i % len(lines)])
            row["query_id"] = f"{row['query_id']}-{i}"
            f.write(json.dumps(row) + "\n")
    with pq.ParquetWriter(parquet, pa.Table.from_pylist([json.loads(lines[0])]).schema) as writer:
        batch: list[dict] = []
        with open(jsonl) as f:
            for line in f:
                batch.append(json.loads(line))
                if len(batch) == 2000:
                    writer.write_table(pa.Table.from_pylist(batch))
                    batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch))
    print(f"# {args.rows} rows x {args.docs} docs x {args.words} words; chunks of {args.batch_size} rows")
    print("| file | size (MB) | step | rows/s | peak RSS (MB) |")
    print("| --- | --- | --- | --- | --- |")
    for path in (jsonl, parquet):
        for step in ("check", "read"):
            out = subprocess.run([sys.executable, "-c", IO_STEP, str(path), str(args.batch_size), step],
                                 capture_output=True, text=True, check=True).stdout.split()
            rows, seconds, rss = int(out[0]), float(out[1]), int(out[2])
            print(f"| {path.suffix[1:]} | {path.stat().st_size / 1e6:.0f} | {step} | {rows / seconds:.0f} | {rss} |",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--words", type=int, default=75, help="words per document (about 100 tokens)")
    parser.add_argument("--batch-size", type=int, default=4, help="rows per chunk")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--engines", default="local,local1,ray1,ray2,ray1x2",
                        help="local (torch's default threads), localT (T threads), rayN (N actors of 1 CPU), "
                             "rayNxC (N actors of C CPUs)")
    parser.add_argument("--part", choices=("engines", "io"), default="engines")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lbnl-batch-bench-"))
    try:
        (bench_io if args.part == "io" else bench_engines)(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_engines(work: Path, args: argparse.Namespace) -> None:
    """Steady rows/s and whole-run time of each engine on one file."""
    import ray
    import torch

    from lbnl.batch.job import BatchSettings, run_batch
    from lbnl.testing.checkpoints import build_random_checkpoint

    heads = max(4, args.hidden // 64)
    model = build_random_checkpoint(
        work / "model", hidden_size=args.hidden, intermediate_size=args.hidden * 2, num_hidden_layers=args.layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), head_dim=args.hidden // heads)
    source = work / "in.jsonl"
    write_input(source, args.rows, args.docs, args.words)
    settings = BatchSettings(model=str(model), dtype="float32", device="cpu", batch_size=args.batch_size)
    print(f"# {args.rows} rows x {args.docs} docs x {args.words} words, batch {args.batch_size}, "
          f"model hidden {args.hidden} / {args.layers} layers, torch {torch.__version__}, ray {ray.__version__}, "
          f"{os.cpu_count()} CPUs")
    default_threads = torch.get_num_threads()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING")
    print("| engine | model copies x threads | steady rows/s | whole run (s) | load average after |")
    print("| --- | --- | --- | --- | --- |")
    try:
        for name in args.engines.split(","):
            out = work / f"{name}.parquet"
            if name.startswith("local"):
                torch.set_num_threads(int(name.removeprefix("local") or default_threads))
                kwargs, workers, threads = {"engine": "local"}, 1, torch.get_num_threads()
            else:
                actors, _, cpus = name.removeprefix("ray").partition("x")
                workers, threads = int(actors), int(cpus or 1)
                kwargs = {"engine": "ray", "num_actors": workers, "cpus_per_actor": float(threads)}
            start = time.perf_counter()
            run_batch(source, out, settings, keep_parts=True, progress=False, **kwargs)
            wall = time.perf_counter() - start
            rate = steady_rate(out.with_name(out.name + ".parts"), workers)
            load = os.getloadavg()[0]
            print(f"| {name} | {workers} x {threads} | {rate:.2f} | {wall:.1f} | {load:.1f} |", flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
