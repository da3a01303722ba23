"""What every ``lbnl`` command shares: model options, length options, reading documents files, tables."""

from __future__ import annotations

import argparse
import codecs
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Sequence

from ..defaults import MAX_DOC_LENGTH, MAX_QUERY_LENGTH
from ..errors import InvalidInputError
from ..jsonl import parse_lines
from ..truncation import check_unicode

#: ``--format`` of a documents file.
DOCUMENT_FORMATS = ("auto", "text", "jsonl")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--dtype``, ``--device``, ``--preset``, ``--quantize``, ``--no-fusion``, ``--symmetric``: every
    command that loads a model."""
    parser.add_argument("--model", default=None,
                        help="checkpoint directory, built-in model name or hub id (default: lbnl's built-in model)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the checkpoint's, "
                        "float32 on a CPU without fast bf16)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    parser.add_argument("--preset", default=None, choices=("default", "fast", "fastest"),
                        help="speed preset: default (the spec's scores), fast (16 documents per prompt), fastest "
                             "(16 per prompt, bf16 on GPUs and AMX CPUs, int8 on other CPUs); "
                             "see docs/performance.md")
    parser.add_argument("--quantize", default=None, choices=("int8", "int8-plain", "int8-dynamic", "none"),
                        help="int8: the decoder's matmuls in int8 (int8 weights and per-token activations, a "
                             "few calibrated outlier channels kept in the float dtype; fast on CPUs with VNNI and "
                             "no AMX); "
                             "int8-plain: the same without outlier channels; int8-dynamic: torch.ao dynamic "
                             "quantization of a float32 model; none (default: the preset's); scores change, see "
                             "docs/performance.md")
    parser.add_argument("--no-fusion", action="store_true",
                        help="the model's own scores, even when the checkpoint ships fused with BM25 over "
                             "the request's documents")
    parser.add_argument("--symmetric", action="store_true",
                        help="also read every list reversed and average each document's two scores: the order of "
                             "two documents no longer decides between them (twice the cost)")


def add_length_arguments(parser: argparse.ArgumentParser) -> None:
    """``--max-query-length`` and ``--max-doc-length`` with the spec's defaults."""
    parser.add_argument("--max-query-length", type=int, default=MAX_QUERY_LENGTH,
                        help=f"query tokens kept (default {MAX_QUERY_LENGTH})")
    parser.add_argument("--max-doc-length", type=int, default=MAX_DOC_LENGTH,
                        help=f"tokens kept per document (default {MAX_DOC_LENGTH})")


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """``Reranker.from_pretrained`` keywords from the :func:`add_model_arguments` flags."""
    options: dict[str, Any] = {"dtype": args.dtype, "device": args.device, "preset": args.preset}
    if getattr(args, "quantize", None) is not None:
        options["quantize"] = args.quantize
    if args.no_fusion:
        options["fusion"] = None
    if getattr(args, "symmetric", False):
        options["symmetric"] = True
    return options


def _decode(raw: bytes, source: str, line: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{source}, line {line}: not UTF-8 text (byte {exc.start + 1} of the line); lbnl "
                                "reads UTF-8 documents files") from None


def _lines(source: str) -> Iterator[str]:
    """Every line of ``source`` decoded, without its ``\\n`` or ``\\r\\n``; read one line at a time, so
    memory follows the documents kept, not the file (binary iteration ends lines at ``\\n`` only)."""
    if source == "-":
        handle: IO[bytes] = sys.stdin.buffer
    else:
        path = Path(source)
        if not path.is_file():
            raise InvalidInputError(f"no documents file at {source}")
        try:
            handle = open(path, "rb")
        except OSError as exc:
            raise InvalidInputError(f"cannot read {source}: {exc.strerror or exc}") from None
    try:
        for number, raw in enumerate(handle, 1):
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            yield _decode(raw, source, number).removesuffix("\n").removesuffix("\r")
    finally:
        if handle is not sys.stdin.buffer:
            handle.close()


def read_documents(source: str, fmt: str = "auto") -> list[str]:
    """Documents from a file or ``-`` (stdin).

    Args:
        source: a path, or ``-`` for standard input.
        fmt: ``text`` (one document per line), ``jsonl`` (JSON lines: objects with a string ``text``
            field, or strings), or ``auto``: JSON lines when the first non-blank line starts with
            ``{`` or ``"``, else text; a file that looks like JSON lines but is not says so and names
            ``--format text``.

    Lines end at ``\\n`` (a ``\\r`` before it is dropped) and nowhere else, so a document's own
    separators (form feeds, U+2028 ...) stay inside it; blank lines are skipped; a UTF-8 byte-order
    mark is ignored; a JSON string holding a lone surrogate is refused with its line.
    """
    if fmt not in DOCUMENT_FORMATS:
        raise InvalidInputError(f"unknown documents format {fmt!r}; use one of {', '.join(DOCUMENT_FORMATS)}")
    lines = _lines(source)
    hint = ""
    if fmt == "auto":
        head: list[str] = []
        for line in lines:
            head.append(line)
            if line.strip():
                break
        fmt = "jsonl" if head and head[-1].lstrip().startswith(("{", '"')) else "text"
        if fmt == "jsonl":
            hint = " (read as JSON lines because the first line starts with { or \"; pass --format text for plain text)"
        lines = itertools.chain(head, lines)
    if fmt == "text":
        return [line for line in lines if line.strip()]
    docs = []
    try:
        for n, item in parse_lines(lines, source):
            if isinstance(item, dict) and isinstance(item.get("text"), str):
                item = item["text"]
            if not isinstance(item, str):
                raise InvalidInputError(f"{source}, line {n}: expected a JSON object with a string 'text' field")
            docs.append(check_unicode(item, f"{source}, line {n}"))
    except InvalidInputError as exc:
        raise InvalidInputError(f"{exc}{hint}") from None
    return docs


def format_table(results: Sequence[Any], width: int = 100) -> str:
    """A ranked table: rank, score, input index and the start of each document."""
    from ..base import document_text

    rows = [f"{'rank':>4}  {'score':>8}  {'index':>5}  document"]
    for rank, r in enumerate(results, 1):
        text = " ".join(document_text(r.document, r.index).split())
        if len(text) > width:
            text = text[: width - 1] + "…"
        rows.append(f"{rank:>4}  {r.relevance_score:>8.4f}  {r.index:>5}  {text}")
    return "\n".join(rows)
