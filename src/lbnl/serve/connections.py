"""Connection hygiene: idle or slow clients cannot hold the server (issue #18, row 2).

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no deadline for a
request's headers or body, and its ``limit_concurrency`` counts every open connection, so 1,024
sockets that never send a byte make every other client get 503 for as long as they stay open.
Here:

- :func:`protocol_class` makes an h11 protocol with a **header deadline** (a connection that has not
  sent a complete request head within ``header_timeout`` seconds of connecting, or of its previous
  response, is closed) and a **connection cap that evicts idle connections**: when more than
  ``max_connections`` are open, the one that has waited longest for its next request head is
  closed to make room (failing that, the oldest one still sending a request body); a connection
  whose request is being answered is never evicted.
- :class:`BodyDeadlineMiddleware` gives a request ``body_timeout`` seconds from its head to the
  end of its body (then 408), and caps the requests in progress at once (then 503); requests
  still receiving their body do not count (the connection cap and the deadline bound those).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTimeout(Exception):
    """The request body did not arrive within the deadline: answer 408 and close the connection."""

    def __init__(self, seconds: float):
        super().__init__(f"the request body was not received within {seconds:g} s")
        self.seconds = seconds


def protocol_class(header_timeout: float, max_connections: int | None) -> type:
    """An h11 protocol class for ``uvicorn.Config(http=...)`` with a header deadline and idle eviction."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _waiting_since = 0.0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._await_head()
            if max_connections is not None and len(self.connections) > max_connections:
                open_ = [p for p in self.connections if isinstance(p, GuardedH11Protocol) and p is not self
                         and not p.transport.is_closing()]
                if len(open_) < max_connections:
                    return
                # Idle connections first, then ones still sending a request body, the longest waiting first.
                candidates = [p for p in open_ if p.waiting_for_head() or p.receiving_body()]
                victim = min(candidates, key=lambda p: (not p.waiting_for_head(), p._waiting_since),
                             default=self)
                victim._close()

        def waiting_for_head(self) -> bool:
            """No request in progress: before the first request head or after a finished response."""
            return self.cycle is None or self.cycle.response_complete

        def receiving_body(self) -> bool:
            """A request head arrived and its body is still coming in."""
            return (self.cycle is not None and not self.cycle.response_complete
                    and self.conn.their_state is h11.SEND_BODY)

        def _await_head(self) -> None:
            self._waiting_since = time.monotonic()
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(header_timeout, self._head_deadline)

        def _head_deadline(self) -> None:
            self._header_timer = None
            if self.waiting_for_head():
                self._close()

        def _close(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            if not self.transport.is_closing():
                try:
                    self.conn.send(h11.ConnectionClosed())
                except h11.LocalProtocolError:
                    pass
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            super().connection_lost(exc)

    return GuardedH11Protocol


class BodyDeadlineMiddleware:
    """A deadline for reading each request body, and a cap on the requests in progress.

    Args:
        body_timeout: seconds from the request head to the last byte of its body.
        max_requests: HTTP requests handled at once; more get 503 (JSON) with ``Retry-After: 1``.
        reject: builds the ASGI response for ``(status, detail, headers)``.
    """

    def __init__(self, app: ASGIApp, body_timeout: float, max_requests: int | None, reject: Any):
        self.app = app
        self.body_timeout = body_timeout
        self.max_requests = max_requests
        self.reject = reject
        self.in_progress = 0
        self.reading = 0  # of those, requests still receiving their body (bounded by the connection cap)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.max_requests is not None and self.in_progress - self.reading >= self.max_requests:
            response = self.reject(503, f"the server is busy: {self.max_requests} requests are in progress; "
                                        "retry later", {"Retry-After": "1"})
            await response(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        headers = dict(scope.get("headers") or [])
        body_done = headers.get(b"content-length", b"0") in (b"0", b"") and b"transfer-encoding" not in headers
        started = False

        def finish_body() -> None:
            nonlocal body_done
            if not body_done:
                body_done = True
                self.reading -= 1

        async def timed_receive() -> Message:
            if body_done:
                return await receive()
            remaining = deadline - loop.time()
            try:
                message = await asyncio.wait_for(receive(), max(remaining, 0.0))
            except asyncio.TimeoutError:
                raise BodyTimeout(self.body_timeout) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                finish_body()
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        self.in_progress += 1
        if not body_done:
            self.reading += 1
        try:
            await self.app(scope, timed_receive, tracked_send)
        except BodyTimeout as exc:
            if started:
                raise
            await self.reject(408, str(exc), {"Connection": "close"})(scope, receive, send)
        finally:
            finish_body()
            self.in_progress -= 1
