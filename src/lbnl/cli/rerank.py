"""``lbnl rerank``: rank a documents file for one query."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import DOCUMENT_FORMATS, add_length_arguments, add_model_arguments, format_table, model_options, read_documents


def _run(args: argparse.Namespace) -> int:
    from ..hardware import tune_allocator
    from ..reranker import Reranker

    documents = read_documents(args.documents, args.format)
    tune_allocator()
    reranker = Reranker.from_pretrained(args.model, **model_options(args))
    results = reranker.rerank(args.query, documents, top_n=args.top_n, max_query_length=args.max_query_length,
                              max_doc_length=args.max_doc_length, instruction=args.instruction)
    if args.json:
        for r in results:
            print(json.dumps({"index": r.index, "relevance_score": r.relevance_score, "document": r.document},
                             ensure_ascii=False))
    else:
        print(format_table(results))
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("rerank", help="rank documents for one query",
                              description="Rank documents for a query and print them best first.")
    add_model_arguments(p)
    p.add_argument("--query", "-q", required=True, help="the query")
    p.add_argument("--documents", "-d", required=True,
                   help="file of documents: JSON lines with a 'text' field, or plain text one per line; - for stdin")
    p.add_argument("--format", default="auto", choices=DOCUMENT_FORMATS,
                   help="documents file format (default auto: JSON lines when the first line starts with { or \")")
    p.add_argument("--top-n", type=int, default=None, help="print only the best N")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.add_argument("--instruction", default=None, help="optional instruction placed in the prompt")
    add_length_arguments(p)
    p.set_defaults(func=_run)
