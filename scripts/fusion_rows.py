#!/usr/bin/env python3
"""nDCG@10 of score-fusion variants from the raw scores an ``lbnl eval`` run stored (no model needed).

    python scripts/fusion_rows.py --run runs/eval/v2-manpages-dev --data data/v2/heldout/manpages \\
        --split dev --fixed 0.5,0.6,0.7,0.8,0.9 --minmax 0.7

Rows: BM25 (first-stage order), the model alone, ``fixed:W`` (the ``coverage`` transform of ``lbnl.fusion``:
``W * cosine + (1 - W) * query-term coverage``, request-independent) and ``minmax:W`` (v1's
per-request ``W * minmax(model) + (1 - W) * minmax(BM25 over the candidates)``), each with the paired
randomisation test against BM25 that ``lbnl eval`` reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="an lbnl eval output directory (holds scores-*.jsonl)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="test")
    ap.add_argument("--fixed", default="0.5,0.6,0.7,0.8,0.9")
    ap.add_argument("--minmax", default="0.7")
    ap.add_argument("--output", default=None)
    args = ap.parse_args()

    from lbnl.checkpoints import Fusion
    from lbnl.fusion import fuse_scores
    from lbnl.ir.beir import load_beir
    from lbnl.ir.metrics import mean_metrics, paired_tests, per_query_metrics

    ds = load_beir(args.data, args.split)
    (scores_file,) = sorted(Path(args.run).glob("scores-*.jsonl"))
    rows = [json.loads(line) for line in open(scores_file)][1:]
    rows = [r for r in rows if r["qid"] in ds.qrels]
    qids = [r["qid"] for r in rows]

    def rank(fn) -> dict[str, list[str]]:
        out = {}
        for r in rows:
            texts = [ds.document_text(d) for d in r["doc_ids"]]
            s = fn(ds.queries[r["qid"]], texts, r["scores"])
            order = sorted(range(len(s)), key=lambda i: (-s[i], i))
            out[r["qid"]] = [r["doc_ids"][i] for i in order]
        return out

    systems = {"bm25": {r["qid"]: r["doc_ids"] for r in rows}, "model": rank(lambda q, t, s: s)}
    for w in [float(x) for x in args.fixed.split(",") if x]:
        systems[f"fixed:{w}"] = rank(lambda q, t, s, w=w: fuse_scores(Fusion(w, "coverage"), q, t, s))
    for w in [float(x) for x in args.minmax.split(",") if x]:
        systems[f"minmax:{w}"] = rank(lambda q, t, s, w=w: fuse_scores(Fusion(w, "minmax"), q, t, s))
    base = per_query_metrics(ds.qrels, systems["bm25"], qids)
    report = {"run": str(scores_file), "data": args.data, "split": args.split, "queries": len(qids), "rows": {}}
    for name, ranking in systems.items():
        pq = per_query_metrics(ds.qrels, ranking, qids)
        test = paired_tests([base[q]["ndcg@10"] for q in qids], [pq[q]["ndcg@10"] for q in qids])
        report["rows"][name] = {"ndcg@10": mean_metrics(pq)["ndcg@10"], "delta": test["mean_delta"],
                                "randomization_p": test["randomization_p"]}
        print(f"{name:14s} nDCG@10 {report['rows'][name]['ndcg@10']:.4f}  delta {test['mean_delta']:+.4f}  "
              f"p {test['randomization_p']:.4f}")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
