"""SciFact nDCG@10 of one checkpoint at several block sizes and weight types: what the fast presets cost.

    python bench/quality.py --model PATH [--block-sizes 125,32,16,8] [--weights float32,bfloat16,int8]
                            [--top-k 100] [--max-doc-length 2048] [--max-queries N] [--output FILE.json]

Each setting reranks the same BM25 top-k of the SciFact test queries through the evaluation
harness (``lbnl.eval``), so the numbers are those ``lbnl eval --model PATH --block-size N --dtype D``
prints; scores are cached per setting under ``runs/perf_quality/`` and an interrupted run resumes.
The table gives nDCG@10, its change against the spec's setting (block 125, float32), the paired
randomisation-test p-value of that change, the largest score difference from the spec's setting,
and documents/s of the reranking. Scores only: candidate-BM25 fusion is turned off.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lbnl.bench import find_scifact


#: weights setting -> (dtype, quantization, attention kernel of the fast path)
WEIGHTS = {"float32": ("float32", None, "auto"), "bfloat16": ("bfloat16", None, "auto"),
           "bfloat16-sdpa": ("bfloat16", None, "sdpa"), "bfloat16-chunked": ("bfloat16", None, "chunked"),
           "bfloat16-amx": ("bfloat16", None, "amx"),
           "int8": ("bfloat16", "int8", "auto"), "int8-attn": ("bfloat16", "int8", "int8"),
           "int8-dynamic": ("float32", "int8-dynamic", "auto")}


def evaluate(model: str, block_size: int, weights: str, data: Path, args: argparse.Namespace) -> dict:
    from lbnl.ir.beir import load_beir
    from lbnl.eval.run import EvalConfig, run_evaluation
    from lbnl.eval.scorers import LBNLScorer
    from lbnl.reranker import Reranker

    dtype, quantize, attention = WEIGHTS[weights]
    reranker = Reranker.from_pretrained(model, device="cpu", block_size=block_size, dtype=dtype, quantize=quantize,
                                        fusion=None)
    reranker.model.attention = attention
    label = f"lbnl:{Path(model).name}@{block_size}+{weights}"
    scorer = LBNLScorer(reranker, name=label, max_doc_length=args.max_doc_length)
    config = EvalConfig(top_k=args.top_k, max_queries=args.max_queries, batch_queries=args.batch_queries,
                        fusion=(), candidate_fusion=())
    result = run_evaluation(load_beir(data, "test"), scorer, config, Path(args.runs) / label.replace(":", "_"),
                            progress=True, plot=False)
    return {"setting": label, "block_size": block_size, "weights": weights,
            "ndcg@10": result.metrics[label]["ndcg@10"], "bm25_ndcg@10": result.metrics["bm25"]["ndcg@10"],
            "per_query": {q: v["ndcg@10"] for q, v in result.per_query[label].items()},
            "run": {q: dict(hits) for q, hits in result.runs[label].items()},
            "docs_per_second": result.timing.get("docs_per_second")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory (a trained LBNL model)")
    parser.add_argument("--data", default=None, help="SciFact BEIR directory (default: found beside the project)")
    parser.add_argument("--block-sizes", default="125,32,16,8")
    parser.add_argument("--weights", default="float32,bfloat16,int8",
                        help="comma-separated: float32, bfloat16 (fast with AMX or AVX512-BF16; bfloat16-sdpa, "
                             "bfloat16-chunked and bfloat16-amx force the attention kernel), int8 (int8 matmuls on "
                             "bf16, lbnl.int8), int8-attn (the same plus int8 attention scores), int8-dynamic "
                             "(torch.ao, float32)")
    parser.add_argument("--top-k", type=int, default=100, help="BM25 hits reranked per query (default 100)")
    parser.add_argument("--max-doc-length", type=int, default=2048, help="tokens kept per document (default 2048)")
    parser.add_argument("--max-queries", type=int, default=None, help="seeded sample of test queries (default all 300)")
    parser.add_argument("--batch-queries", type=int, default=4)
    parser.add_argument("--runs", default="runs/perf_quality", help="where resumable scores go")
    parser.add_argument("--output", default=None, help="write the table as JSON")
    args = parser.parse_args(argv)
    data = Path(args.data) if args.data else find_scifact()
    if data is None:
        parser.error("SciFact not found; pass --data")
    kinds = [w.strip() for w in args.weights.split(",") if w.strip()]
    unknown = [w for w in kinds if w not in WEIGHTS]
    if unknown:
        parser.error(f"unknown weights {', '.join(unknown)}; use {', '.join(WEIGHTS)}")
    from lbnl.ir.metrics import paired_tests

    rows = []
    for weights in kinds:
        for size in [int(b) for b in args.block_sizes.split(",") if b.strip()]:
            rows.append(evaluate(args.model, size, weights, data, args))
    base = next((r for r in rows if r["block_size"] == 125 and r["weights"] == "float32"), rows[0])
    print(f"{'setting':<40} {'nDCG@10':>8} {'delta':>8} {'p':>7} {'max |d|':>8} {'docs/s':>8}")
    for r in rows:
        ids = sorted(base["per_query"])
        test = paired_tests([base["per_query"][q] for q in ids], [r["per_query"][q] for q in ids], 10_000, 0)
        r["delta_vs_spec"] = r["ndcg@10"] - base["ndcg@10"]
        r["p_value"] = test["randomization_p"]
        r["max_abs_score_diff"] = max(abs(s - base["run"][q][d]) for q, hits in r["run"].items()
                                      for d, s in hits.items())
        print(f"{r['setting']:<40} {r['ndcg@10']:>8.4f} {r['delta_vs_spec']:>+8.4f} "
              f"{r['p_value']:>7.3f} {r['max_abs_score_diff']:>8.1e} {r['docs_per_second'] or 0:>8.2f}")
    for r in rows:
        r.pop("run")
    if args.output:
        Path(args.output).write_text(json.dumps({"model": args.model, "data": str(data), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
