"""A toy BEIR directory shared by the training-data tests (12 topics, train and test qrels)."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

from lbnl.train.config import DataConfig

TOPICS = ["coral reef bleaching", "insulin resistance", "volcanic ash clouds", "honeybee colony collapse",
          "graphene transistors", "malaria vaccine trials", "glacier retreat", "antibiotic resistance genes",
          "solar flare forecasting", "sleep deprivation memory", "microplastic pollution", "quantum error correction"]


FILLER = "study results data method analysis sample effect model group level report patients".split()


def write_beir(root: Path, gz: bool = True) -> Path:
    """A small BEIR directory: 12 queries, 2 documents per topic plus unrelated ones, train and test qrels."""
    rng = random.Random(0)
    root.mkdir(parents=True)
    corpus, queries, train, test = [], [], [], []
    for t, topic in enumerate(TOPICS):
        for k in range(2):
            words = " ".join(rng.choice(FILLER) for _ in range(12))
            corpus.append({"_id": f"d{t}-{k}", "title": f"{topic} part {k}", "text": f"{topic} {words}"})
        queries.append({"_id": f"q{t}", "text": f"what is known about {topic}"})
        (test if t >= 10 else train).append((f"q{t}", f"d{t}-0", 1))
        if t % 2 == 0 and t < 10:
            train.append((f"q{t}", f"d{t}-1", 1))  # a second positive, which must never be a negative
        elif t < 10:
            train.append((f"q{t}", f"d{t}-1", 0))  # judged but not relevant: a valid negative
    for i in range(20):
        corpus.append({"_id": f"x{i}", "title": "", "text": " ".join(rng.choice(FILLER) for _ in range(15))})

    def dump(name: str, rows: list[dict]) -> None:
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)

    dump("corpus.jsonl", corpus)
    dump("queries.jsonl", queries)
    (root / "qrels").mkdir()
    for split, rows in (("train", train), ("test", test)):
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in rows]
        (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


def data_config(path: Path, **kw) -> DataConfig:
    base = dict(path=str(path), negatives=3, negative_pool=6, validation_queries=2, validation_depth=5)
    base.update(kw)
    return DataConfig(**base)
