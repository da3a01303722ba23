"""``make demo``: rerank the bundled sample with the built-in default model."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import LBNLError
from .common import format_table, read_documents

QUERY = "What are the health benefits of green tea?"
SAMPLE = Path(__file__).resolve().parents[3] / "examples" / "sample.jsonl"


def main() -> int:
    from ..hardware import tune_allocator
    from ..reranker import Reranker

    tune_allocator()
    try:
        reranker = Reranker.from_pretrained()
        documents = read_documents(str(SAMPLE))
    except LBNLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    describe = getattr(reranker, "describe", None)
    note = f"the built-in default model, {reranker.name}" + (f", {describe()}" if describe else "")
    print(f"Reranking {SAMPLE.name} with {note}\nquery: {QUERY}\n")
    print(format_table(reranker.rerank(QUERY, documents)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
