"""Training groups: (query, 1 positive, K negatives), and the held-out validation queries.

Groups come from BEIR train qrels with hard negatives mined by BM25 (never a judged positive),
from self-supervised title -> text pairs of a corpus, or from a JSONL file of
``{"query", "positive", "negatives"}`` objects. A held-out slice of the training queries is kept
for validation. :mod:`lbnl.train.lists` turns groups into prompts and batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from ..errors import InvalidInputError
from ..jsonl import iter_jsonl
from .config import DataConfig

Hit = tuple[str, float]


class Searcher(Protocol):
    """A first-stage retriever over a fixed corpus (:class:`lbnl.ir.bm25.BM25Index` is one)."""

    def search(self, queries: Sequence[str], k: int) -> list[list[Hit]]: ...


SearcherFactory = Callable[[list[str], list[str]], Searcher]


def default_searcher(doc_ids: list[str], texts: list[str]) -> Searcher:
    """The BM25 first stage of the evaluation (same variant and parameters), used to mine negatives."""
    from ..ir.bm25 import BM25Index

    return BM25Index.build(doc_ids, texts)


@dataclass(frozen=True)
class Group:
    """One training list source: a query, its positive, and a pool of negatives (hardest first)."""

    query_id: str
    query: str
    positive: str
    negatives: tuple[str, ...]
    positives: tuple[str, ...] = ()


@dataclass(frozen=True)
class ValidationQuery:
    """A held-out query, the candidates to rerank (first-stage order) and its relevance judgements."""

    query_id: str
    query: str
    candidates: tuple[str, ...]
    qrels: dict[str, int] = field(hash=False)


@dataclass
class TrainData:
    """Documents by id, training groups, validation queries.

    ``random_negatives`` makes every list draw its negatives from the whole corpus (minus the
    query's positives) instead of from the group's pool.
    """

    docs: dict[str, str]
    groups: list[Group]
    validation: list[ValidationQuery]
    random_negatives: bool = False
    description: str = ""


def _corpus(root: Path) -> dict[str, dict[str, str]]:
    from ..ir.beir import load_corpus

    for name in ("corpus.jsonl", "corpus.jsonl.gz"):
        if (root / name).is_file():
            return load_corpus(root / name)
    raise InvalidInputError(f"{root}: no corpus.jsonl or corpus.jsonl.gz (expected the BEIR layout)")


def _split_heldout(items: list[str], n: int, seed: int) -> tuple[list[str], list[str]]:
    """(train, held out): ``n`` items chosen by a seeded permutation."""
    order = np.random.default_rng([seed, 2]).permutation(len(items))
    if items and n >= len(items):
        raise InvalidInputError(f"data.validation_queries={n} leaves no training query (only {len(items)})")
    held = sorted(items[i] for i in order[:n])
    held_set = set(held)
    return [x for x in items if x not in held_set], held


def _cap(groups: list[Group], max_groups: int | None, seed: int) -> list[Group]:
    if max_groups is None or max_groups >= len(groups):
        return groups
    order = np.random.default_rng([seed, 3]).permutation(len(groups))[:max_groups]
    return [groups[i] for i in sorted(order)]


def beir_data(config: DataConfig, seed: int, searcher_factory: SearcherFactory = default_searcher) -> TrainData:
    """Groups from a BEIR split: one per (query, judged positive), negatives from the BM25 top ``negative_pool``."""
    from ..ir.beir import document_text, load_beir, resolve_beir

    if not config.path:
        raise InvalidInputError("data.path: give a BEIR directory or a BEIR name (scifact)")
    dataset = load_beir(resolve_beir(config.path), config.split)
    docs = {i: document_text(d) for i, d in dataset.corpus.items()}
    queries, qrels = dataset.queries, dataset.qrels
    judged = sorted(q for q, rel in qrels.items()
                    if q in queries and any(s > 0 and d in docs for d, s in rel.items()))
    if not judged:
        raise InvalidInputError(f"{dataset.root}: no query of split {config.split!r} has a positive in the corpus")
    train_ids, val_ids = _split_heldout(judged, config.validation_queries, seed)
    doc_ids = list(docs)
    searcher = searcher_factory(doc_ids, [docs[i] for i in doc_ids])
    positives = {q: tuple(sorted(d for d, s in qrels[q].items() if s > 0 and d in docs)) for q in judged}
    hits: list[list[Hit]] = [[] for _ in train_ids]
    if config.negative_source == "bm25":
        depth = config.negative_pool + max(len(positives[q]) for q in train_ids)
        hits = searcher.search([queries[q] for q in train_ids], depth)
    groups = []
    for q, row in zip(train_ids, hits):
        judged_pos = set(positives[q])
        pool = tuple(d for d, _ in row if d not in judged_pos)[: config.negative_pool]
        groups += [Group(q, queries[q], p, pool, positives[q]) for p in positives[q]]
    val_hits = searcher.search([queries[q] for q in val_ids], config.validation_depth)
    validation = [ValidationQuery(q, queries[q], tuple(d for d, _ in row), dict(qrels[q]))
                  for q, row in zip(val_ids, val_hits)]
    return TrainData(docs, _cap(groups, config.max_groups, seed), validation,
                     random_negatives=config.negative_source == "random",
                     description=f"BEIR {dataset.root.name}/{config.split}: {len(train_ids)} training queries")


def self_supervised_data(config: DataConfig, seed: int,
                         searcher_factory: SearcherFactory = default_searcher) -> TrainData:
    """Title -> body pairs of a BEIR corpus: the title is the query, its own body the positive."""
    root = Path(config.path or "")
    if not root.is_dir():
        raise InvalidInputError(f"data.path: no BEIR directory at {root}")
    corpus = _corpus(root)
    docs = {i: str(d.get("text") or "").strip() for i, d in corpus.items()}
    titled = [i for i, d in corpus.items() if str(d.get("title") or "").strip() and docs[i]]
    if len(titled) < 2:
        raise InvalidInputError(f"{root}: the corpus has too few documents with both a title and a text")
    train_ids, val_ids = _split_heldout(titled, config.validation_queries, seed)
    if config.max_groups is not None and config.max_groups < len(train_ids):
        keep = np.random.default_rng([seed, 3]).permutation(len(train_ids))[: config.max_groups]
        train_ids = [train_ids[i] for i in sorted(keep)]
    titles = {i: str(corpus[i]["title"]).strip() for i in titled}
    doc_ids = list(docs)
    chosen = train_ids + val_ids
    if config.negative_source == "bm25":
        searcher = searcher_factory(doc_ids, [docs[i] for i in doc_ids])
        rows = searcher.search([titles[i] for i in chosen], config.negative_pool + 1)
        pools = {i: tuple(d for d, _ in row if d != i)[: config.negative_pool] for i, row in zip(chosen, rows)}
    else:
        rng = np.random.default_rng([seed, 4])
        pools = {}
        for i in chosen:
            picks = rng.choice(len(doc_ids), size=min(len(doc_ids), config.negatives + 1), replace=False)
            pools[i] = tuple(doc_ids[j] for j in picks if doc_ids[j] != i)[: config.negatives]
    groups = [Group(f"title:{i}", titles[i], i, pools[i], (i,)) for i in train_ids]
    validation = []
    for i in val_ids:
        candidates = [i, *pools[i][: max(1, config.validation_depth - 1)]]
        order = np.random.default_rng([seed, 5, len(validation)]).permutation(len(candidates))
        validation.append(ValidationQuery(f"title:{i}", titles[i], tuple(candidates[j] for j in order), {i: 1}))
    return TrainData(docs, groups, validation, random_negatives=config.negative_source == "random",
                     description=f"self-supervised titles of {root.name}: {len(groups)} pairs")


def jsonl_data(config: DataConfig, seed: int) -> TrainData:
    """Groups from a JSONL file, one ``{"query", "positive", "negatives"[, "query_id"]}`` object per line."""
    path = Path(config.path or "")
    if not path.is_file():
        raise InvalidInputError(f"data.path: no JSONL file at {path}")
    docs: dict[str, str] = {}
    ids: dict[str, str] = {}

    def doc_id(text: str) -> str:
        if text not in ids:
            ids[text] = f"d{len(ids)}"
            docs[ids[text]] = text
        return ids[text]

    raw: list[Group] = []
    for n, item in iter_jsonl(path):
        ok = (isinstance(item, dict) and isinstance(item.get("query"), str) and item["query"].strip()
              and isinstance(item.get("positive"), str)
              and isinstance(item.get("negatives", []), list)
              and all(isinstance(x, str) for x in item.get("negatives", [])))
        if not ok:
            raise InvalidInputError(f"{path}, line {n}: expected {{\"query\": str, \"positive\": str, "
                                    "\"negatives\": [str, ...]}")
        pos = doc_id(item["positive"])
        negs = tuple(dict.fromkeys(d for d in map(doc_id, item.get("negatives", [])) if d != pos))
        raw.append(Group(str(item.get("query_id", f"q{n}")), item["query"], pos, negs, (pos,)))
    if not raw:
        raise InvalidInputError(f"{path} holds no groups")
    keys = [str(i) for i in range(len(raw))]
    train_keys, val_keys = _split_heldout(keys, config.validation_queries, seed)
    groups = [raw[int(k)] for k in train_keys]
    validation = []
    for k in val_keys:
        g = raw[int(k)]
        candidates = [g.positive, *g.negatives[: max(1, config.validation_depth - 1)]]
        order = np.random.default_rng([seed, 5, int(k)]).permutation(len(candidates))
        validation.append(ValidationQuery(g.query_id, g.query, tuple(candidates[j] for j in order), {g.positive: 1}))
    return TrainData(docs, _cap(groups, config.max_groups, seed), validation,
                     description=f"JSONL {path.name}: {len(groups)} groups")


def build_train_data(config: DataConfig, seed: int, searcher_factory: SearcherFactory = default_searcher) -> TrainData:
    """The :class:`TrainData` that ``config.source`` names."""
    if config.source == "beir":
        return beir_data(config, seed, searcher_factory)
    if config.source == "self_supervised":
        return self_supervised_data(config, seed, searcher_factory)
    if config.source == "jsonl":
        return jsonl_data(config, seed)
    raise InvalidInputError(f"data.source: unknown source {config.source!r}")
