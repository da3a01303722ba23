"""The evaluation driver: first stage, reranking with resume, fusion, metrics, significance, output files.

Reranked scores are appended per query to a JSON-lines file in the output directory, named by a
hash of everything that changes them (scorer, dataset files, split, top-k, BM25 parameters), so
an interrupted run continues where it stopped and a changed setup never reuses stale scores.
The query sample is not part of that key: growing ``max_queries`` reuses the queries already done.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import InvalidInputError
from ..checkpoints.info import Fusion
from ..fusion import fuse_scores
from ..ir.beir import BeirDataset
from ..ir.bm25 import DEFAULT_TOP_K, BM25Params, Hits, digest, first_stage_hits
from ..ir.fusion import FUSIONS, fuse
from ..ir.metrics import METRICS, PerQuery, mean_metrics, paired_tests, per_query_metrics
from .scorers import Scorer, order_by_scores, scorer_config

FIRST_STAGE = "bm25"


@dataclass
class EvalConfig:
    """What ``run_evaluation`` does; recorded in ``results.json``.

    Args:
        top_k: first-stage hits reranked per query.
        max_queries: evaluate a fixed sample of this many queries (``None``: all).
        seed: seed of that sample and of the randomisation test.
        batch_queries: queries per scorer call (more packs blocks better; results are written per call).
        fusion: fusion rows to add (``"rrf"``, ``"linear"``).
        fusion_weight: the reranker's weight in linear fusion.
        candidate_fusion: model weights of extra rows fusing the reranker with BM25 over each
            query's candidates only (what a checkpoint's fusion setting does, with its transform); ``None``:
            the fusion the model ships with, if any.
        query_ids: evaluate exactly these queries (for example a training run's held-out slice);
            exclusive with ``max_queries``.
        rrf_k: the reciprocal-rank-fusion offset.
        permutations: samples of the paired randomisation test.
        bm25: first-stage parameters.
    """

    top_k: int = DEFAULT_TOP_K
    max_queries: int | None = None
    seed: int = 0
    batch_queries: int = 4
    fusion: tuple[str, ...] = FUSIONS
    fusion_weight: float = 0.5
    candidate_fusion: tuple[float, ...] | None = None
    query_ids: tuple[str, ...] | None = None
    rrf_k: int = 60
    permutations: int = 10_000
    bm25: BM25Params = field(default_factory=BM25Params)

    def check(self) -> None:
        for name in ("top_k", "batch_queries", "rrf_k", "permutations"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidInputError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.max_queries is not None and (isinstance(self.max_queries, bool) or self.max_queries <= 0):
            raise InvalidInputError(f"max-queries must be a positive integer, got {self.max_queries!r}")
        unknown = [f for f in self.fusion if f not in FUSIONS]
        if unknown:
            raise InvalidInputError(f"unknown fusion {unknown[0]!r} (choose from {', '.join(FUSIONS)})")
        if not 0 <= self.fusion_weight <= 1:
            raise InvalidInputError(f"fusion-weight must be in [0, 1], got {self.fusion_weight}")
        if any(not 0 <= w <= 1 for w in self.candidate_fusion or ()):
            raise InvalidInputError(f"candidate-fusion weights must be in [0, 1], got {list(self.candidate_fusion)}")
        if self.query_ids is not None and self.max_queries is not None:
            raise InvalidInputError("give either a query sample size or a list of query ids, not both")
        if self.query_ids is not None and not self.query_ids:
            raise InvalidInputError("the list of query ids is empty")
        self.bm25.check()


def sample_queries(query_ids: Sequence[str], max_queries: int | None, seed: int = 0) -> list[str]:
    """A fixed, seeded sample of ``max_queries`` ids in their original order (all when ``None`` or enough)."""
    ids = list(query_ids)
    if max_queries is None or max_queries >= len(ids):
        return ids
    chosen = set(random.Random(seed).sample(ids, max_queries))
    return [q for q in ids if q in chosen]


class ScoreStore:
    """Reranked scores per query, appended as JSON lines and read back on restart."""

    def __init__(self, path: Path, header: dict[str, Any]):
        self.path = path
        self.done: dict[str, dict[str, Any]] = {}
        if path.is_file():
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(row, dict) and "qid" in row:
                        self.done[row["qid"]] = row
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"config": header}) + "\n", encoding="utf-8")

    def get(self, qid: str, doc_ids: list[str]) -> list[float] | None:
        row = self.done.get(qid)
        return row["scores"] if row is not None and row.get("doc_ids") == doc_ids else None

    def add(self, rows: list[dict[str, Any]]) -> None:
        with open(self.path, "a+", encoding="utf-8") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell():
                handle.seek(handle.tell() - 1)
                if handle.read(1) != "\n":
                    handle.write("\n")
            handle.write("".join(json.dumps(r) + "\n" for r in rows))
            handle.flush()
            os.fsync(handle.fileno())
        self.done.update((r["qid"], r) for r in rows)


def rerank_hits(scorer: Scorer, dataset: BeirDataset, query_ids: Sequence[str], hits: Hits, *,
                batch_queries: int = 4, store: ScoreStore | None = None, progress: bool = True,
                on_batch: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Scorer scores of each query's first-stage candidates (aligned with ``hits[qid]``).

    Queries already in ``store`` are skipped; every scorer call's results are appended to it
    before the next call starts. ``on_batch(queries_done)`` runs after each call.
    """
    from tqdm.auto import tqdm

    scores: dict[str, list[float]] = {}
    todo = []
    for qid in query_ids:
        doc_ids = [d for d, _ in hits[qid]]
        cached = store.get(qid, doc_ids) if store is not None else None
        if cached is not None:
            scores[qid] = cached
        elif not doc_ids:
            scores[qid] = []
        else:
            todo.append(qid)
    total = sum(len(hits[q]) for q in query_ids)
    bar = tqdm(total=total, initial=total - sum(len(hits[q]) for q in todo), unit="doc", desc=f"rerank {scorer.name}",
               disable=not progress, dynamic_ncols=True, smoothing=0.1)
    try:
        for start in range(0, len(todo), batch_queries):
            batch = todo[start:start + batch_queries]
            candidates = [[dataset.document_text(d) for d, _ in hits[q]] for q in batch]
            began = time.perf_counter()
            result = scorer.score([dataset.queries[q] for q in batch], candidates)
            seconds = time.perf_counter() - began
            if len(result) != len(batch) or any(len(s) != len(c) for s, c in zip(result, candidates)):
                raise RuntimeError(f"scorer {scorer.name!r} returned scores not aligned with its candidates")
            docs = sum(len(c) for c in candidates)
            rows = [{"qid": q, "doc_ids": [d for d, _ in hits[q]], "scores": [float(x) for x in s],
                     "seconds": seconds * len(c) / docs} for q, s, c in zip(batch, result, candidates)]
            if store is not None:
                store.add(rows)
            scores.update((r["qid"], r["scores"]) for r in rows)
            bar.update(docs)
            if on_batch is not None:
                on_batch(start + len(batch))
    except KeyboardInterrupt:
        bar.close()
        done = sum(q in scores for q in query_ids)
        if store is not None:
            print(f"interrupted after {done} of {len(query_ids)} queries; the same command resumes from there",
                  file=sys.stderr)
        raise
    bar.close()
    return {q: scores[q] for q in query_ids}


def evaluate_rerank(scorer: Scorer, dataset: BeirDataset, query_ids: Sequence[str], first_stage_hits: Hits,
                    k: int = DEFAULT_TOP_K, *, batch_queries: int = 4, progress: bool = False) -> dict[str, float]:
    """Mean metrics (``ndcg@10``, ``recall@100``, ``mrr@10``, ``map@100``) after reranking the top ``k`` hits.

    For validation during training: nothing is written to disk.

    Args:
        scorer: any :class:`~lbnl.eval.scorers.Scorer`, e.g. ``LBNLScorer(reranker)``.
        dataset: the BEIR split whose qrels judge the queries.
        query_ids: judged queries to evaluate.
        first_stage_hits: query id -> ``(doc_id, score)`` best first, e.g. from :func:`first_stage_hits`.
        k: candidates reranked per query.
        batch_queries: queries per scorer call.
        progress: show a progress bar.
    """
    hits = {q: list(first_stage_hits[q])[:k] for q in query_ids}
    scores = rerank_hits(scorer, dataset, query_ids, hits, batch_queries=batch_queries, progress=progress)
    rankings = {q: [d for d, _ in order_by_scores([d for d, _ in hits[q]], scores[q])] for q in query_ids}
    return mean_metrics(per_query_metrics(dataset.qrels, rankings, query_ids))


@dataclass
class EvalResult:
    """What a run produced: per-system rankings, metrics and tests, plus the files written."""

    config: dict[str, Any]
    query_ids: list[str]
    runs: dict[str, dict[str, list[tuple[str, float]]]]
    per_query: dict[str, PerQuery]
    metrics: dict[str, dict[str, float]]
    tests: dict[str, dict[str, dict[str, float]]]
    timing: dict[str, float]
    kinds: dict[str, str]
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def systems(self) -> list[str]:
        return list(self.runs)

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "query_ids": self.query_ids,
            "systems": [
                {"name": s, "kind": self.kinds[s], "metrics": self.metrics[s], "vs_first_stage": self.tests.get(s, {})}
                for s in self.systems
            ],
            "per_query": self.per_query,
            "timing": self.timing,
        }


def run_evaluation(dataset: BeirDataset, scorer: Scorer | None, config: EvalConfig,
                   output_dir: str | os.PathLike[str] | None = None,
                   cache_dir: str | os.PathLike[str] | None = None, *, progress: bool = True,
                   plot: bool = True, on_batch: Callable[[int], None] | None = None) -> EvalResult:
    """First stage, optional reranking and fusion, metrics and tests; writes results when ``output_dir`` is set.

    Args:
        dataset: the loaded BEIR split.
        scorer: the reranker to evaluate, or ``None`` for the first stage alone.
        config: top-k, query sample, fusion and BM25 settings.
        output_dir: where ``results.json``, TREC runs, the plot and the resumable scores go.
        cache_dir: BM25 cache directory (default ``~/.cache/lbnl/bm25``).
        progress: progress bars.
        plot: write ``ndcg_delta.png`` (when there is a reranker).
        on_batch: called with the number of queries done after each scorer call.
    """
    from . import report

    config.check()
    if config.query_ids is not None:
        known = set(dataset.query_ids)
        missing = [q for q in config.query_ids if q not in known]
        if missing:
            raise InvalidInputError(f"{len(missing)} query ids are not judged queries of the {dataset.split} "
                                    f"split, for example {missing[0]!r}")
        query_ids = list(dict.fromkeys(config.query_ids))
    else:
        query_ids = sample_queries(dataset.query_ids, config.max_queries, config.seed)
    began = time.perf_counter()
    hits = first_stage_hits(dataset, query_ids, k=config.top_k, params=config.bm25, cache_dir=cache_dir,
                            progress=progress)
    first_seconds = time.perf_counter() - began
    runs = {FIRST_STAGE: {q: hits[q] for q in query_ids}}
    kinds = {FIRST_STAGE: "first_stage"}
    record: dict[str, Any] = {
        "dataset": str(dataset.root), "split": dataset.split, "queries_in_split": len(dataset.query_ids),
        "queries_evaluated": len(query_ids), "corpus_documents": len(dataset.corpus),
        "document_text": "title + ' ' + text", **asdict(config), "fusion": list(config.fusion),
    }
    record["bm25"] = {"retriever": "bm25s", **record.pop("bm25")}
    timing: dict[str, float] = {"first_stage_seconds": round(first_seconds, 3)}
    out = Path(output_dir) if output_dir is not None else None
    if scorer is not None:
        described = scorer_config(scorer)
        record["scorer"] = described
        record["max_doc_length"] = described.get("max_doc_length")
        key = digest({"scorer": described, "files": dataset.fingerprint("corpus", "queries"),
                       "split": dataset.split, "top_k": config.top_k, "bm25": asdict(config.bm25)})
        store = ScoreStore(out / f"scores-{key}.jsonl", {"key": key, "scorer": described}) if out else None
        began = time.perf_counter()
        scores = rerank_hits(scorer, dataset, query_ids, runs[FIRST_STAGE], batch_queries=config.batch_queries,
                             store=store, progress=progress, on_batch=on_batch)
        seconds = time.perf_counter() - began
        doc_ids = {q: [d for d, _ in hits[q]] for q in query_ids}
        runs[scorer.name] = {q: order_by_scores(doc_ids[q], scores[q]) for q in query_ids}
        kinds[scorer.name] = "reranked"
        for method in config.fusion:
            label = f"rrf(k={config.rrf_k})" if method == "rrf" else f"linear(w={config.fusion_weight:g})"
            runs[label] = {
                q: order_by_scores(doc_ids[q], fuse(method, [s for _, s in hits[q]], scores[q],
                                                    weight=config.fusion_weight, rrf_k=config.rrf_k))
                for q in query_ids
            }
            kinds[label] = f"fusion:{method}"
        shipped: Fusion | None = getattr(scorer, "shipped_fusion", None)
        transform = shipped.transform if shipped is not None else "minmax"
        fusions = [Fusion(w, transform) for w in config.candidate_fusion] if config.candidate_fusion is not None \
            else ([shipped] if shipped is not None else [])
        for fusion in fusions:
            tag = "" if fusion.transform == "minmax" else f",{fusion.transform}"
            label = f"candidate-bm25(w={fusion.weight:g}{tag})" + (" [shipped]" if fusion == shipped else "")
            runs[label] = {
                q: order_by_scores(doc_ids[q], fuse_scores(
                    fusion, dataset.queries[q], [dataset.document_text(d) for d in doc_ids[q]], scores[q]))
                for q in query_ids
            }
            kinds[label] = f"fusion:candidate-bm25-w{fusion.weight:g}{tag}"
        if store is not None:
            seconds = sum(store.done[q].get("seconds", 0.0) for q in query_ids if q in store.done)
        documents = sum(len(hits[q]) for q in query_ids)
        timing.update(rerank_seconds=round(seconds, 3), documents_reranked=documents,
                      docs_per_second=round(documents / seconds, 3) if seconds else 0.0)
    per_query = {
        name: per_query_metrics(dataset.qrels, {q: [d for d, _ in run[q]] for q in query_ids}, query_ids)
        for name, run in runs.items()
    }
    metrics = {name: mean_metrics(values) for name, values in per_query.items()}
    tests = {
        name: {m: paired_tests([per_query[FIRST_STAGE][q][m] for q in query_ids],
                               [per_query[name][q][m] for q in query_ids], config.permutations, config.seed)
               for m in METRICS}
        for name in runs if name != FIRST_STAGE
    }
    result = EvalResult(record, query_ids, runs, per_query, metrics, tests, timing, kinds)
    if out is not None:
        report.write_outputs(result, out, plot=plot)
    return result
