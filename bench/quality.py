"""SciFact nDCG@10 of one checkpoint at several block sizes and with int8 weights: what the fast presets cost.

    python bench/quality.py --model PATH [--block-sizes 125,32,16,8] [--quantize none,int8]
                            [--max-queries N] [--output runs/perf_quality.json]

Each setting reranks the same BM25 top-100 of the SciFact test queries through the evaluation
harness (``lbnl.eval``), so the numbers are those ``lbnl eval --model PATH --block-size N`` prints;
scores are cached per setting under ``runs/perf_quality/`` and an interrupted run resumes. The
table gives nDCG@10, its change against the spec's setting (block 125, float32) and the paired
randomisation-test p-value of that change, plus documents/s of the reranking.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lbnl.benchmark import find_scifact


def evaluate(model: str, block_size: int, quantize: str | None, data: Path, max_queries: int | None,
             out_dir: Path, batch_queries: int) -> dict:
    from lbnl.eval.beir import load_beir
    from lbnl.eval.run import EvalConfig, run_evaluation
    from lbnl.eval.scorers import LBNLScorer
    from lbnl.reranker import Reranker

    reranker = Reranker.from_pretrained(model, device="cpu", block_size=block_size, quantize=quantize)
    label = f"lbnl:{Path(model).name}@{block_size}" + (f"+{quantize}" if quantize else "")
    scorer = LBNLScorer(reranker, name=label)
    config = EvalConfig(max_queries=max_queries, batch_queries=batch_queries, fusion=())
    result = run_evaluation(load_beir(data, "test"), scorer, config, out_dir / label.replace(":", "_"),
                            progress=True, plot=False)
    return {"setting": label, "block_size": block_size, "quantize": quantize or "none",
            "ndcg@10": result.metrics[label]["ndcg@10"], "bm25_ndcg@10": result.metrics["bm25"]["ndcg@10"],
            "per_query": {q: v["ndcg@10"] for q, v in result.per_query[label].items()},
            "docs_per_second": result.timing.get("docs_per_second")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory (a trained LBNL model)")
    parser.add_argument("--data", default=None, help="SciFact BEIR directory (default: found beside the project)")
    parser.add_argument("--block-sizes", default="125,32,16,8")
    parser.add_argument("--quantize", default="none,int8", help="comma-separated: none, int8")
    parser.add_argument("--max-queries", type=int, default=None, help="seeded sample of test queries (default all 300)")
    parser.add_argument("--batch-queries", type=int, default=4)
    parser.add_argument("--runs", default="runs/perf_quality", help="where resumable scores go")
    parser.add_argument("--output", default=None, help="write the table as JSON")
    args = parser.parse_args(argv)
    data = Path(args.data) if args.data else find_scifact()
    if data is None:
        parser.error("SciFact not found; pass --data")
    from lbnl.eval.metrics import paired_tests

    rows = []
    for quantize in [q.strip() for q in args.quantize.split(",") if q.strip()]:
        for size in [int(b) for b in args.block_sizes.split(",") if b.strip()]:
            rows.append(evaluate(args.model, size, None if quantize == "none" else quantize, data, args.max_queries,
                                 Path(args.runs), args.batch_queries))
    base = next((r for r in rows if r["block_size"] == 125 and r["quantize"] == "none"), rows[0])
    print(f"{'setting':<40} {'nDCG@10':>8} {'delta':>8} {'p':>7} {'docs/s':>8}")
    for r in rows:
        ids = sorted(base["per_query"])
        test = paired_tests([base["per_query"][q] for q in ids], [r["per_query"][q] for q in ids], 10_000, 0)
        r["delta_vs_spec"] = r["ndcg@10"] - base["ndcg@10"]
        r["p_value"] = test["randomization_p"]
        print(f"{r['setting']:<40} {r['ndcg@10']:>8.4f} {r['delta_vs_spec']:>+8.4f} "
              f"{r['p_value']:>7.3f} {r['docs_per_second'] or 0:>8.2f}")
    if args.output:
        Path(args.output).write_text(json.dumps({"model": args.model, "data": str(data), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
