"""JSON lines reading shared by the CLI, the BEIR loader and the training data: one place that
skips blank lines, opens ``.gz`` files and turns a bad line into a message naming file and line."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from .errors import InvalidInputError


def open_text(path: str | Path) -> IO[str]:
    """A UTF-8 text handle on ``path``, decompressing when the name ends in ``.gz``."""
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def parse_lines(lines: Iterable[str], source: str | Path) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` for every non-blank line.

    Args:
        lines: the text lines, with or without their newlines.
        source: how to name the input in errors (a path, or ``-`` for stdin).

    Raises:
        InvalidInputError: a line is not valid JSON (the message names ``source`` and the line).
    """
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{source}, line {n}: not valid JSON ({exc.msg})") from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """:func:`parse_lines` over a file (plain or ``.gz``), read lazily."""
    with open_text(path) as handle:
        yield from parse_lines(handle, path)
