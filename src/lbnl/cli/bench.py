"""``lbnl bench``: the command line of the benchmark (the benchmark itself is :mod:`lbnl.bench`).

Only options, defaults and output files live here, so the bench stays usable from Python and
scripts without the CLI; importing :mod:`lbnl.bench` is light, torch loads when the command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..bench import (ALIASES, DEFAULT_PATHS, DEFAULT_TIME_CAP, DEFAULT_WORKLOADS, QUICK_WORKLOADS, SHAPES, PathSpec,
                     bench_checkpoint, find_scifact, format_report, parse_workload, run_bench)
from ..bench.peers import PEERS, expand_peers
from ..errors import InvalidInputError


def _run(args: argparse.Namespace) -> int:
    """Check the arguments, resolve model and data, run the bench, print and write the report."""
    from ..checkpoints import resolve_checkpoint

    if args.repeats <= 0:
        raise InvalidInputError("--repeats must be positive")
    names = [p.strip() for p in args.paths.split(",") if p.strip()]
    if args.peers:
        names += [p for p in expand_peers(args.peers) if p not in names]
    specs = [PathSpec.parse(p) for p in names]
    if len(set(names)) != len(names):
        raise InvalidInputError("a path is listed twice")
    workloads = [parse_workload(w.strip()) for w in args.workload.split(",") if w.strip()]
    if args.model is not None and args.shape is not None:
        raise InvalidInputError("give --model or --shape, not both")
    cache = Path(args.cache_dir or os.environ.get("LBNL_CACHE", Path.home() / ".cache" / "lbnl")) / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    model = resolve_checkpoint(args.model) if args.model else bench_checkpoint(args.shape or "tiny", cache)
    data = None if args.data == "none" else (Path(args.data) if args.data else find_scifact())
    if data is not None and not (data / "corpus.jsonl.gz").exists():
        raise InvalidInputError(f"no corpus.jsonl.gz in {data}")
    command = "lbnl bench " + " ".join(args.argv)

    def save(report: dict[str, Any]) -> None:
        report["command"] = command
        if not args.output:
            return
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        saved = json.loads(json.dumps(report))
        for w in saved["workloads"]:
            for r in w["results"]:
                if not args.keep_scores:
                    r.pop("scores", None)
        out.write_text(json.dumps(saved, indent=2) + "\n")

    report = run_bench(model, specs, workloads, repeats=args.repeats, data=data, time_cap=args.time_cap,
                       threads=args.threads, peer_cache=cache / "peers", on_workload=save)
    save(report)
    print(format_report(report))
    if args.output:
        print(f"wrote {args.output}")
    if args.markdown:
        Path(args.markdown).write_text(format_report(report, markdown=True) + "\n")
        print(f"wrote {args.markdown}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``lbnl bench`` and its options to the ``lbnl`` parser."""
    p = subparsers.add_parser(
        "bench", help="time the official path, lbnl defaults and fast settings side by side",
        description="Measure the machine's matmul peaks, then score the same inputs with every path "
                    "(interleaved repeats) and print documents/s, tokens/s, latency, peak RSS, FLOP/s as a "
                    "fraction of peak, the ratio to the official path and the score drift.")
    p.add_argument("--model", default=None, help="checkpoint directory (default: a random checkpoint of --shape)")
    p.add_argument("--shape", default=None, choices=SHAPES,
                   help="random checkpoint shape built once under the cache (default tiny)")
    p.add_argument("--workload", default=None,
                   help=f"comma-separated QUERIESxDOCUMENTSxTOKENS (a rerank call) or T<N> (one forward of an "
                        f"N-token prompt, e.g. T2048) (default {','.join(DEFAULT_WORKLOADS)})")
    p.add_argument("--paths", default=",".join(DEFAULT_PATHS),
                   help="comma-separated paths: " + ", ".join(ALIASES) + ", "
                        "lbnl:block=N:int8|int8plain|int8dyn:bf16:hf:compile:attn=sdpa|chunked|int8|amx, or a peer: "
                        + ", ".join(f"{f}:{v}" for f, vs in PEERS.items() for v in vs))
    p.add_argument("--peers", default=None,
                   help="add peer runtimes to the paths: comma-separated " + ", ".join(PEERS) + " (every variant), "
                        "FAMILY:VARIANT, or all; a peer whose package is missing is skipped with the reason "
                        "(extras bench-peers, bench-llamacpp)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per path and workload (default 3)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads, and each peer runtime's (default: torch's choice)")
    p.add_argument("--time-cap", type=float, default=DEFAULT_TIME_CAP,
                   help="skip a path whose estimated call time exceeds this many seconds (default 1800)")
    p.add_argument("--data", default=None, help="SciFact directory for real text (default: $LBNL_SCIFACT; "
                   "'none' or unset: synthetic text)")
    p.add_argument("--quick", action="store_true", help=f"small workloads ({','.join(QUICK_WORKLOADS)}), 1 repeat")
    p.add_argument("--output", default=None, help="write the full report as JSON")
    p.add_argument("--keep-scores", action="store_true", help="keep every path's scores in the JSON")
    p.add_argument("--markdown", default=None, help="also write the tables as markdown")
    p.add_argument("--cache-dir", default=None, help="where random checkpoints and peers' exports go, under bench/ "
                   "(default $LBNL_CACHE or ~/.cache/lbnl)")
    p.set_defaults(func=_run_with_defaults)


def _run_with_defaults(args: argparse.Namespace) -> int:
    """Fill in what depends on other options (``--quick``, the default workloads), then run."""
    args.argv = sys.argv[sys.argv.index("bench") + 1:] if "bench" in sys.argv else []
    if args.quick:
        args.workload = args.workload or ",".join(QUICK_WORKLOADS)
        args.repeats = 1
    args.workload = args.workload or ",".join(DEFAULT_WORKLOADS)
    return _run(args)
