"""Workloads and their inputs: ``QUERIESxDOCUMENTSxTOKENS`` and the texts a bench call scores, or ``T<N>``,
one forward of one prompt of exactly N tokens.

Every path of a run scores the same inputs, built here once per workload: real SciFact text
(``$LBNL_SCIFACT`` or ``--data``) cut to an exact token length, or seeded synthetic text when
the data is absent, so runs on machines without the data still work and stay reproducible.
"""

from __future__ import annotations

import gzip
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError

#: The issue's workloads: queries x documents x tokens per document.
DEFAULT_WORKLOADS = ("1x20x256", "1x100x128", "16x20x128")
QUICK_WORKLOADS = ("1x6x48", "1x20x16", "3x4x24")


@dataclass(frozen=True)
class Workload:
    """``queries`` queries, each with ``documents`` documents of exactly ``tokens`` tokens."""

    queries: int
    documents: int
    tokens: int

    @property
    def name(self) -> str:
        return f"{self.queries}x{self.documents}x{self.tokens}"

    @classmethod
    def parse(cls, text: str) -> "Workload":
        parts = text.lower().split("x")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 3 or min(values) <= 0:
            raise InvalidInputError(f"workload {text!r} is not QUERIESxDOCUMENTSxTOKENS, e.g. 1x20x256")
        return cls(*values)


@dataclass(frozen=True)
class ForwardWorkload:
    """One decoder forward over one prompt of exactly ``tokens`` tokens (``T2048``): the backbone alone, no
    scoring. The prompt is a real one (a query and as many documents as fit, the last cut to length, up to
    and including the rerank token), so every path reads hidden states at the same embed and rerank tokens."""

    tokens: int

    @property
    def name(self) -> str:
        return f"T{self.tokens}"


def parse_workload(text: str) -> Workload | ForwardWorkload:
    """``QUERIESxDOCUMENTSxTOKENS`` (a rerank call) or ``T<N>`` (one forward of an N-token prompt)."""
    text = text.strip()
    if text[:1] in ("T", "t"):
        if not text[1:].isdigit() or int(text[1:]) <= 0:
            raise InvalidInputError(f"workload {text!r} is not T<TOKENS>, e.g. T2048")
        return ForwardWorkload(int(text[1:]))
    return Workload.parse(text)


def forward_prompt(tokenizer: Any, length: int, data: Path | None, embed_id: int, rerank_id: int,
                   doc_tokens: int = 256) -> tuple[list[int], list[int], str]:
    """``(token ids, read positions, source)`` of a prompt of ``length`` tokens ending at its rerank token: one
    query and ``doc_tokens``-token documents, the last one cut (or let run longer) so the prompt has exactly
    that length, from ``data`` or synthetic text like :func:`build_inputs` (when no cut lands on the length,
    the longest prompt below it). Read positions: every embed token, then the rerank token."""
    from ..prompt import build_prompt, truncate

    def ids_of(docs: list[str]) -> list[int]:
        ids = tokenizer(build_prompt(query, docs), add_special_tokens=True)["input_ids"]
        return ids[: len(ids) - ids[::-1].index(rerank_id)]

    def longest(kept: list[str], raw: str, most: int) -> list[int]:
        """The longest prompt of ``kept`` plus a cut of ``raw`` (1 to ``most`` tokens) within ``length``."""
        found: list[int] = []
        low, high = 1, most
        while low <= high:
            mid = (low + high) // 2
            ids = ids_of(kept + [truncate(raw, tokenizer, mid)[0]])
            if len(ids) <= length:
                found, low = ids, mid + 1
            else:
                high = mid - 1
        return found

    queries, documents, source = build_inputs(Workload(1, length // doc_tokens + 2, doc_tokens), tokenizer, data)
    query, raw = queries[0], documents[0]
    texts = [truncate(d, tokenizer, doc_tokens)[0] for d in raw]
    if len(ids_of([])) > length:
        raise InvalidInputError(f"a prompt needs at least {len(ids_of([]))} tokens; T{length} is too short")
    full = 0
    while full < len(texts) and len(ids_of(texts[: full + 1])) <= length:
        full += 1
    best = ids_of(texts[:full])
    if len(best) < length and full < len(texts):  # the next document, cut
        best = max(best, longest(texts[:full], raw[full], doc_tokens), key=len)
    if len(best) < length and full > 0:  # or the last whole one, longer than doc_tokens
        best = max(best, longest(texts[: full - 1], raw[full - 1], 2 * doc_tokens), key=len)
    read = [i for i, t in enumerate(best) if t == embed_id] + [len(best) - 1]
    return best, read, source


def find_scifact() -> Path | None:
    """The BEIR SciFact directory named by ``$LBNL_SCIFACT`` when it holds the corpus, else ``None``
    (the bench then uses synthetic text)."""
    env = os.environ.get("LBNL_SCIFACT")
    if env and (Path(env) / "corpus.jsonl.gz").exists() and (Path(env) / "queries.jsonl.gz").exists():
        return Path(env).resolve()
    return None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def build_inputs(workload: Workload, tokenizer: Any, data: Path | None, seed: int = 0
                 ) -> tuple[list[str], list[list[str]], str]:
    """Queries and documents for a workload: a BEIR set's queries and documents holding at least ``tokens`` tokens
    (cut to exactly that many by ``max_doc_length``), or seeded synthetic text when ``data`` is ``None``."""
    rng = random.Random(seed)
    if data is not None:
        queries = [q["text"] for q in _jsonl(data / "queries.jsonl.gz")]
        corpus = [f"{d.get('title', '')} {d.get('text', '')}".strip() for d in _jsonl(data / "corpus.jsonl.gz")]
        rng.shuffle(corpus)
        pool: list[str] = []
        need = workload.documents * min(workload.queries, 4)
        for start in range(0, len(corpus), 512):
            chunk = corpus[start:start + 512]
            counts = [len(ids) for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]]
            pool += [t for t, n in zip(chunk, counts) if n >= workload.tokens]
            if len(pool) >= need:
                break
        if len(pool) >= workload.documents:
            picked = rng.sample(queries, workload.queries)
            return picked, [rng.sample(pool, workload.documents) for _ in picked], f"corpus text ({data})"
    words = ("protein cell study risk trial patients gene expression effect dose mouse model tumor "
             "immune response blood level increase reduce association cohort analysis therapy").split()
    text = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
    queries = [text(12) for _ in range(workload.queries)]
    return queries, [[text(workload.tokens * 2) for _ in range(workload.documents)] for _ in queries], "synthetic"
