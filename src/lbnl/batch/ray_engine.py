"""The ``ray`` engine: pending chunks flow through Ray Data ``map_batches`` into a fixed actor pool.

The dataset holds one small descriptor per pending chunk (its index, rows and byte offset), not
the rows: each actor holds one model and a :class:`~lbnl.batch.source.ChunkReader`, reads its
chunk from the input, reranks it and commits the part itself, and hands back only the row count
for the driver's progress bar. So the driver never holds the data, chunks are spread over the
actors as they free up, and on a cluster the input and the output directory only need to be on
a filesystem every node mounts at the same path.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import InvalidInputError, LBNLError
from .job import BatchSettings, load_reranker, process_chunk
from .source import Chunk, ChunkReader, InputPlan


def check_ray_options(num_actors: int | None, cpus_per_actor: float, gpus_per_actor: float | None) -> None:
    """Reject bad pool options and a missing Ray before any work starts."""
    if num_actors is not None and (isinstance(num_actors, bool) or not isinstance(num_actors, int) or num_actors <= 0):
        raise InvalidInputError(f"num-actors must be a positive integer, got {num_actors!r}")
    if not cpus_per_actor > 0:
        raise InvalidInputError(f"cpus-per-actor must be positive, got {cpus_per_actor!r}")
    if gpus_per_actor is not None and gpus_per_actor < 0:
        raise InvalidInputError(f"gpus-per-actor must be 0 or more, got {gpus_per_actor!r}")
    try:
        import ray.data  # noqa: F401
    except ModuleNotFoundError:
        raise LBNLError("--engine ray needs Ray Data: pip install 'lbnl[ray]' (or use --engine local)") from None


class ChunkWorker:
    """A Ray Data actor: one model copy that reranks whole chunks and writes their parts.

    An lbnl error (bad checkpoint, input changed) comes back as an ``error`` value rather than an
    exception: Ray reports exceptions as its own types and loses the message's cause.
    """

    def __init__(self, path: str, fmt: str, chunk_rows: int, parts_dir: str, settings: dict[str, Any],
                 threads: int | None):
        self.settings = BatchSettings(**settings)
        self.parts_dir = Path(parts_dir)
        self.error = ""
        try:
            self.reader = ChunkReader(path, fmt, chunk_rows)
            self.reranker = load_reranker(self.settings, threads)
        except LBNLError as exc:
            self.error = str(exc)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows, errors = [], []
        for i, s, e, o in zip(batch["index"], batch["start"], batch["stop"], batch["offset"]):
            error, done = self.error, 0
            if not error:
                try:
                    done = process_chunk(self.reranker, self.reader, Chunk(int(i), int(s), int(e), int(o)),
                                         self.parts_dir, self.settings)
                except LBNLError as exc:
                    error = str(exc)
            rows.append(done)
            errors.append(error)
        return {"index": np.asarray(batch["index"]), "rows": np.asarray(rows, dtype=np.int64),
                "error": np.asarray(errors, dtype=object)}


def _pool_size(num_actors: int | None, cpus_per_actor: float, gpus_per_actor: float, resources: dict) -> int:
    if num_actors is not None:
        return num_actors
    if gpus_per_actor > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_actor))
    return max(1, int(resources.get("CPU", 1) // cpus_per_actor))


def run_ray(
    plan: InputPlan,
    pending: list[Chunk],
    parts_dir: Path,
    settings: BatchSettings,
    on_chunk: Callable[[int], None],
    *,
    num_actors: int | None = None,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float | None = None,
    address: str | None = None,
) -> int:
    """Rerank the pending chunks on a Ray actor pool; returns the pool size.

    Joins a running Ray (``address``, ``$RAY_ADDRESS``, or one this process already started),
    else starts a local instance and shuts it down at the end.
    """
    import ray
    import ray.data

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, logging_level=logging.WARNING)
    try:
        resources = ray.cluster_resources()
        if gpus_per_actor is None:
            gpus_per_actor = 1.0 if resources.get("GPU", 0) >= 1 and settings.device != "cpu" else 0.0
        size = _pool_size(num_actors, cpus_per_actor, gpus_per_actor, resources)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        descriptors = [asdict(c) for c in pending]
        dataset = ray.data.from_items(descriptors, override_num_blocks=len(descriptors)).map_batches(
            ChunkWorker,
            fn_constructor_kwargs=dict(
                path=str(plan.path), fmt=plan.format, chunk_rows=plan.chunk_rows, parts_dir=str(parts_dir),
                settings=asdict(settings), threads=None if gpus_per_actor else max(1, int(cpus_per_actor)),
            ),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=size),
            num_cpus=cpus_per_actor,
            num_gpus=gpus_per_actor,
        )
        for row in dataset.iter_rows():
            if row["error"]:
                raise LBNLError(row["error"])
            on_chunk(int(row["rows"]))
        return size
    finally:
        if started:
            ray.shutdown()
