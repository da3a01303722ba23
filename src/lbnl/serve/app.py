"""The rerank HTTP server: a FastAPI app over one loaded :class:`~lbnl.reranker.Reranker`.

``POST /v1/rerank`` (also ``/v2/rerank`` and ``/rerank``) speaks the Jina and Cohere rerank request and response
shapes, ``/rerank`` also Text Embeddings Inference's, and ``POST /score`` (``/v1/score``) vLLM's;
``GET /health``, ``GET /v1/models``, ``GET /metrics`` (Prometheus) and the OpenAPI docs (``/docs``)
come with it. Every error is JSON ``{"detail": ...}``. Requests are batched dynamically by
:class:`~lbnl.serve.batcher.DynamicBatcher`; connections are guarded by :mod:`lbnl.serve.connections`;
see ``docs/serve.md``.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer

from .. import __version__
from ..truncation import TextTooLongError
from .batcher import DynamicBatcher
from .connections import BodyDeadlineMiddleware
from .errors import ApiError, error_response, install_error_handlers, read_json, validate_body
from .metrics import MetricsMiddleware, ServeMetrics
from .middleware import OPEN_PATHS, BearerAuthMiddleware, ContentLengthLimitMiddleware
from .schemas import (
    BilledUnits,
    ErrorResponse,
    FieldError,
    Health,
    Meta,
    ModelCard,
    ModelList,
    RerankRequest,
    RerankResponse,
    RerankResultOut,
    ScoreData,
    ScoreRequest,
    ScoreResponse,
    ScoreUsage,
    TeiRank,
    TeiRerankRequest,
    Usage,
)
from .scoring import MAX_RUN_CHARS, RerankJob, ScoredJob, TokenBudgetExceeded, make_runner, plan_job
from .settings import ServeSettings


#: ``/v1/rerank`` is Jina's and Cohere v1's path, ``/v2/rerank`` Cohere v2's, ``/rerank`` a short alias.
RERANK_PATHS = ("/v1/rerank", "/v2/rerank", "/rerank")
#: vLLM's scoring API.
SCORE_PATHS = ("/score", "/v1/score")
KNOWN_PATHS = OPEN_PATHS | {*RERANK_PATHS, *SCORE_PATHS, "/v1/models"}


def _cohere_style(request: Request, body: RerankRequest) -> bool:
    """Whether ``return_documents`` should default to Cohere's false: Cohere v2's path, the Cohere SDK
    (it names itself in ``X-Fern-SDK-Name``), or a request using Cohere's ``rank_fields``."""
    sdk = request.headers.get("x-fern-sdk-name", "").lower()
    return request.url.path == "/v2/rerank" or sdk.startswith("cohere") or body.rank_fields is not None


def _inline_schema(model: Any) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("$defs", None)
    return schema


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        401: "missing or wrong API key", 408: "the request body did not arrive in time",
        413: "request body or its tokens over the limit", 422: "invalid request (the field is named)",
        500: "the model produced a non-finite score (the server then reports status 'error' on /health)",
        503: "queue full, too many requests or shutting down (see Retry-After)", 504: "request timed out",
    }.items()
}


def create_app(reranker: Any, settings: ServeSettings | None = None, *, max_requests: int | None = 1024) -> FastAPI:
    """Build the app around a loaded reranker; the batcher starts and stops with the app's lifespan.

    Args:
        reranker: a :class:`~lbnl.reranker.Reranker` (anything with ``rerank_many``, ``tokenizer``, ``name``).
        settings: limits and batching (see :class:`ServeSettings`).
        max_requests: HTTP requests handled at once; more get 503.
    """
    settings = settings or ServeSettings()
    settings.check()
    model_name = settings.model_name or public_model_name(str(reranker.name))
    metrics = ServeMetrics(model_name)
    tokenize_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lbnl-tokenize")
    batcher: DynamicBatcher[RerankJob, ScoredJob] = DynamicBatcher(
        make_runner(reranker, settings.max_query_length, settings.max_doc_length),
        max_batch_tokens=settings.max_batch_tokens,
        batch_wait_s=settings.batch_wait_ms / 1000,
        max_queue=settings.max_queue,
        delay_s=settings.batch_delay_ms / 1000,
        observer=metrics,
    )
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start(warmup=[RerankJob("warmup", ["warmup"])])
        try:
            yield
        finally:
            await batcher.close(timeout=settings.request_timeout + 5)
            tokenize_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="lbnl rerank server",
        version=__version__,
        summary="Listwise reranking with an LBNL model, in the Jina/Cohere rerank API shape.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.health_error = None
    install_error_handlers(app, settings)
    protected = [Depends(HTTPBearer(auto_error=False, description="the server's API key"))] if settings.api_key else []
    responses = {k: v for k, v in ERROR_RESPONSES.items() if k != 401 or settings.api_key}
    tokenizer = reranker.tokenizer

    def doc_limit(requested: int | None) -> int:
        """A request's own document length limit, never above the server's."""
        return settings.max_doc_length if requested is None else min(requested, settings.max_doc_length)

    async def plan(query: str, texts: list[str], max_doc_length: int, spent: int = 0) -> RerankJob:
        """Tokenize (bounded) off the event loop and off the model's thread.

        Stops with 413 as soon as the request's tokens (``spent`` by its earlier jobs plus these)
        exceed ``--max-request-tokens``.
        """
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(tokenize_pool, plan_job, tokenizer, query, texts,
                                              settings.max_query_length, max_doc_length, MAX_RUN_CHARS,
                                              settings.max_request_tokens - spent)
        except TokenBudgetExceeded as exc:
            total = TokenBudgetExceeded(exc.tokens + spent, settings.max_request_tokens)
            raise ApiError(413, str(total)) from None
        except TextTooLongError as exc:
            field = "query" if exc.index == 0 else f"documents.{exc.index - 1}"
            message = (f"has a run of more than {exc.max_run} characters without a word boundary; "
                       "break it with spaces or punctuation")
            raise ApiError(422, f"{field}: {message}", [FieldError(field=field, message=message)]) from None

    def check_budget(cost: int) -> None:
        if cost > settings.max_request_tokens:
            raise ApiError(413, f"the request holds {cost} tokens after truncation, more than the limit of "
                                f"{settings.max_request_tokens} per request; send fewer or shorter documents")

    def check_count(count: int, field: str = "documents") -> None:
        if count > settings.max_documents:
            message = f"at most {settings.max_documents} documents per request, got {count}"
            raise ApiError(422, f"{field}: {message}", [FieldError(field=field, message=message)])

    async def submit(job: RerankJob) -> ScoredJob:
        assert job.usage is not None
        scored: ScoredJob = await batcher.submit(job, job.usage.total_tokens, settings.request_timeout)
        metrics.scored(len(job.texts), scored.usage.total_tokens)
        return scored

    async def score_texts(query: str, texts: list[str], max_doc_length: int) -> ScoredJob | None:
        """One query's documents scored together: its ranking and usage (``None`` for no documents)."""
        if not texts:
            return None
        job = await plan(query, texts, max_doc_length)
        assert job.usage is not None
        check_budget(job.usage.total_tokens)
        return await submit(job)

    async def answer_rerank(body: RerankRequest, request: Request) -> RerankResponse:
        texts = body.texts()
        check_count(len(texts))
        scored = await score_texts(body.query, texts, doc_limit(body.max_tokens_per_doc))
        if scored is not None:
            ranking, usage = scored.ranking, scored.usage
            usage_out = Usage(total_tokens=usage.total_tokens, truncated_documents=usage.truncated_documents,
                              query_truncated=usage.query_truncated)
        else:
            ranking, usage_out = [], Usage(total_tokens=0)
        if body.top_n is not None:
            ranking = ranking[: body.top_n]
        keep_text = body.return_documents
        if keep_text is None:
            keep_text = not _cohere_style(request, body)
        results = [
            RerankResultOut(index=i, relevance_score=score, document=body.echoed(i, texts[i]) if keep_text else None)
            for i, score in ranking
        ]
        return RerankResponse(
            id=str(uuid.uuid4()), model=model_name, results=results, usage=usage_out,
            meta=Meta(billed_units=BilledUnits(search_units=max(1, math.ceil(len(texts) / 100)))),
        )

    async def rerank(body: RerankRequest, request: Request) -> RerankResponse:
        """Rank documents by relevance to the query, best first.

        The request's ``model`` is accepted and ignored: the served model answers and is named in
        the response. ``usage.total_tokens`` counts query and document tokens after truncation.
        """
        return await answer_rerank(body, request)

    for path in ("/v1/rerank", "/v2/rerank"):
        app.add_api_route(path, rerank, methods=["POST"], response_model=RerankResponse,
                          response_model_exclude_none=True, responses=responses, dependencies=protected,
                          max_body_size=settings.max_body_bytes,
                          summary="Rerank documents" + (" (Cohere v2: return_documents defaults to false)"
                                                        if path == "/v2/rerank" else ""),
                          operation_id=f"rerank{path.replace('/', '_')}")

    async def rerank_any_shape(request: Request) -> Response:
        """The Jina/Cohere body (with ``documents``) as ``/v1/rerank``, or TEI's (with ``texts``).

        TEI's answer is a bare list of ``{index, score, text?}``, best first.
        """
        data = await read_json(request)
        if isinstance(data, dict) and "texts" in data and "documents" not in data:
            tei = validate_body(TeiRerankRequest, data)
            check_count(len(tei.texts), "texts")
            scored = await score_texts(tei.query, tei.texts, settings.max_doc_length)
            ranks = [TeiRank(index=i, score=score, text=tei.texts[i] if tei.return_text else None)
                     for i, score in (scored.ranking if scored else [])]
            return JSONResponse([r.model_dump(exclude_none=True) for r in ranks])
        out = await answer_rerank(validate_body(RerankRequest, data), request)
        return JSONResponse(out.model_dump(mode="json", exclude_none=True))

    app.add_api_route(
        "/rerank", rerank_any_shape, methods=["POST"], response_model=None, dependencies=protected,
        max_body_size=settings.max_body_bytes, operation_id="rerank_rerank",
        summary="Rerank documents: the /v1/rerank body, or Text Embeddings Inference's {query, texts}",
        responses={200: {"description": "RerankResponse for the Jina/Cohere body; a list of {index, score, text?} "
                                        "for TEI's", "content": {"application/json": {"schema": {"oneOf": [
                                            {"$ref": "#/components/schemas/RerankResponse"},
                                            {"type": "array", "items": TeiRank.model_json_schema()}]}}}},
                   **responses},
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
            {"$ref": "#/components/schemas/RerankRequest"}, _inline_schema(TeiRerankRequest)]}}}}},
    )

    async def score(body: ScoreRequest) -> ScoreResponse:
        """vLLM's scoring API: one ``text_1`` ranks all ``text_2`` together (as a rerank request, so
        each score depends on the other documents, as listwise scores do); equal-length lists score
        each pair alone. ``data`` is in ``text_2`` order."""
        try:
            pairs = body.pairs()
        except ValueError as exc:
            raise ApiError(422, f"text_2: {exc}", [FieldError(field="text_2", message=str(exc))]) from None
        check_count(sum(len(docs) for _, docs in pairs), "text_2")
        limit = doc_limit(body.truncate_prompt_tokens)
        jobs: list[RerankJob] = []
        spent = 0
        for q, docs in pairs:
            jobs.append(await plan(q, docs, limit, spent))
            spent += jobs[-1].usage.total_tokens if jobs[-1].usage else 0
        scored: list[ScoredJob] = []
        for start in range(0, len(jobs), 16):
            scored.extend(await asyncio.gather(*(submit(j) for j in jobs[start: start + 16])))
        if len(pairs) == 1:
            by_index = dict(scored[0].ranking)
            data = [ScoreData(index=i, score=by_index[i]) for i in range(len(pairs[0][1]))]
        else:
            data = [ScoreData(index=i, score=s.ranking[0][1]) for i, s in enumerate(scored)]
        tokens = sum(s.usage.total_tokens for s in scored)
        return ScoreResponse(id=f"score-{uuid.uuid4().hex}", created=int(time.time()), model=model_name, data=data,
                             usage=ScoreUsage(prompt_tokens=tokens, total_tokens=tokens))

    for path in ("/score", "/v1/score"):
        app.add_api_route(path, score, methods=["POST"], response_model=ScoreResponse, responses=responses,
                          dependencies=protected, max_body_size=settings.max_body_bytes,
                          summary="Score text_2 against text_1 (vLLM's /score)",
                          operation_id=f"score{path.replace('/', '_')}")

    @app.get("/v1/models", response_model=ModelList, dependencies=protected, summary="The served model",
             responses={k: v for k, v in responses.items() if k == 401})
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=model_name, created=created)])

    @app.get("/health", response_model=Health, response_model_exclude_none=True,
             summary="Liveness and queue depth; 503 with status 'error' once the model produced a non-finite score",
             responses={503: {"model": Health, "description": "the model misbehaved (see detail)"}})
    async def health() -> Any:
        if app.state.health_error:
            body = Health(status="error", model=model_name, queue_depth=batcher.queue_depth,
                          detail=app.state.health_error)
            return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
        return Health(model=model_name, queue_depth=batcher.queue_depth)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    app.add_middleware(ContentLengthLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(BearerAuthMiddleware, api_key=settings.api_key)
    app.add_middleware(BodyDeadlineMiddleware, body_timeout=settings.body_timeout, max_requests=max_requests,
                       reject=lambda status, detail, headers: error_response(status, detail, headers=headers))
    app.add_middleware(MetricsMiddleware, metrics=metrics, endpoints=KNOWN_PATHS)
    return app


def public_model_name(name: str) -> str:
    """The name responses show: a local checkpoint's directory name, never its filesystem path.

    Hub ids (``jinaai/jina-reranker-v3``) and built-in names (``lbnl-small``) stay as they are.
    """
    path = Path(name).expanduser()
    if path.is_absolute() or name.startswith((".", "~")) or path.exists():
        return path.resolve().name or name
    return name


