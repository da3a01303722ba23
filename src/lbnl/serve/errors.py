"""Errors as the API documents them: one JSON body ``{"detail", "errors"?}`` for every failure, from body
parsing and validation to overload, timeouts and non-finite scores."""

from __future__ import annotations

import json
import logging
from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import InvalidInputError, LBNLError
from .batcher import Overloaded, RequestTimeout
from .connections import BodyTimeout
from .schemas import ErrorResponse, FieldError
from .scoring import NonFiniteScores
from .settings import ServeSettings

log = logging.getLogger("lbnl.serve")


class ApiError(Exception):
    """An error answered as JSON ``{"detail": ..., "errors": ...}``."""

    def __init__(self, status: int, detail: str, errors: list[FieldError] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = headers


def error_response(status: int, detail: str, errors: list[FieldError] | None = None,
                    headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(detail=detail, errors=errors).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


def too_large(limit: int) -> str:
    return f"the request body is larger than the limit of {limit} bytes"


def body_parse_error(cause: BaseException | None) -> str:
    """Why FastAPI could not parse a body (it says only "There was an error parsing the body")."""
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not valid UTF-8 JSON (byte {cause.start} cannot be decoded)"
    if isinstance(cause, RecursionError):
        return "the JSON is nested too deeply"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "the JSON holds an integer with too many digits"
    return f"cannot parse the body as JSON ({type(cause).__name__})" if cause else "cannot parse the body as JSON"


async def read_json(request: Request) -> Any:
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
        message = body_parse_error(exc)
        raise ApiError(422, f"body: {message}", [FieldError(field="body", message=message)]) from None


def validate_body(model: Any, data: Any) -> Any:
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


def install_error_handlers(app: FastAPI, settings: ServeSettings) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc.errors())
        return error_response(422, "; ".join(f"{e.field}: {e.message}" for e in errors), errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail)
        if exc.status_code == 413:
            detail = too_large(settings.max_body_bytes)
        if exc.status_code == 400 and isinstance(exc.__cause__, BodyTimeout):
            return error_response(408, str(exc.__cause__), headers={"Connection": "close"})
        if exc.status_code == 400 and detail == "There was an error parsing the body":
            message = body_parse_error(exc.__cause__)
            return error_response(422, f"body: {message}", [FieldError(field="body", message=message)])
        return error_response(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.detail, exc.errors, exc.headers)

    @app.exception_handler(Overloaded)
    async def _overloaded(_: Request, exc: Overloaded) -> JSONResponse:
        return error_response(503, str(exc), headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(RequestTimeout)
    async def _timeout(_: Request, exc: RequestTimeout) -> JSONResponse:
        return error_response(504, str(exc))

    @app.exception_handler(NonFiniteScores)
    async def _non_finite(request: Request, exc: NonFiniteScores) -> JSONResponse:
        log.error("%s", exc)
        request.app.state.health_error = str(exc)
        return error_response(500, str(exc))

    @app.exception_handler(LBNLError)
    async def _lbnl(_: Request, exc: LBNLError) -> JSONResponse:
        return error_response(422 if isinstance(exc, InvalidInputError) else 500, str(exc))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.error("internal error", exc_info=exc)
        return error_response(500, f"internal server error ({type(exc).__name__})")
