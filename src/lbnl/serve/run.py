"""Running the app: the listening socket, logging, uvicorn with lbnl's connection protocol, graceful stop."""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import sys
from typing import Any

from ..errors import InvalidInputError
from .app import create_app
from .settings import ServeSettings

log = logging.getLogger("lbnl.serve")


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
