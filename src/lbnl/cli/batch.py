"""The ``lbnl rerank-batch`` command. Light at import: pyarrow, torch and Ray load only when it runs."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..defaults import BATCH_ROWS as DEFAULT_BATCH_SIZE
from .common import add_length_arguments, add_model_arguments


def _run(args: argparse.Namespace) -> int:
    from ..batch.job import BatchSettings, run_batch

    settings = BatchSettings(
        model=args.model, dtype=args.dtype, device=args.device, no_fusion=args.no_fusion, preset=args.preset,
        batch_size=args.batch_size, top_n=args.top_n,
        max_query_length=args.max_query_length, max_doc_length=args.max_doc_length, instruction=args.instruction,
    )
    stats = run_batch(
        args.input, args.output, settings, engine=args.engine, num_actors=args.num_actors,
        cpus_per_actor=args.cpus_per_actor, gpus_per_actor=args.gpus_per_actor, address=args.address,
        overwrite=args.overwrite, keep_parts=args.keep_parts, progress=not args.no_progress,
    )
    resumed = f", {stats.resumed_rows} of them from an earlier run" if stats.resumed_rows else ""
    print(f"rerank-batch: wrote {stats.rows} rows to {stats.output}{resumed}; reranked "
          f"{stats.rows - stats.resumed_rows} rows in {stats.seconds:.1f} s ({stats.rows_per_second:.2f} rows/s, "
          f"engine {stats.engine}, {stats.workers} model cop{'y' if stats.workers == 1 else 'ies'})", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "rerank-batch", help="rerank a Parquet / JSON-lines file of queries and candidates",
        description="Rerank every row (query_id, query, doc_ids, documents) of a Parquet or JSON-lines file "
                    "into a Parquet file of ranked doc_ids and scores. Streams the input, commits results in "
                    "chunks to OUTPUT.parts/, and resumes an interrupted run without redoing finished chunks.",
    )
    add_model_arguments(p)
    p.add_argument("--input", "-i", required=True, help="Parquet (.parquet) or JSON lines (.jsonl) file")
    p.add_argument("--output", "-o", required=True, help="Parquet file to write: query_id, doc_ids, scores (ranked)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: a Ray Data actor pool, local or on a cluster")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"rows per chunk: one rerank call and one committed part (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--top-n", type=int, default=None, help="keep the best N documents per row (default: all)")
    p.add_argument("--instruction", default=None, help="optional instruction placed in every prompt")
    add_length_arguments(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output and discard an unfinished run's parts")
    p.add_argument("--keep-parts", action="store_true", help="keep OUTPUT.parts/ after writing the output")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    ray = p.add_argument_group("ray engine")
    ray.add_argument("--num-actors", type=int, default=None,
                     help="model copies (default: one per GPU, else cluster CPUs / --cpus-per-actor)")
    ray.add_argument("--cpus-per-actor", type=float, default=1.0,
                     help="CPUs each actor reserves; also its torch threads on a CPU (default 1)")
    ray.add_argument("--gpus-per-actor", type=float, default=None,
                     help="GPUs each actor reserves (default: 1 when the cluster has GPUs, else 0)")
    ray.add_argument("--address", default=None,
                     help="Ray cluster to join, e.g. ray://head:10001 or auto (default: $RAY_ADDRESS, "
                          "else a new local Ray instance)")
    p.set_defaults(func=_run, extra="batch", needs=("pyarrow",))
