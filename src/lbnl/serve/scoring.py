"""What the server's worker thread does with a batch: usage counting and one ``rerank_many`` call.

Each request is its own query in ``rerank_many``, so its documents only ever share a prompt with
each other: a request scores exactly as it would alone, whatever else is in the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..truncation import token_prefixes

#: A document or query with a run of more characters than this without a word boundary (one
#: pre-token, such as a megabyte of emoji) is refused rather than tokenized whole.
MAX_RUN_CHARS = 65536


class NonFiniteScores(RuntimeError):
    """The model produced a NaN or infinite score: a broken checkpoint or numeric overflow."""


@dataclass(frozen=True)
class JobUsage:
    """Tokens of one request after truncation, as the model reads them."""

    query_tokens: int
    document_tokens: int
    truncated_documents: int
    query_truncated: bool

    @property
    def total_tokens(self) -> int:
        return self.query_tokens + self.document_tokens


@dataclass(frozen=True)
class RerankJob:
    """One request as the worker sees it.

    ``texts`` (and ``query``) may be prefixes of the caller's texts from :func:`plan_job`, which
    truncate exactly like the full texts; ``usage`` is then already known and not recounted.
    """

    query: str
    texts: list[str]
    usage: JobUsage | None = None
    max_doc_length: int | None = None  # the request's own limit; None: the server's


@dataclass(frozen=True)
class ScoredJob:
    """Every document of a request, best first, as ``(index, relevance_score)``, and its usage."""

    ranking: list[tuple[int, float]]
    usage: JobUsage


def estimate_tokens(query: str, texts: Sequence[str], max_query_length: int, max_doc_length: int) -> int:
    """A cheap token estimate (about 3 characters a token, capped like truncation) for the batching budget."""
    q = min(len(query) // 3 + 1, max_query_length)
    return q + sum(min(len(t) // 3 + 1, max_doc_length) for t in texts)


class TokenBudgetExceeded(ValueError):
    """A request holds more tokens (after truncation) than its budget; found before tokenizing all of it."""

    def __init__(self, tokens: int, budget: int):
        super().__init__(f"the request holds at least {tokens} tokens after truncation, more than the limit of "
                         f"{budget} per request; send fewer or shorter documents")
        self.tokens = tokens
        self.budget = budget


#: Documents tokenized per tokenizer call while a request's token budget is checked.
PLAN_CHUNK = 64


def plan_job(tokenizer: Any, query: str, texts: Sequence[str], max_query_length: int, max_doc_length: int,
             max_run: int | None = MAX_RUN_CHARS, max_tokens: int | None = None) -> RerankJob:
    """The job for one request: each text cut to a prefix that truncates exactly like it, and its usage.

    Tokenizer work is bounded by the length limits, not by the texts (see
    :func:`lbnl.prompt.token_prefixes`); the token counts come from this one pass. Raises
    :class:`lbnl.prompt.TextTooLongError` (``index`` 0 is the query, ``i + 1`` document ``i``)
    for a text with a run of more than ``max_run`` characters that cannot be cut, and
    :class:`TokenBudgetExceeded` as soon as the tokens counted exceed ``max_tokens`` (documents are
    tokenized ``PLAN_CHUNK`` at a time, so the work for a request over budget is about the budget's).
    """
    (q_prefix,), (q_ids,) = token_prefixes([query], tokenizer, max_query_length + 1, max_run=max_run)
    total = min(len(q_ids), max_query_length)
    prefixes: list[str] = []
    ids: list[list[int]] = []
    for start in range(0, len(texts), PLAN_CHUNK):
        try:
            chunk_prefixes, chunk_ids = token_prefixes(texts[start: start + PLAN_CHUNK], tokenizer,
                                                       max_doc_length + 1, max_run=max_run)
        except ValueError as exc:
            if hasattr(exc, "index"):
                exc.index += 1 + start  # type: ignore[attr-defined]
            raise
        prefixes.extend(chunk_prefixes)
        ids.extend(chunk_ids)
        total += sum(min(len(x), max_doc_length) for x in chunk_ids)
        if max_tokens is not None and total > max_tokens:
            raise TokenBudgetExceeded(total, max_tokens)
    docs = [len(x) for x in ids]
    usage = JobUsage(
        query_tokens=min(len(q_ids), max_query_length),
        document_tokens=sum(min(n, max_doc_length) for n in docs),
        truncated_documents=sum(n > max_doc_length for n in docs),
        query_truncated=len(q_ids) > max_query_length,
    )
    return RerankJob(q_prefix, prefixes, usage, max_doc_length)


def count_usage(tokenizer: Any, query: str, texts: Sequence[str], max_query_length: int,
                max_doc_length: int) -> JobUsage:
    """Exact token counts after truncation; equal to ``Reranker.count_tokens``, plus what was cut."""
    usage = plan_job(tokenizer, query, texts, max_query_length, max_doc_length, max_run=None).usage
    assert usage is not None
    return usage


def make_runner(reranker: Any, max_query_length: int, max_doc_length: int
                ) -> Callable[[list[RerankJob]], list[ScoredJob | BaseException]]:
    """The batch function for :class:`~lbnl.serve.batcher.DynamicBatcher`.

    If the batched call fails, every request is retried alone so only the faulty one fails. A
    request with a NaN or infinite score fails with :class:`NonFiniteScores`.
    """

    def one(job: RerankJob, results: Sequence[Any]) -> ScoredJob | BaseException:
        ranking = [(r.index, float(r.relevance_score)) for r in results]
        bad = sum(not math.isfinite(score) for _, score in ranking)
        if bad:
            return NonFiniteScores(f"the model produced {bad} non-finite score(s) (NaN or infinity) for "
                                   f"{len(ranking)} document(s): the checkpoint or its numeric precision is broken")
        usage = job.usage or count_usage(reranker.tokenizer, job.query, job.texts, max_query_length,
                                         job.max_doc_length or max_doc_length)
        return ScoredJob(ranking=ranking, usage=usage)

    def score(jobs: list[RerankJob]) -> list[ScoredJob | BaseException]:
        """One ``rerank_many`` call per document length limit in the batch (usually one)."""
        outcomes: list[ScoredJob | BaseException | None] = [None] * len(jobs)
        for limit in sorted({j.max_doc_length or max_doc_length for j in jobs}):
            group = [i for i, j in enumerate(jobs) if (j.max_doc_length or max_doc_length) == limit]
            ranked = reranker.rerank_many([jobs[i].query for i in group], [jobs[i].texts for i in group], top_n=None,
                                          max_query_length=max_query_length, max_doc_length=limit)
            for i, results in zip(group, ranked):
                outcomes[i] = one(jobs[i], results)
        return outcomes  # type: ignore[return-value]

    def run(jobs: list[RerankJob]) -> list[ScoredJob | BaseException]:
        try:
            return list(score(jobs))
        except Exception as exc:  # noqa: BLE001 - isolate the request that broke the batch
            if len(jobs) == 1:
                return [exc]
        outcomes: list[ScoredJob | BaseException] = []
        for job in jobs:
            try:
                outcomes.extend(score([job]))
            except Exception as exc:  # noqa: BLE001
                outcomes.append(exc)
        return outcomes

    return run
