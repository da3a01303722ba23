"""Score fusion: a reranker's scores blended with BM25's, per query.

Two uses. The evaluation harness fuses reranked scores with the first stage's (corpus BM25) and
reports the rows next to the reranker alone. A model too weak to rank alone (the built-in
lbnl-small) ships with a fusion weight, and :class:`~lbnl.reranker.Reranker` then blends its scores
with BM25 computed over the candidate documents of the request: the only lexical evidence a
rerank call has, since it never sees the corpus.
"""

from __future__ import annotations

import threading
from typing import Any, Sequence

from .errors import InvalidInputError

#: Fusion methods: reciprocal rank fusion and min-max linear interpolation.
FUSIONS = ("rrf", "linear")


def minmax(values: Sequence[float]) -> list[float]:
    """Rescale to [0, 1]; all zeros when every value is equal."""
    low, high = min(values), max(values)
    return [(v - low) / (high - low) if high > low else 0.0 for v in values]


def fuse(method: str, first_stage: Sequence[float], reranked: Sequence[float], *, weight: float = 0.5,
         rrf_k: int = 60) -> list[float]:
    """Combine first-stage and reranker scores of one query's candidates (aligned lists).

    Args:
        method: ``"rrf"`` (reciprocal rank fusion, ``1/(rrf_k + rank)`` summed over both rankings)
            or ``"linear"`` (``weight * minmax(reranked) + (1 - weight) * minmax(first_stage)``).
        first_stage: first-stage scores; for RRF the candidates must be in first-stage order.
        reranked: reranker scores.
        weight: the reranker's weight in linear fusion, in [0, 1].
        rrf_k: the RRF rank offset (60 as in Cormack et al.).
    """
    if len(first_stage) != len(reranked):
        raise ValueError("fusion needs aligned score lists")
    if not reranked:
        return []
    if method == "linear":
        if not 0 <= weight <= 1:
            raise InvalidInputError(f"the fusion weight must be in [0, 1], got {weight}")
        return [weight * r + (1 - weight) * f for f, r in zip(minmax(first_stage), minmax(reranked))]
    if method == "rrf":
        order = sorted(range(len(reranked)), key=lambda i: (-reranked[i], i))
        rerank_rank = {i: r for r, i in enumerate(order, 1)}
        return [1 / (rrf_k + i + 1) + 1 / (rrf_k + rerank_rank[i]) for i in range(len(reranked))]
    raise InvalidInputError(f"unknown fusion {method!r} (choose from {', '.join(FUSIONS)})")


_local = threading.local()


def _stemmer() -> Any:
    """One Snowball stemmer per thread (PyStemmer objects are not thread-safe)."""
    if not hasattr(_local, "stemmer"):
        import Stemmer

        _local.stemmer = Stemmer.Stemmer("english")
    return _local.stemmer


def candidate_bm25(query: str, texts: Sequence[str]) -> list[float]:
    """BM25 of ``query`` against an index of ``texts`` alone (term statistics from the candidates).

    Same variant as lbnl's first stage: Lucene BM25, k1=0.9, b=0.4, English stopwords, Snowball
    stemming. Candidates without any query term score 0.
    """
    import bm25s

    if not texts:
        return []
    stemmer = _stemmer()
    corpus = bm25s.tokenize(list(texts), stopwords="en", stemmer=stemmer, show_progress=False)
    terms = bm25s.tokenize([query], stopwords="en", stemmer=stemmer, return_ids=False, show_progress=False)[0]
    if not terms or not any(corpus.ids):
        return [0.0] * len(texts)
    index = bm25s.BM25(method="lucene", k1=0.9, b=0.4)
    index.index(corpus, show_progress=False)
    return [float(s) for s in index.get_scores(terms)]


def fuse_with_candidate_bm25(query: str, texts: Sequence[str], scores: Sequence[float], weight: float) -> list[float]:
    """``weight * minmax(scores) + (1 - weight) * minmax(candidate_bm25(query, texts))``."""
    return fuse("linear", candidate_bm25(query, texts), scores, weight=weight)


def query_term_coverage(query: str, texts: Sequence[str]) -> list[float]:
    """Fraction of the query's distinct terms that occur in each text, in [0, 1].

    Terms as in lbnl's BM25: English stopwords removed, Snowball-stemmed. Unlike BM25 over a
    request's candidates, a text's value depends on the query and that text only, never on the other
    documents of the request, so it means the same in every request (a lone document included). A
    query without any term gives 0 for every text.
    """
    import bm25s

    if not texts:
        return []
    stemmer = _stemmer()
    tokens = bm25s.tokenize([query, *texts], stopwords="en", stemmer=stemmer, return_ids=False,
                            show_progress=False)
    terms = set(tokens[0])
    if not terms:
        return [0.0] * len(texts)
    return [len(terms & set(doc)) / len(terms) for doc in tokens[1:]]


def fuse_fixed(query: str, texts: Sequence[str], scores: Sequence[float], weight: float) -> list[float]:
    """``weight * score + (1 - weight) * query_term_coverage(query, text)``, per document.

    A fixed transform: no per-request rescaling, so a score means the same whatever the other
    documents of the request are (a lone document's score is not pinned to 0). ``scores`` are the
    model's cosines in [-1, 1]; ``weight`` = 1 gives them unchanged.
    """
    if not 0 <= weight <= 1:
        raise InvalidInputError(f"the fusion weight must be in [0, 1], got {weight}")
    if len(texts) != len(scores):
        raise ValueError("fusion needs one score per text")
    if weight == 1:
        return [float(s) for s in scores]
    cover = query_term_coverage(query, texts)
    return [weight * float(s) + (1 - weight) * c for s, c in zip(scores, cover)]
