"""The ``lbnl serve`` command. Light at import: FastAPI, uvicorn and torch load only when it runs."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..defaults import MAX_BATCH_TOKENS
from ..defaults import SERVE_PORT as DEFAULT_PORT
from .common import add_length_arguments, add_model_arguments, model_options


def _strip_newline(key: str) -> str:
    """Drop one trailing newline (``\\n`` or ``\\r\\n``), as ``echo KEY > file`` or ``$(cat file)`` leave it."""
    if key.endswith("\r\n"):
        return key[:-2]
    return key[:-1] if key.endswith("\n") else key


def resolve_api_key(args: argparse.Namespace, environ: Any = os.environ) -> str | None:
    """The API key from ``--api-key``, ``--api-key-file`` or ``$LBNL_API_KEY``; ``None`` with ``--no-auth``.

    An empty key is an error (``--api-key "$UNSET"`` must not turn auth off): serving without a key
    takes giving none at all, or ``--no-auth``.
    """
    from ..errors import InvalidInputError

    given = [name for name, value in (("--api-key", args.api_key), ("--api-key-file", args.api_key_file))
             if value is not None]
    if args.no_auth and given:
        raise InvalidInputError(f"--no-auth and {given[0]} contradict each other; give one")
    if len(given) > 1:
        raise InvalidInputError("give --api-key or --api-key-file, not both")
    if args.no_auth:
        return None
    if args.api_key is not None:
        key, source = args.api_key, "--api-key"
    elif args.api_key_file is not None:
        try:
            with open(args.api_key_file, encoding="utf-8") as f:
                key = _strip_newline(f.read())
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"cannot read --api-key-file {args.api_key_file}: {exc}") from None
        source = f"--api-key-file {args.api_key_file}"
    elif "LBNL_API_KEY" in environ:
        key, source = _strip_newline(environ["LBNL_API_KEY"]), "LBNL_API_KEY"
    else:
        return None
    if not key.strip():
        raise InvalidInputError(f"the API key from {source} is empty; give a key, or --no-auth to serve without one")
    if key != key.strip() or "\n" in key or "\r" in key:
        raise InvalidInputError(f"the API key from {source} has leading or trailing whitespace or a line break; "
                                "a client cannot send it in a header")
    return key


def _run_serve(args: argparse.Namespace) -> int:
    from ..hardware import tune_allocator
    from ..serve.run import serve
    from ..serve.settings import ServeSettings

    settings = ServeSettings(
        model_name=args.served_model_name,
        max_batch_tokens=args.max_batch_tokens,
        batch_wait_ms=args.batch_wait_ms,
        max_queue=args.max_queue,
        max_documents=args.max_documents,
        max_body_bytes=args.max_body_bytes,
        request_timeout=args.request_timeout,
        api_key=resolve_api_key(args),
        max_query_length=args.max_query_length,
        max_doc_length=args.max_doc_length,
        max_request_tokens=args.max_request_tokens,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        batch_delay_ms=args.test_batch_delay_ms,
    )
    settings.check()
    if args.api_key is not None:
        import logging

        logging.getLogger("lbnl.serve").warning(
            "--api-key puts the key in the process list (ps); prefer --api-key-file or LBNL_API_KEY")
    from ..reranker import Reranker

    tune_allocator()

    reranker = Reranker.from_pretrained(args.model, **model_options(args), max_batch_tokens=settings.max_batch_tokens)
    serve(reranker, settings, host=args.host, port=args.port, log_level=args.log_level,
          access_log=not args.no_access_log, max_connections=args.max_connections)
    return 0


def register(subparsers: Any) -> None:

    p = subparsers.add_parser(
        "serve", help="serve a rerank HTTP API (Jina/Cohere compatible)",
        description="Serve POST /v1/rerank (and /rerank) in the Jina/Cohere rerank API shape, with "
                    "/health, /v1/models, Prometheus /metrics and OpenAPI docs at /docs. "
                    "SIGTERM or Ctrl-C stops it gracefully.",
    )
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: local clients only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"TCP port (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (visible in ps: prefer --api-key-file or "
                        "$LBNL_API_KEY); an empty key is an error")
    p.add_argument("--api-key-file", default=None, metavar="PATH",
                   help="read the key from a file (one trailing newline is dropped)")
    p.add_argument("--no-auth", action="store_true",
                   help="serve without a key even if LBNL_API_KEY is set (without any key given, no key is needed)")
    p.add_argument("--served-model-name", default=None,
                   help="model name shown in responses and /v1/models (default: the model's own name: "
                        "lbnl-small-v3, the hub id, or the checkpoint directory's name; never a path)")
    p.add_argument("--max-batch-tokens", type=int, default=MAX_BATCH_TOKENS,
                   help=f"token budget of one batch of requests and of one forward (default {MAX_BATCH_TOKENS})")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to batch with (default 5)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests allowed to wait for the model; more get 503 + Retry-After (default 64)")
    p.add_argument("--max-documents", type=int, default=1000, help="documents per request (default 1000)")
    p.add_argument("--max-body-bytes", type=int, default=16 * 2**20,
                   help="largest request body; larger gets 413 (default 16 MiB)")
    p.add_argument("--request-timeout", type=float, default=60.0,
                   help="seconds a request may take, queueing included; later gets 504 (default 60)")
    add_length_arguments(p)
    p.add_argument("--max-request-tokens", type=int, default=262144,
                   help="query and document tokens (after truncation) per request; more gets 413 (default 262144)")
    p.add_argument("--max-connections", type=int, default=1024,
                   help="open connections kept; beyond it the longest-idle one is closed; also requests "
                        "handled at once, 503 beyond (default 1024)")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a connection has to send a request head; then it is closed (default 10)")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds from a request head to the end of its body; later gets 408 (default 30)")
    p.add_argument("--keep-alive-timeout", type=float, default=5.0,
                   help="seconds an idle keep-alive connection stays open (default 5)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    p.add_argument("--test-batch-delay-ms", type=float, default=0.0,
                   help="TESTING ONLY: sleep this long before every batch to simulate a slow model "
                        "(used by the overload and shutdown tests; default 0)")
    p.set_defaults(func=_run_serve, extra="serve", needs=("fastapi", "uvicorn", "pydantic", "prometheus_client"))
