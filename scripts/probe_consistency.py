#!/usr/bin/env python3
"""Order consistency and lone-document separation of a reranker on held-out BEIR queries (issue 16).

For each query of ``--split`` with a judged relevant document, the hard negative is the highest BM25
hit (over the whole corpus) that is not judged relevant. Then:

- order consistency: the winner of ``[relevant, negative]`` equals the winner of ``[negative, relevant]``;
- pair accuracy: the relevant document wins, in each order;
- lone separation: the relevant document scored alone beats the negative scored alone.

    python scripts/probe_consistency.py --model src/lbnl/checkpoints/weights/lbnl-small-v2 \\
        --data data/v2/heldout/manpages --data data/v2/heldout/pydocs --scoring fixed:0.7

``--scoring``: ``shipped`` (whatever the checkpoint records, e.g. v1's per-request min-max BM25
fusion, v2's coverage fusion), ``model`` (raw cosines), or ``fixed:W`` (coverage fusion with weight W).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint or adapter directory (default: built-in)")
    ap.add_argument("--data", action="append", required=True, help="BEIR directory (repeatable)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-queries", type=int, default=100)
    ap.add_argument("--max-doc-length", type=int, default=128)
    ap.add_argument("--scoring", default="shipped")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--symmetric", action="store_true", help="read each list in both orders (Reranker(symmetric=True))")
    ap.add_argument("--output", default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    import torch

    from lbnl import Reranker
    from lbnl.checkpoints import Fusion
    from lbnl.ir.beir import load_beir
    from lbnl.ir.bm25 import BM25Index

    fusion = "checkpoint" if args.scoring == "shipped" else None
    if args.scoring.startswith("fixed:"):
        fusion = Fusion(float(args.scoring.split(":")[1]), "coverage")
    reranker = Reranker.from_pretrained(args.model, dtype=getattr(torch, args.dtype), fusion=fusion,
                                        symmetric=args.symmetric)

    def score(query: str, docs: list[str]) -> list[float]:
        return reranker.score(query, docs, max_doc_length=args.max_doc_length)

    report = {"model": args.model or "built-in", "scoring": args.scoring, "symmetric": args.symmetric,
              "split": args.split, "sources": {}}
    totals = {"queries": 0, "consistent": 0, "right_both": 0, "right_forward": 0, "right_reversed": 0,
              "lone_separated": 0}
    for path in args.data:
        ds = load_beir(path, args.split)
        qids = [q for q in ds.query_ids if any(s > 0 for s in ds.qrels[q].values())][: args.max_queries]
        index = BM25Index.build(list(ds.corpus), [ds.document_text(d) for d in ds.corpus])
        hits = index.search([ds.queries[q] for q in qids], 30)
        c = dict.fromkeys(totals, 0)
        for q, row in zip(qids, hits):
            rel = {d for d, s in ds.qrels[q].items() if s > 0}
            negs = [d for d, _ in row if d not in rel]
            if not negs:
                continue
            pos_text = ds.document_text(sorted(rel)[0])
            neg_text = ds.document_text(negs[0])
            query = ds.queries[q]
            fwd = score(query, [pos_text, neg_text])
            rev = score(query, [neg_text, pos_text])
            win_fwd, win_rev = fwd[0] > fwd[1], rev[1] > rev[0]
            alone_pos, alone_neg = score(query, [pos_text])[0], score(query, [neg_text])[0]
            c["queries"] += 1
            c["consistent"] += int(win_fwd == win_rev)
            c["right_forward"] += int(win_fwd)
            c["right_reversed"] += int(win_rev)
            c["right_both"] += int(win_fwd and win_rev)
            c["lone_separated"] += int(alone_pos > alone_neg)
        for k in totals:
            totals[k] += c[k]
        report["sources"][Path(path).name] = {k: (v / c["queries"] if k != "queries" else v) for k, v in c.items()}
    report["all"] = {k: (v / totals["queries"] if k != "queries" else v) for k, v in totals.items()}
    text = json.dumps(report, indent=1)
    print(text)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
