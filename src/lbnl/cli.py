"""The ``lbnl`` command line: thin commands over the library.

Each command lives beside the code it drives and exposes ``register(subparsers)``; this module
only collects them, so ``lbnl --help`` stays fast and a command whose optional dependencies are
missing says which extra to install.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import InvalidInputError, LBNLError
from .jsonl import parse_lines

#: Modules that add subcommands, in help order.
COMMAND_MODULES = (
    "lbnl.cli",
    "lbnl.eval.cli",
    "lbnl.train.cli",
    "lbnl.serve.cli",
    "lbnl.batch",
    "lbnl.benchmark",
)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--dtype``, ``--device``, shared by every command that loads a model."""
    parser.add_argument("--model", default=None,
                        help="checkpoint directory or hub id (default: lbnl's built-in model)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the checkpoint's, "
                        "float32 on a CPU without fast bf16)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    parser.add_argument("--preset", default=None, choices=("default", "fast", "fastest"),
                        help="speed preset: default (the spec's scores), fast (16 documents per prompt), fastest "
                             "(16 per prompt, bf16 on CPUs with AMX and on GPUs, int8 on other CPUs); "
                             "see docs/performance.md")
    parser.add_argument("--no-fusion", action="store_true",
                        help="the model's own scores, even when the checkpoint ships fused with BM25 over "
                             "the request's documents (as lbnl-small does)")


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """``Reranker.from_pretrained`` keywords from the :func:`add_model_arguments` flags."""
    options: dict[str, Any] = {"dtype": args.dtype, "device": args.device, "preset": args.preset}
    if args.no_fusion:
        options["fuse_bm25"] = None
    return options


def read_documents(source: str) -> list[str]:
    """Documents from a file or ``-`` (stdin): JSON lines with a ``text`` field, or plain text, one per line."""
    if source == "-":
        raw = sys.stdin.read()
    else:
        path = Path(source)
        if not path.is_file():
            raise InvalidInputError(f"no documents file at {source}")
        raw = path.read_text(encoding="utf-8")
    lines = [line for line in raw.splitlines() if line.strip()]
    if not lines or not lines[0].lstrip().startswith(("{", '"')):
        return lines
    docs = []
    for n, item in parse_lines(lines, source):
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            item = item["text"]
        if not isinstance(item, str):
            raise InvalidInputError(f"{source}, line {n}: expected a JSON object with a string 'text' field")
        docs.append(item)
    return docs


def format_table(results: Sequence[Any], width: int = 100) -> str:
    """A ranked table: rank, score, input index and the start of each document."""
    rows = [f"{'rank':>4}  {'score':>8}  {'index':>5}  document"]
    for rank, r in enumerate(results, 1):
        text = " ".join(str(r.document if isinstance(r.document, str) else r.document.get("text", "")).split())
        if len(text) > width:
            text = text[: width - 1] + "…"
        rows.append(f"{rank:>4}  {r.relevance_score:>8.4f}  {r.index:>5}  {text}")
    return "\n".join(rows)


def _run_rerank(args: argparse.Namespace) -> int:
    from .reranker import Reranker

    documents = read_documents(args.documents)
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
    p.add_argument("--top-n", type=int, default=None, help="print only the best N")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    p.add_argument("--instruction", default=None, help="optional instruction placed in the prompt")
    p.add_argument("--max-query-length", type=int, default=512, help="query tokens kept (default 512)")
    p.add_argument("--max-doc-length", type=int, default=2048, help="tokens kept per document (default 2048)")
    p.set_defaults(func=_run_rerank)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lbnl", description="Last-but-not-late listwise reranking.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("lbnl"):
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except LBNLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        print(f"error: this command needs the optional package {exc.name!r}; "
              "install lbnl with its extras, e.g. pip install 'lbnl[all]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
