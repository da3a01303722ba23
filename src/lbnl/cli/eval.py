"""The ``lbnl eval`` command. Light at import: bm25s, pytrec_eval, torch load only when it runs."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from .common import add_length_arguments, add_model_arguments, model_options


def _default_output(data: str, split: str, model: str | None) -> Path:
    model_name = "bm25" if model is None else (os.path.basename(os.path.normpath(model)) or "model")
    dataset = os.path.basename(os.path.normpath(data)) or "data"
    return Path("runs") / "eval" / re.sub(r"[^\w.+-]+", "_", f"{dataset}-{split}-{model_name}")


def _weights(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    if text in ("", "none"):
        return ()
    try:
        return tuple(float(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise InvalidInputError(f"--candidate-fusion takes comma-separated weights in [0, 1], got {text!r}") from None


def _query_ids(path: str | None) -> tuple[str, ...] | None:
    if path is None:
        return None
    file = Path(path)
    if not file.is_file():
        raise InvalidInputError(f"--query-ids: no file at {path}")
    return tuple(line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip())


def _run_eval(args: argparse.Namespace) -> int:
    from ..eval.report import format_table
    from ..eval.run import EvalConfig, run_evaluation
    from ..ir.beir import load_beir
    from ..ir.bm25 import BM25Params

    first_stage_only = args.model is not None and args.model.lower() == "none"
    fusion = tuple(f for f in args.fusion.split(",") if f) if args.fusion not in ("", "none") else ()
    config = EvalConfig(top_k=args.top_k, max_queries=args.max_queries, seed=args.seed,
                        batch_queries=args.batch_queries, fusion=fusion, fusion_weight=args.fusion_weight,
                        candidate_fusion=_weights(args.candidate_fusion), query_ids=_query_ids(args.query_ids),
                        rrf_k=args.rrf_k, bm25=BM25Params(k1=args.k1, b=args.b))
    config.check()
    for flag in ("max_doc_length", "max_query_length", "block_size"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise InvalidInputError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    dataset = load_beir(args.data, args.split)
    scorer = None
    if not first_stage_only:
        from ..hardware import tune_allocator
        from ..reranker import Reranker

        tune_allocator()
        from ..eval.scorers import LBNLScorer

        reranker = Reranker.from_pretrained(args.model, **model_options(args))
        scorer = LBNLScorer(reranker, max_doc_length=args.max_doc_length, max_query_length=args.max_query_length,
                            block_size=args.block_size, pointwise=args.pointwise, instruction=args.instruction)
    model_name = None if scorer is None else str(scorer.reranker.name)
    output = Path(args.output) if args.output else _default_output(args.data, args.split, model_name)
    result = run_evaluation(dataset, scorer, config, output, args.cache_dir, progress=not args.quiet,
                            plot=not args.no_plot)
    print(format_table(result))
    print(f"wrote {output}/: " + ", ".join(sorted(p.name for p in result.files.values())))
    return 0


def register(subparsers: Any) -> None:

    p = subparsers.add_parser(
        "eval", help="nDCG@10 on a BEIR dataset: BM25 first stage vs reranked",
        description="Rerank a BM25 first stage on a BEIR-layout dataset and compare: nDCG@10, Recall@100, "
                    "MRR@10, MAP@100, the delta and paired p-values. Writes results.json, TREC runs and a plot; "
                    "an interrupted run resumes when the same command is run again.")
    add_model_arguments(p)
    p.epilog = "--model none evaluates the first stage alone."
    p.add_argument("--data", required=True, help="BEIR-layout directory (corpus.jsonl, queries.jsonl, qrels/), or a "
                   "BEIR name (scifact) downloaded once into $LBNL_CACHE/beir when the network allows")
    p.add_argument("--split", default="test", help="qrels split (default test)")
    p.add_argument("--top-k", type=int, default=100, help="BM25 hits reranked per query (default 100)")
    add_length_arguments(p)
    p.add_argument("--max-queries", type=int, default=None,
                   help="evaluate a fixed seeded sample of N queries (default: all)")
    p.add_argument("--query-ids", default=None,
                   help="file of query ids, one per line: evaluate exactly these (e.g. a training run's "
                        "validation_queries.txt)")
    p.add_argument("--seed", type=int, default=0, help="seed of the query sample and the randomisation test")
    p.add_argument("--block-size", type=int, default=None,
                   help="documents per prompt (default: the model's 125); smaller is faster on a CPU, changes scores")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--pointwise", action="store_true", default=None,
                      help="score each document alone, one per prompt (default: the mode the model was trained in)")
    mode.add_argument("--listwise", action="store_false", dest="pointwise",
                      help="score documents in LBNL blocks even if the model was trained pointwise")
    p.add_argument("--instruction", default=None, help="optional instruction placed in every prompt")
    p.add_argument("--batch-queries", type=int, default=4, help="queries per reranker call (default 4)")
    p.add_argument("--fusion", default="rrf,linear",
                   help="fusion rows with the first stage: rrf, linear, both comma-separated, or none")
    p.add_argument("--fusion-weight", type=float, default=0.5, help="reranker weight in linear fusion (default 0.5)")
    p.add_argument("--candidate-fusion", default=None,
                   help="model weights of extra rows fusing with BM25 over each query's candidates only, "
                        "as Reranker(fuse_bm25=w) does, comma-separated (default: the weight the model "
                        "ships with, if any; none: no rows)")
    p.add_argument("--rrf-k", type=int, default=60, help="reciprocal rank fusion offset (default 60)")
    p.add_argument("--k1", type=float, default=0.9, help="BM25 k1 (default 0.9, Anserini)")
    p.add_argument("--b", type=float, default=0.4, help="BM25 b (default 0.4, Anserini)")
    p.add_argument("--output", default=None, help="output directory (default runs/eval/<dataset>-<split>-<model>)")
    p.add_argument("--cache-dir", default=None, help="BM25 cache (default $LBNL_CACHE/bm25 or ~/.cache/lbnl/bm25)")
    p.add_argument("--no-plot", action="store_true", help="skip ndcg_delta.png")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_eval, extra="eval", needs=("pytrec_eval", "scipy", "bm25s", "Stemmer"))
