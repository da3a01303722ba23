"""The ``lbnl serve`` command. Light at import: FastAPI, uvicorn and torch load only when it runs."""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..defaults import MAX_BATCH_TOKENS
from ..defaults import SERVE_PORT as DEFAULT_PORT
from .common import add_length_arguments, add_model_arguments, model_options


def _run_serve(args: argparse.Namespace) -> int:
    from ..hardware import tune_allocator
    from ..serve.app import ServeSettings, serve

    settings = ServeSettings(
        model_name=args.served_model_name,
        max_batch_tokens=args.max_batch_tokens,
        batch_wait_ms=args.batch_wait_ms,
        max_queue=args.max_queue,
        max_documents=args.max_documents,
        max_body_bytes=args.max_body_bytes,
        request_timeout=args.request_timeout,
        api_key=args.api_key or os.environ.get("LBNL_API_KEY") or None,
        max_query_length=args.max_query_length,
        max_doc_length=args.max_doc_length,
        batch_delay_ms=args.test_batch_delay_ms,
    )
    settings.check()
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
                   help="require 'Authorization: Bearer KEY' (default: $LBNL_API_KEY; unset means no key)")
    p.add_argument("--served-model-name", default=None,
                   help="model name shown in responses and /v1/models (default: the --model value)")
    p.add_argument("--max-batch-tokens", type=int, default=MAX_BATCH_TOKENS,
                   help="token budget of one batch of requests and of one forward (default 16384)")
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
    p.add_argument("--max-connections", type=int, default=1024,
                   help="connections handled at once; uvicorn answers 503 beyond (default 1024)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    p.add_argument("--test-batch-delay-ms", type=float, default=0.0,
                   help="TESTING ONLY: sleep this long before every batch to simulate a slow model "
                        "(used by the overload and shutdown tests; default 0)")
    p.set_defaults(func=_run_serve, extra="serve", needs=("fastapi", "uvicorn", "pydantic", "prometheus_client"))
