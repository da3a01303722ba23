"""``make demo``: rerank the bundled sample with the built-in default model."""

from __future__ import annotations

import sys
from pathlib import Path

from .cli import format_table, read_documents
from .errors import CheckpointError

QUERY = "What are the health benefits of green tea?"
SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample.jsonl"


def main() -> int:
    from .reranker import Reranker

    try:
        reranker = Reranker.from_pretrained()
        note = "the built-in default model, lbnl-small"
        if reranker.fuse_bm25 is not None:
            note += f" (fused with BM25 over these documents, model weight {reranker.fuse_bm25:g})"
    except CheckpointError as exc:
        from .models.random_init import build_random_checkpoint

        path = Path("cache") / "demo-tiny-random"
        if not (path / "config.json").exists():
            build_random_checkpoint(path)
        reranker = Reranker.from_pretrained(path)
        note = f"a tiny RANDOM model built on the spot (scores are meaningless): {exc}"
    print(f"Reranking {SAMPLE.name} with {note}\nquery: {QUERY}\n")
    print(format_table(reranker.rerank(QUERY, read_documents(str(SAMPLE)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
