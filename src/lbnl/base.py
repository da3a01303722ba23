"""What every lbnl reranker offers, whatever makes its scores: :class:`BaseReranker` (``score``,
``rerank``, the official model's dict-like results, sentence-transformers' ``rank`` / ``predict`` and
FlagEmbedding's ``compute_score``, all on top of one method, ``score_lists``) and the documents it
accepts. :class:`lbnl.reranker.Reranker` (the LBNL model) and :class:`lbnl.fusion.FusedReranker` are
the two kinds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import InvalidInputError

Document = Any
"""A document: a string, a ``{"text": ...}`` / ``{"content": ...}`` mapping, or a framework document object
(LangChain ``page_content``, Haystack ``content``, LlamaIndex ``get_content()``)."""


@dataclass
class RerankResult(Mapping):
    """One ranked document: its input ``index``, ``relevance_score``, the caller's ``document`` (and its
    ``embedding`` when asked). Also reads as the official model's result dict: ``result["relevance_score"]``."""

    index: int
    relevance_score: float
    document: Any
    embedding: np.ndarray | None = field(default=None, repr=False)

    def _keys(self) -> tuple[str, ...]:
        keys = ("document", "relevance_score", "index")
        return keys + ("embedding",) if self.embedding is not None else keys

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __post_init__(self) -> None:
        self.index = int(self.index)
        self.relevance_score = float(self.relevance_score)


@dataclass
class ScoredList:
    """Scores of one query's documents in input order, and their embeddings when asked for."""

    scores: list[float]
    embeddings: np.ndarray | None = None


def document_text(doc: object, position: int = 0) -> str:
    """The text of a document as the rerank APIs and frameworks send it (see :data:`Document`)."""
    if isinstance(doc, str):
        return doc
    if isinstance(doc, Mapping):
        for key in ("text", "content", "page_content"):
            if isinstance(doc.get(key), str):
                return doc[key]
        raise InvalidInputError(f"document {position} is an object without a string 'text' field")
    for attribute in ("page_content", "content", "text"):
        value = getattr(doc, attribute, None)
        if isinstance(value, str):
            return value
    get_content = getattr(doc, "get_content", None)
    if callable(get_content):
        value = get_content()
        if isinstance(value, str):
            return value
    raise InvalidInputError(f"document {position} is a {type(doc).__name__}; documents must be strings, "
                            "{'text': ...} objects or framework documents with text content")


def check_positive(name: str, value: object, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")


def check_query(query: object) -> str:
    if not isinstance(query, str):
        raise InvalidInputError(f"the query must be a string, got {type(query).__name__}")
    if not query.strip():
        raise InvalidInputError("the query is empty")
    return query


def check_documents(documents: object) -> tuple[list[Document], list[str]]:
    if isinstance(documents, (str, bytes, Mapping)) or not isinstance(documents, Iterable):
        raise InvalidInputError("documents must be a list of strings or {'text': ...} objects")
    docs = list(documents)
    return docs, [document_text(doc, i) for i, doc in enumerate(docs)]


def _group_pairs(pairs: object) -> tuple[list[str], list[list[str]], list[tuple[int, int]]]:
    """Pairs ``(query, document)`` grouped by query (first-seen order) and where each pair went."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Iterable):
        raise InvalidInputError("pairs must be a list of (query, document) pairs")
    queries: list[str] = []
    docs: list[list[str]] = []
    at: dict[str, int] = {}
    where = []
    for n, pair in enumerate(pairs):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise InvalidInputError(f"pair {n} is not a (query, document) pair")
        query = check_query(pair[0])
        if query not in at:
            at[query] = len(queries)
            queries.append(query)
            docs.append([])
        where.append((at[query], len(docs[at[query]])))
        docs[at[query]].append(document_text(pair[1], n))
    return queries, docs, where


class BaseReranker(ABC):
    """What every reranker offers on top of :meth:`score_lists`; subclasses implement that one method.

    Keyword options of the scoring methods (``max_query_length``, ``max_doc_length``, ``instruction``,
    ``progress``) are passed to :meth:`score_lists`.
    """

    name: str = "reranker"

    @abstractmethod
    def score_lists(self, queries: Sequence[str], documents_per_query: Sequence[Sequence[Document]], *,
                    return_embeddings: bool = False, **options: Any) -> list[ScoredList]:
        """Scores (and embeddings) of each query's documents, in input order."""

    def normalize(self, scores: np.ndarray) -> np.ndarray:
        """Scores mapped to [0, 1] without changing their order (``compute_score(normalize=True)``)."""
        return (np.asarray(scores, dtype=np.float64) + 1.0) / 2.0

    # -- scores in input order -----------------------------------------------------------------

    def score(self, query: str, documents: Sequence[Document], **options: Any) -> list[float]:
        """Score of each document for ``query``, in input order (all documents are read together)."""
        return self.score_many([query], [documents], **options)[0]

    def score_many(self, queries: Sequence[str], documents_per_query: Sequence[Sequence[Document]],
                   **options: Any) -> list[list[float]]:
        """:meth:`score` for several queries at once, batched; each list in input order."""
        return [s.scores for s in self.score_lists(queries, documents_per_query, **options)]

    # -- ranked results ------------------------------------------------------------------------

    def rerank(self, query: str, documents: Sequence[Document], top_n: int | None = None,
               return_embeddings: bool = False, **options: Any) -> list[RerankResult]:
        """Rank ``documents`` for ``query``, best first (ties keep input order).

        Args:
            query: the search query (non-empty).
            documents: strings, ``{"text": ...}`` objects or framework documents; results carry them back.
            top_n: keep only the best ``top_n`` results; ``None`` keeps all.
            return_embeddings: attach each document's projected embedding (float32).
            **options: ``max_query_length``, ``max_doc_length``, ``instruction``.
        """
        return self.rerank_many([query], [documents], top_n=top_n, return_embeddings=return_embeddings,
                                **options)[0]

    def rerank_many(self, queries: Sequence[str], documents_per_query: Sequence[Sequence[Document]],
                    top_n: int | None = None, return_embeddings: bool = False,
                    **options: Any) -> list[list[RerankResult]]:
        """:meth:`rerank` for several queries at once; ``progress=True`` shows a bar over the batches."""
        check_positive("top_n", top_n, allow_none=True)
        if not isinstance(documents_per_query, (str, bytes, Mapping)) and isinstance(documents_per_query, Iterable):
            # Read every list once: results carry the caller's documents back, generators included.
            documents_per_query = [d if isinstance(d, (Sequence, Mapping)) or not isinstance(d, Iterable) else list(d)
                                   for d in documents_per_query]
        scored = self.score_lists(queries, documents_per_query, return_embeddings=return_embeddings, **options)
        out = []
        for docs, lst in zip(documents_per_query, scored):
            order = sorted(range(len(lst.scores)), key=lambda i: -lst.scores[i])[:top_n]
            out.append([RerankResult(i, lst.scores[i], docs[i],
                                     lst.embeddings[i].copy() if lst.embeddings is not None else None)
                        for i in order])
        return out

    # -- the APIs of other libraries -----------------------------------------------------------

    def rank(self, query: str, documents: Sequence[Document], top_k: int | None = None,
             return_documents: bool = False, **options: Any) -> list[dict[str, Any]]:
        """sentence-transformers' ``CrossEncoder.rank``: ``[{"corpus_id", "score", "text"?}]``, best first."""
        results = self.rerank(query, documents, top_n=top_k, **options)
        return [{"corpus_id": r.index, "score": r.relevance_score,
                 **({"text": document_text(r.document, r.index)} if return_documents else {})} for r in results]

    def predict(self, pairs: Sequence[Sequence[Any]], **options: Any) -> np.ndarray:
        """sentence-transformers' ``CrossEncoder.predict``: one score per ``(query, document)`` pair.

        LBNL reads a query's documents together, so pairs that share a query are scored as one list
        (the same scores ``score(query, those documents)`` gives).
        """
        queries, docs, where = _group_pairs(pairs)
        scores = self.score_many(queries, docs, **options)
        return np.array([scores[q][i] for q, i in where], dtype=np.float32)

    def compute_score(self, pairs: Sequence[Any], normalize: bool = False, **options: Any) -> float | list[float]:
        """FlagEmbedding's ``compute_score``: a float for one pair, a list for many; ``normalize`` maps to [0, 1]."""
        single = isinstance(pairs, Sequence) and len(pairs) == 2 and isinstance(pairs[0], str) \
            and not isinstance(pairs[1], (list, tuple))
        scores = self.predict([pairs] if single else pairs, **options).astype(np.float64)
        if normalize:
            scores = self.normalize(scores)
        values = [float(s) for s in scores]
        return values[0] if single else values
