"""What the server's worker thread does with a batch: usage counting and one ``rerank_many`` call.

Each request is its own query in ``rerank_many``, so its documents only ever share a prompt with
each other: a request scores exactly as it would alone, whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence


@dataclass(frozen=True)
class RerankJob:
    """One request as the worker sees it."""

    query: str
    texts: list[str]


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
class ScoredJob:
    """Every document of a request, best first, as ``(index, relevance_score)``, and its usage."""

    ranking: list[tuple[int, float]]
    usage: JobUsage


def estimate_tokens(query: str, texts: Sequence[str], max_query_length: int, max_doc_length: int) -> int:
    """A cheap token estimate (about 3 characters a token, capped like truncation) for the batching budget."""
    q = min(len(query) // 3 + 1, max_query_length)
    return q + sum(min(len(t) // 3 + 1, max_doc_length) for t in texts)


def count_usage(tokenizer: Any, query: str, texts: Sequence[str], max_query_length: int,
                max_doc_length: int) -> JobUsage:
    """Exact token counts after truncation; equal to ``Reranker.count_tokens``, plus what was cut."""
    lengths = [len(ids) for ids in tokenizer([query, *texts], add_special_tokens=False)["input_ids"]]
    q, docs = lengths[0], lengths[1:]
    return JobUsage(
        query_tokens=min(q, max_query_length),
        document_tokens=sum(min(n, max_doc_length) for n in docs),
        truncated_documents=sum(n > max_doc_length for n in docs),
        query_truncated=q > max_query_length,
    )


def make_runner(reranker: Any, max_query_length: int, max_doc_length: int
                ) -> Callable[[list[RerankJob]], list[ScoredJob | BaseException]]:
    """The batch function for :class:`~lbnl.serve.batcher.DynamicBatcher`.

    If the batched call fails, every request is retried alone so only the faulty one fails.
    """

    def score(jobs: list[RerankJob]) -> list[ScoredJob]:
        ranked = reranker.rerank_many([j.query for j in jobs], [j.texts for j in jobs], top_n=None,
                                      max_query_length=max_query_length, max_doc_length=max_doc_length)
        return [
            ScoredJob(
                ranking=[(r.index, r.relevance_score) for r in results],
                usage=count_usage(reranker.tokenizer, job.query, job.texts, max_query_length, max_doc_length),
            )
            for job, results in zip(jobs, ranked)
        ]

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
