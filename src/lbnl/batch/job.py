"""One rerank-batch run: check the input, resume from finished parts, rerank the rest, assemble.

The engines differ only in who reranks the pending chunks: ``local`` does it in this process,
``ray`` hands them to a Ray Data actor pool. Both call :func:`rerank_chunk` on the same chunks
and write the same parts, so their outputs match and either can resume the other's run.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from ..errors import InvalidInputError
from ..defaults import BATCH_ROWS, MAX_DOC_LENGTH, MAX_QUERY_LENGTH
from .parts import OUTPUT_SCHEMA, PartStore, write_part
from .source import Chunk, ChunkReader, InputPlan, scan_input

ENGINES = ("local", "ray")


@dataclass(frozen=True)
class BatchSettings:
    """What decides the scores of a run, plus where the model runs.

    Args:
        model: checkpoint directory or hub id (``None``: lbnl's built-in model).
        dtype: model dtype name (``None``: the checkpoint's, float32 on a CPU without fast bf16).
        device: ``cpu``, ``cuda``... (``None``: CUDA when available).
        batch_size: rows per chunk: one ``rerank_many`` call and one output part.
        top_n: keep the best ``top_n`` documents of each row (``None``: all).
        max_query_length: query tokens kept.
        max_doc_length: tokens kept per document.
        instruction: optional instruction placed in every prompt.
        no_fusion: the model's own scores, even when the checkpoint ships fused with candidate BM25.
        preset: ``default``, ``fast`` or ``fastest`` (:data:`lbnl.reranker.PRESETS`; ``None``: default).
    """

    model: str | None = None
    dtype: str | None = None
    device: str | None = None
    batch_size: int = BATCH_ROWS
    top_n: int | None = None
    max_query_length: int = MAX_QUERY_LENGTH
    max_doc_length: int = MAX_DOC_LENGTH
    instruction: str | None = None
    no_fusion: bool = False
    preset: str | None = None

    def check(self) -> None:
        for name in ("batch_size", "max_query_length", "max_doc_length", "top_n"):
            value = getattr(self, name)
            if value is None and name == "top_n":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidInputError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")

    def scoring(self) -> dict[str, Any]:
        """The settings a resumed run must share (the device only changes rounding, so it may differ)."""
        d = asdict(self)
        d.pop("device")
        return d


@dataclass
class BatchStats:
    """What a run did: ``rows`` in the output, ``resumed_rows`` taken from an earlier run's parts,
    ``seconds`` spent reranking the other rows (Ray: actor start-up included), with ``workers`` model copies."""

    output: Path
    rows: int
    resumed_rows: int
    seconds: float
    engine: str
    workers: int

    @property
    def rows_per_second(self) -> float:
        done = self.rows - self.resumed_rows
        return done / self.seconds if self.seconds > 0 else 0.0


def resolve_model(model: str | None) -> str | None:
    """An existing local checkpoint path made absolute (Ray workers may start elsewhere); a hub id as is."""
    if model is None:
        from ..checkpoints import default_model_path

        return str(default_model_path())
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def load_reranker(settings: BatchSettings, threads: int | None = None) -> Any:
    """The reranker for ``settings``; ``threads`` caps torch's CPU threads (one Ray actor's share)."""
    import torch

    from ..reranker import Reranker

    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    options = {"fusion": None} if settings.no_fusion else {}
    return Reranker.from_pretrained(settings.model, dtype=settings.dtype, device=settings.device,
                                    preset=settings.preset, **options)


def rerank_chunk(reranker: Any, rows: pa.Table, settings: BatchSettings) -> pa.Table:
    """Rerank one chunk with a single ``rerank_many`` call; rows in, ranked ids and scores out."""
    data = rows.to_pydict()
    results = reranker.rerank_many(
        data["query"], data["documents"], top_n=settings.top_n, max_query_length=settings.max_query_length,
        max_doc_length=settings.max_doc_length, instruction=settings.instruction,
    )
    doc_ids = [[ids[r.index] for r in ranked] for ids, ranked in zip(data["doc_ids"], results)]
    scores = [[r.relevance_score for r in ranked] for ranked in results]
    return pa.Table.from_arrays(
        [pa.array(data["query_id"], pa.string()), pa.array(doc_ids, OUTPUT_SCHEMA.field("doc_ids").type),
         pa.array(scores, OUTPUT_SCHEMA.field("scores").type)],
        schema=OUTPUT_SCHEMA,
    )


def process_chunk(reranker: Any, reader: ChunkReader, chunk: Chunk, parts_dir: Path, settings: BatchSettings) -> int:
    """Read, rerank and commit one chunk; returns its row count."""
    write_part(rerank_chunk(reranker, reader.read(chunk), settings), parts_dir, chunk.index)
    return chunk.rows


def run_local(reranker: Any, plan: InputPlan, pending: list[Chunk], parts_dir: Path, settings: BatchSettings,
              on_chunk: Callable[[int], None]) -> int:
    """Rerank the pending chunks in this process, in order; returns the number of model copies (1)."""
    reader = ChunkReader(plan.path, plan.format, plan.chunk_rows)
    for chunk in pending:
        on_chunk(process_chunk(reranker, reader, chunk, parts_dir, settings))
    return 1


def _manifest(plan: InputPlan, settings: BatchSettings) -> dict[str, Any]:
    stat = plan.path.stat()
    return {
        "version": 1,
        "input": str(plan.path), "input_bytes": stat.st_size, "input_mtime_ns": stat.st_mtime_ns,
        "format": plan.format, "rows": plan.rows, "chunks": len(plan.chunks),
        **settings.scoring(),
    }


def run_batch(
    input_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    settings: BatchSettings,
    *,
    engine: str = "local",
    num_actors: int | None = None,
    cpus_per_actor: float = 1.0,
    gpus_per_actor: float | None = None,
    address: str | None = None,
    overwrite: bool = False,
    keep_parts: bool = False,
    progress: bool = True,
) -> BatchStats:
    """Rerank every row of ``input_path`` into the Parquet file ``output_path``, resuming an unfinished run.

    Args:
        input_path: Parquet or JSON lines with ``query_id, query, doc_ids, documents``.
        output_path: the Parquet file to write (``query_id, doc_ids, scores``, ranked).
        settings: model and scoring options; a resumed run must use the same ones.
        engine: ``local`` (this process) or ``ray`` (a Ray Data actor pool).
        num_actors: Ray actors, each holding one model (default: one per GPU, else CPUs / cpus_per_actor).
        cpus_per_actor: CPUs reserved by each Ray actor; also its torch thread count on a CPU.
        gpus_per_actor: GPUs per Ray actor (default: 1 when the cluster has GPUs and device is not cpu).
        address: Ray cluster address (default: ``$RAY_ADDRESS``, else a new local Ray instance).
        overwrite: replace an existing output and discard an unfinished run.
        keep_parts: keep ``OUTPUT.parts/`` after assembling (for inspection).
        progress: tqdm bars on stderr (rows/s and ETA).
    """
    from tqdm.auto import tqdm

    if engine not in ENGINES:
        raise InvalidInputError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    settings.check()
    if engine == "ray":
        from .ray_engine import check_ray_options

        check_ray_options(num_actors, cpus_per_actor, gpus_per_actor)
    output = Path(output_path).expanduser().resolve()
    plan = scan_input(input_path, settings.batch_size, progress=progress)
    if output == plan.path:
        raise InvalidInputError("--output must differ from --input")
    settings = BatchSettings(**{**asdict(settings), "model": resolve_model(settings.model)})
    store = PartStore(output, _manifest(plan, settings), overwrite=overwrite)
    try:
        done = store.done()
        pending = [c for c in plan.chunks if c.index not in done]
        resumed = plan.rows - sum(c.rows for c in pending)
        if resumed and progress:
            print(f"rerank-batch: resuming, {len(plan.chunks) - len(pending)} of {len(plan.chunks)} chunks "
                  f"({resumed} rows) already done", file=sys.stderr)
        reranker = load_reranker(settings) if pending and engine == "local" else None
        start = time.perf_counter()
        workers = 0
        with tqdm(total=plan.rows, initial=resumed, unit="row", desc=f"rerank-batch ({engine})",
                  disable=not progress, smoothing=0.1) as bar:
            if pending and engine == "local":
                workers = run_local(reranker, plan, pending, store.dir, settings, bar.update)
            elif pending:
                from .ray_engine import run_ray

                workers = run_ray(plan, pending, store.dir, settings, bar.update, num_actors=num_actors,
                                  cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor, address=address)
        seconds = time.perf_counter() - start
        store.assemble(len(plan.chunks), plan.rows, keep_parts=keep_parts)
    finally:
        store.close()
    return BatchStats(output, plan.rows, resumed, seconds, engine, workers)
