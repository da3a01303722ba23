"""ASGI middleware in front of the app: the API key check and the request body size limit."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_response, too_large
from .schemas import FieldError

#: Paths answered without an API key: probes, scraping and the API docs.
OPEN_PATHS = frozenset({"/health", "/metrics", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


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
                response = error_response(
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
                response = error_response(413, too_large(self.max_body_bytes), headers={"Connection": "close"})
                await response(scope, receive, send)
                return
            encoding = headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                message = f"Content-Encoding {encoding!r} is not supported; send the JSON uncompressed"
                response = error_response(422, f"body: {message}", [FieldError(field="body", message=message)],
                                           headers={"Connection": "close"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
