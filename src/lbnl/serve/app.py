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
import hmac
import ipaddress
import json
import logging
import math
import socket
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__
from ..defaults import MAX_BATCH_TOKENS, MAX_DOC_LENGTH, MAX_QUERY_LENGTH
from ..errors import InvalidInputError, LBNLError
from ..truncation import TextTooLongError
from .batcher import DynamicBatcher, Overloaded, RequestTimeout
from .connections import BodyDeadlineMiddleware, BodyTimeout
from .metrics import ServeMetrics, MetricsMiddleware
from .schemas import (
    BilledUnits, ErrorResponse, FieldError, Health, Meta, ModelCard, ModelList, RerankRequest, RerankResponse,
    RerankResultOut, ScoreData, ScoreRequest, ScoreResponse, ScoreUsage, TeiRank, TeiRerankRequest, Usage,
)
from .scoring import (
    MAX_RUN_CHARS, NonFiniteScores, RerankJob, ScoredJob, TokenBudgetExceeded, make_runner, plan_job,
)

log = logging.getLogger("lbnl.serve")

#: ``/v1/rerank`` is Jina's and Cohere v1's path, ``/v2/rerank`` Cohere v2's, ``/rerank`` a short alias.
RERANK_PATHS = ("/v1/rerank", "/v2/rerank", "/rerank")
#: vLLM's scoring API.
SCORE_PATHS = ("/score", "/v1/score")
#: Paths answered without an API key: probes, scraping and the API docs.
OPEN_PATHS = frozenset({"/health", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
KNOWN_PATHS = OPEN_PATHS | {*RERANK_PATHS, *SCORE_PATHS, "/v1/models"}


@dataclass(frozen=True)
class ServeSettings:
    """Server limits and batching; the defaults are the ``lbnl serve`` defaults.

    Args:
        model_name: name shown in responses and ``/v1/models`` (default: the reranker's name).
        max_batch_tokens: token budget of one batch (estimated query and document tokens), also
            the reranker's padded tokens per forward.
        batch_wait_ms: how long the oldest queued request waits for companions.
        max_queue: requests allowed to wait for the model; more get 503 with ``Retry-After``.
        max_documents: documents allowed in one request.
        max_body_bytes: request bodies larger than this get 413.
        request_timeout: seconds from a request's arrival at the queue to its answer; later is 504.
        api_key: when set, every non-probe endpoint needs ``Authorization: Bearer <api_key>``.
        max_query_length: query tokens kept (longer queries are truncated as the model defines).
        max_doc_length: tokens kept per document.
        max_request_tokens: query plus document tokens (after truncation) allowed in one request;
            more get 413. Bounds the model time one request can take.
        header_timeout: seconds a connection may take to send a request head (after connecting or
            after its previous response); then it is closed.
        body_timeout: seconds from a request's head to the end of its body; later gets 408.
        keep_alive_timeout: seconds an idle keep-alive connection stays open.
        batch_delay_ms: artificial sleep before every batch, to test overload and shutdown; keep 0.
    """

    model_name: str | None = None
    max_batch_tokens: int = MAX_BATCH_TOKENS
    batch_wait_ms: float = 5.0
    max_queue: int = 64
    max_documents: int = 1000
    max_body_bytes: int = 16 * 2**20
    request_timeout: float = 60.0
    api_key: str | None = None
    max_query_length: int = MAX_QUERY_LENGTH
    max_doc_length: int = MAX_DOC_LENGTH
    max_request_tokens: int = 262144
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    batch_delay_ms: float = 0.0

    def check(self) -> None:
        """Raise :class:`~lbnl.errors.InvalidInputError` naming the first impossible setting."""
        for name in ("max_batch_tokens", "max_queue", "max_documents", "max_body_bytes", "max_query_length",
                     "max_doc_length", "max_request_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        for name in ("batch_wait_ms", "batch_delay_ms"):
            if not getattr(self, name) >= 0:
                raise InvalidInputError(f"{name.replace('_', '-')} must be zero or more, got {getattr(self, name)!r}")
        for name in ("request_timeout", "header_timeout", "body_timeout", "keep_alive_timeout"):
            if not getattr(self, name) > 0:
                raise InvalidInputError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)!r}")
        if self.api_key is not None and not self.api_key:
            raise InvalidInputError("the API key is empty; give a key, or none to serve without one")


class ApiError(Exception):
    """An error answered as JSON ``{"detail": ..., "errors": ...}``."""

    def __init__(self, status: int, detail: str, errors: list[FieldError] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = headers


def _error_response(status: int, detail: str, errors: list[FieldError] | None = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(detail=detail, errors=errors).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


class BearerAuthMiddleware:
    """Require ``Authorization: Bearer <key>`` (compared in constant time) outside :data:`OPEN_PATHS`.

    A middleware rather than a dependency so an unauthenticated client gets 401 before its body
    is read or validated.
    """

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self.key = api_key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            # The raw header bytes: a UTF-8 key matches as sent, whatever decoding Starlette would use.
            value = next((v for k, v in scope["headers"] if k.lower() == b"authorization"), b"")
            scheme, _, token = value.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(b" \t"), self.key):
                response = _error_response(
                    401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                    headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class ContentLengthLimitMiddleware:
    """Answer 413 as JSON when ``Content-Length`` announces too big a body, before reading it.

    Bodies without a length (chunked) are cut while streaming by the rerank routes'
    ``max_body_size`` (FastAPI); this check runs first so announced sizes get the JSON error too.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_body_bytes:
                response = _error_response(413, _too_large(self.max_body_bytes), headers={"Connection": "close"})
                await response(scope, receive, send)
                return
            encoding = headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                message = f"Content-Encoding {encoding!r} is not supported; send the JSON uncompressed"
                response = _error_response(422, f"body: {message}", [FieldError(field="body", message=message)],
                                           headers={"Connection": "close"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _too_large(limit: int) -> str:
    return f"the request body is larger than the limit of {limit} bytes"


def _body_parse_error(cause: BaseException | None) -> str:
    """Why FastAPI could not parse a body (it says only "There was an error parsing the body")."""
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not valid UTF-8 JSON (byte {cause.start} cannot be decoded)"
    if isinstance(cause, RecursionError):
        return "the JSON is nested too deeply"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "the JSON holds an integer with too many digits"
    return f"cannot parse the body as JSON ({type(cause).__name__})" if cause else "cannot parse the body as JSON"


def _cohere_style(request: Request, body: RerankRequest) -> bool:
    """Whether ``return_documents`` should default to Cohere's false: Cohere v2's path, the Cohere SDK
    (it names itself in ``X-Fern-SDK-Name``), or a request using Cohere's ``rank_fields``."""
    sdk = request.headers.get("x-fern-sdk-name", "").lower()
    return request.url.path == "/v2/rerank" or sdk.startswith("cohere") or body.rank_fields is not None


def _inline_schema(model: Any) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("$defs", None)
    return schema


async def _read_json(request: Request) -> Any:
    """The body parsed as FastAPI would, with the same 422 answers, for routes that accept several shapes."""
    content_type = request.headers.get("content-type", "")
    body = await request.body()
    if not body:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    main = content_type.split(";")[0].strip().lower()
    is_json = main == "application/json" or (main.startswith("application/") and main.endswith("+json"))
    if content_type and not is_json:
        raise RequestValidationError([{"type": "model_attributes_type", "loc": ("body",), "msg": "not JSON",
                                       "input": ""}])
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": exc.msg}}]) from None
    except Exception as exc:  # noqa: BLE001 - UnicodeDecodeError, RecursionError, huge integers
        message = _body_parse_error(exc)
        raise ApiError(422, f"body: {message}", [FieldError(field="body", message=message)]) from None


def _validate(model: Any, data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None


def _field_errors(errors: Sequence[dict[str, Any]]) -> list[FieldError]:
    """Pydantic/FastAPI validation errors as ``field: message`` pairs a person can act on."""
    out = []
    for e in errors:
        loc = [str(part) for part in e.get("loc", ())]
        if loc and loc[0] == "body":
            loc = loc[1:]
        kind = e.get("type", "")
        message = str(e.get("msg", "invalid"))
        if kind == "json_invalid":
            reason = (e.get("ctx") or {}).get("error", "cannot parse")
            at = f" at character {loc[0]}" if loc else ""
            out.append(FieldError(field="body", message=f"invalid JSON: {reason}{at}"))
            continue
        if not loc:
            if kind == "missing":
                message = "a JSON object is required"
            elif isinstance(e.get("input"), (bytes, str)):
                message = "expected a JSON object; send it with the header 'Content-Type: application/json'"
            else:
                message = "expected a JSON object"
            out.append(FieldError(field="body", message=message))
            continue
        if kind == "missing":
            message = "is required"
        elif message[:1].isupper():
            message = message[0].lower() + message[1:]
        out.append(FieldError(field=".".join(loc), message=message))
    return out


def _install_error_handlers(app: FastAPI, settings: ServeSettings) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc.errors())
        return _error_response(422, "; ".join(f"{e.field}: {e.message}" for e in errors), errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail)
        if exc.status_code == 413:
            detail = _too_large(settings.max_body_bytes)
        if exc.status_code == 400 and isinstance(exc.__cause__, BodyTimeout):
            return _error_response(408, str(exc.__cause__), headers={"Connection": "close"})
        if exc.status_code == 400 and detail == "There was an error parsing the body":
            message = _body_parse_error(exc.__cause__)
            return _error_response(422, f"body: {message}", [FieldError(field="body", message=message)])
        return _error_response(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.detail, exc.errors, exc.headers)

    @app.exception_handler(Overloaded)
    async def _overloaded(_: Request, exc: Overloaded) -> JSONResponse:
        return _error_response(503, str(exc), headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(RequestTimeout)
    async def _timeout(_: Request, exc: RequestTimeout) -> JSONResponse:
        return _error_response(504, str(exc))

    @app.exception_handler(NonFiniteScores)
    async def _non_finite(request: Request, exc: NonFiniteScores) -> JSONResponse:
        log.error("%s", exc)
        request.app.state.health_error = str(exc)
        return _error_response(500, str(exc))

    @app.exception_handler(LBNLError)
    async def _lbnl(_: Request, exc: LBNLError) -> JSONResponse:
        return _error_response(422 if isinstance(exc, InvalidInputError) else 500, str(exc))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.error("internal error", exc_info=exc)
        return _error_response(500, f"internal server error ({type(exc).__name__})")


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
    _install_error_handlers(app, settings)
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
        data = await _read_json(request)
        if isinstance(data, dict) and "texts" in data and "documents" not in data:
            tei = _validate(TeiRerankRequest, data)
            check_count(len(tei.texts), "texts")
            scored = await score_texts(tei.query, tei.texts, settings.max_doc_length)
            ranks = [TeiRank(index=i, score=score, text=tei.texts[i] if tei.return_text else None)
                     for i, score in (scored.ranking if scored else [])]
            return JSONResponse([r.model_dump(exclude_none=True) for r in ranks])
        out = await answer_rerank(_validate(RerankRequest, data), request)
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
                       reject=lambda status, detail, headers: _error_response(status, detail, headers=headers))
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


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise InvalidInputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _configure_logging(level: str) -> None:
    logger = logging.getLogger("lbnl")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level.upper())


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts local clients (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(reranker: Any, settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8080,
          log_level: str = "info", access_log: bool = True, max_connections: int | None = 1024) -> None:
    """Run the server until SIGINT/SIGTERM, then stop gracefully.

    On a signal the listening socket closes first (new connections are refused), requests in
    flight and queued finish (for at most ``request_timeout`` + 5 s), then the worker stops.

    Args:
        reranker: the loaded model.
        settings: limits, timeouts and batching.
        host: address to listen on; the default only accepts local clients.
        port: TCP port; 0 picks a free one (the log line ``lbnl serve: ... on http://...`` names it).
        log_level: uvicorn and lbnl log level.
        access_log: log one line per request.
        max_connections: open connections kept at once; beyond it the connection idle the longest
            (waiting for a request head) is closed. Also the requests handled at once (503 beyond).
    """
    import uvicorn

    from .connections import protocol_class

    _configure_logging(log_level)
    app = create_app(reranker, settings, max_requests=max_connections)
    sock = _listen(host, port)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                            http=protocol_class(settings.header_timeout, max_connections),
                            limit_concurrency=None, timeout_keep_alive=settings.keep_alive_timeout,
                            h11_max_incomplete_event_size=64 * 1024, lifespan="on",
                            timeout_graceful_shutdown=int(math.ceil(settings.request_timeout)) + 5)
    if settings.api_key is None and not is_loopback(host):
        log.warning("listening on %s without an API key: anyone who can reach it can use it (see --api-key-file)",
                    host)
    shown = f"[{host}]" if ":" in host else host
    log.info("lbnl serve: model %s on http://%s:%d (API docs at /docs)", settings.model_name or reranker.name,
             shown, port)
    uvicorn.Server(config).run(sockets=[sock])
