"""The dynamic batcher in process, with the real rerank runner and the tiny real model.

These tests drive the event loop directly, so which requests share a batch is decided by the
order of events, not by timing luck.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lbnl import InvalidInputError, Reranker
from lbnl.serve.batcher import DynamicBatcher, Overloaded, RequestTimeout
from lbnl.serve.scoring import RerankJob, ScoredJob, count_usage, estimate_tokens, make_runner


class Recorder:
    """A batch observer that keeps what it saw, plus a runner wrapper that logs each batch's queries."""

    def __init__(self, runner: Any):
        self.runner = runner
        self.batches: list[list[str]] = []
        self.depths: list[int] = []
        self.running = asyncio.Event()

    def run(self, jobs: list[RerankJob]) -> list[ScoredJob | BaseException]:
        self.batches.append([j.query for j in jobs])
        return self.runner(jobs)

    def queue_changed(self, depth: int) -> None:
        self.depths.append(depth)

    def batch_started(self, requests: int, cost: int) -> None:
        self.running.set()

    def batch_finished(self, requests: int, seconds: float) -> None:
        self.running.clear()


def make(reranker: Reranker, **kwargs: Any) -> tuple[DynamicBatcher, Recorder]:
    recorder = Recorder(make_runner(reranker, 512, 2048))
    options = dict(max_batch_tokens=10_000, batch_wait_s=0.05, max_queue=16, observer=recorder) | kwargs
    return DynamicBatcher(recorder.run, **options), recorder


JOBS = [
    RerankJob("green tea", ["tea leaves", "coffee beans", "green tea catechins", "basketball"]),
    RerankJob("coffee prices", ["the price of coffee rose", "tea"]),
    RerankJob("sport", ["basketball in the US", "tennis", "green tea", "markets", "rain"]),
]


def test_concurrent_jobs_share_one_batch_and_score_as_if_alone(tiny_reranker: Reranker) -> None:
    async def main() -> list[ScoredJob]:
        batcher, recorder = make(tiny_reranker)
        await batcher.start()
        try:
            results = await asyncio.gather(*(batcher.submit(j, 10, timeout=30) for j in JOBS))
        finally:
            await batcher.close()
        assert recorder.batches == [[j.query for j in JOBS]]
        return results

    for job, scored in zip(JOBS, asyncio.run(main())):
        alone = tiny_reranker.rerank(job.query, job.texts)
        assert [i for i, _ in scored.ranking] == [r.index for r in alone]
        assert [s for _, s in scored.ranking] == pytest.approx([r.relevance_score for r in alone], abs=1e-5)


def test_token_budget_splits_batches(tiny_reranker: Reranker) -> None:
    async def main() -> list[list[str]]:
        batcher, recorder = make(tiny_reranker, max_batch_tokens=25)
        await batcher.start()
        try:
            await asyncio.gather(*(batcher.submit(j, 10, timeout=30) for j in JOBS))
        finally:
            await batcher.close()
        return recorder.batches

    assert asyncio.run(main()) == [["green tea", "coffee prices"], ["sport"]]


def test_full_queue_rejects_and_queued_timeout_never_runs(tiny_reranker: Reranker) -> None:
    async def main() -> None:
        batcher, recorder = make(tiny_reranker, max_queue=1, delay_s=0.5, batch_wait_s=0.0)
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(JOBS[0], 10, timeout=30))
            await recorder.running.wait()
            with pytest.raises(RequestTimeout, match="0.1 s"):
                await batcher.submit(JOBS[1], 10, timeout=0.1)
            assert batcher.queue_depth == 0, "a timed-out request leaves the queue at once"
            queued = asyncio.create_task(batcher.submit(JOBS[2], 10, timeout=30))
            await asyncio.sleep(0)
            with pytest.raises(Overloaded, match="busy") as rejected:
                await batcher.submit(JOBS[1], 10, timeout=30)
            assert rejected.value.retry_after >= 1
            await asyncio.gather(first, queued)
        finally:
            await batcher.close()
        assert recorder.batches == [["green tea"], ["sport"]], "the timed-out request never reached the model"
        assert recorder.depths[-1] == 0

    asyncio.run(main())


def test_close_finishes_queued_work_then_refuses(tiny_reranker: Reranker) -> None:
    async def main() -> None:
        batcher, recorder = make(tiny_reranker, delay_s=0.2, batch_wait_s=0.0, max_batch_tokens=10)
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit(j, 10, timeout=30)) for j in JOBS]
        await recorder.running.wait()
        await batcher.close()
        assert len(recorder.batches) == 3, "close() returns only after every queued request ran"
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=1)
        assert all(isinstance(r, ScoredJob) for r in results)
        with pytest.raises(Overloaded, match="shutting down"):
            await batcher.submit(JOBS[0], 10, timeout=30)

    asyncio.run(main())


def test_a_bad_request_fails_alone(tiny_reranker: Reranker) -> None:
    runner = make_runner(tiny_reranker, 512, 2048)
    outcomes = runner([JOBS[0], RerankJob("   ", ["x"]), JOBS[1]])
    assert isinstance(outcomes[1], InvalidInputError)
    assert all(isinstance(o, ScoredJob) for o in (outcomes[0], outcomes[2]))


def test_usage_matches_count_tokens_and_reports_truncation(tiny_reranker: Reranker) -> None:
    query, docs = "tea " * 20, ["leaf " * 50, "short", "cup " * 9]
    usage = count_usage(tiny_reranker.tokenizer, query, docs, max_query_length=8, max_doc_length=10)
    assert usage.total_tokens == sum(tiny_reranker.count_tokens(query, docs, max_query_length=8, max_doc_length=10))
    assert usage.query_truncated and usage.truncated_documents == 1
    assert estimate_tokens(query, docs, 8, 10) <= 8 + 3 * 10


def test_close_gives_up_on_a_stuck_batch_after_its_timeout(tiny_reranker: Reranker) -> None:
    async def main() -> None:
        batcher, recorder = make(tiny_reranker, delay_s=1.0, batch_wait_s=0.0)
        await batcher.start()
        stuck = asyncio.create_task(batcher.submit(JOBS[0], 10, timeout=30))
        await recorder.running.wait()
        started = asyncio.get_running_loop().time()
        await batcher.close(timeout=0.1)
        assert asyncio.get_running_loop().time() - started < 0.8
        with pytest.raises(Overloaded, match="stopped"):
            await stuck

    asyncio.run(main())


def test_plan_stops_at_the_token_budget(tiny_reranker: Reranker, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request over its token budget is refused after tokenizing about the budget, not all of it."""
    from lbnl.serve import scoring

    calls: list[int] = []
    real = scoring.token_prefixes

    def counting(texts, *args, **kwargs):
        calls.append(len(texts))
        return real(texts, *args, **kwargs)

    monkeypatch.setattr(scoring, "token_prefixes", counting)
    docs = ["tea " * 100] * 1000
    with pytest.raises(scoring.TokenBudgetExceeded) as info:
        scoring.plan_job(tiny_reranker.tokenizer, "tea", docs, 512, 64, max_tokens=500)
    assert info.value.budget == 500 and info.value.tokens > 500
    assert sum(calls) <= 1 + scoring.PLAN_CHUNK, "stopped after the first chunk of documents"
    job = scoring.plan_job(tiny_reranker.tokenizer, "tea", docs[:100], 512, 64, max_tokens=10**6)
    assert job.usage is not None and job.usage.document_tokens == 100 * 64 and job.usage.truncated_documents == 100
