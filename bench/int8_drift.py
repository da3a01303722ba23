"""How far int8 variants move a model's scores from bf16: what chose the int8 path's outlier channels.

    python bench/int8_drift.py --model lbnl-small-v3 --data data/v2/heldout/manpages --data data/v2/heldout/pydocs \
        [--split dev] [--queries 12] [--variants plain,outliers:16,smooth:0.5,keep:mlp] [--output FILE.json]

Reranks the BM25 top 20 (128 tokens per document) of a seeded sample of each dataset's queries once in bf16 and
once per variant, and reports the mean and largest score change, the mean Kendall tau of each list's order and
the top-10 overlap against bf16. Use dev splits: this is for choosing settings, not for reporting quality.
Variants: ``plain`` (``quantize="int8-plain"``), ``outliers:N`` (N outlier input channels per matmul kept in
bf16, chosen on the built-in prompts of ``lbnl.int8.CALIBRATION``; ``quantize="int8"`` is ``outliers:16``),
``smooth:A`` (SmoothQuant with exponent A, calibrated on the same prompts), ``keep:mlp`` / ``keep:attn`` (plain, with
every MLP / every attention projection left in bf16: where the error comes from). A ``+qk`` suffix
(``outliers:16+qk``, or ``bf16+qk`` alone) also computes attention's query-key products in int8 (the
``int8`` attention kernel, ``lbnl.int8.causal_attention_int8``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any


def sample_lists(paths: list[str], split: str, queries: int, top_k: int, seed: int) -> list[tuple[str, list[str]]]:
    """``(query, BM25 top-k texts)`` for a seeded sample of each dataset's judged queries."""
    from lbnl.ir.beir import document_text, load_beir
    from lbnl.ir.bm25 import first_stage_hits

    out = []
    for path in paths:
        dataset = load_beir(path, split)
        ids = sorted(dataset.query_ids)
        random.Random(seed).shuffle(ids)
        ids = ids[:queries]
        hits = first_stage_hits(dataset, ids, k=top_k, progress=False)
        out += [(dataset.queries[q], [document_text(dataset.corpus[d]) for d, _ in hits[q]]) for q in ids]
    return out


def convert(reranker: Any, variant: str) -> None:
    """Turn a bf16 reranker's decoder into the int8 ``variant``, in place."""
    from lbnl.hardware import quantize_int8
    from lbnl.int8 import calibration_rows

    variant, qk, _ = variant.partition("+qk")
    if qk:
        reranker.model.attention = "int8"
    if variant == "bf16":
        return
    kind, _, value = variant.partition(":")
    layers = reranker.model.backbone.layers
    if kind == "smooth":
        quantize_int8(reranker.model, calibration=calibration_rows(reranker.tokenizer), alpha=float(value))
        return
    if kind == "outliers":
        quantize_int8(reranker.model, calibration=calibration_rows(reranker.tokenizer), outliers=int(value))
        return
    names = {"mlp": ["mlp"], "attn": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"],
             "": []}[value if kind == "keep" else ""]
    kept = [(layer, name, layer.get_submodule(name)) for layer in layers for name in names]
    quantize_int8(reranker.model)
    for layer, name, module in kept:
        parent, _, attr = name.rpartition(".")
        setattr(layer.get_submodule(parent) if parent else layer, attr, module)


def drift(reference: list[list[float]], scores: list[list[float]]) -> dict[str, float]:
    """Mean and largest absolute change, mean Kendall tau per list and top-10 overlap."""
    from scipy.stats import kendalltau

    from lbnl.bench.runner import top_agreement

    diffs = [abs(a - b) for ref, got in zip(reference, scores) for a, b in zip(ref, got)]
    taus = [kendalltau(r, g)[0] for r, g in zip(reference, scores)]
    return {"mean_abs_diff": sum(diffs) / len(diffs), "max_abs_diff": max(diffs),
            "kendall_tau": float(sum(taus) / len(taus)), "top10_overlap": top_agreement(reference, scores, 10)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lbnl-small-v3", help="a built-in model's name or a checkpoint directory")
    parser.add_argument("--data", action="append", required=True, help="BEIR directory (repeatable)")
    parser.add_argument("--split", default="dev", help="split whose queries are sampled (default dev)")
    parser.add_argument("--queries", type=int, default=12, help="queries sampled per dataset (default 12)")
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--max-doc-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default="plain,outliers:16,smooth:0.5,keep:mlp,keep:attn")
    parser.add_argument("--output", default=None, help="write the table as JSON")
    args = parser.parse_args(argv)
    import torch

    from lbnl import Reranker

    torch.manual_seed(args.seed)
    lists = sample_lists(args.data, args.split, args.queries, args.top_k, args.seed)

    def scores(variant: str | None) -> tuple[list[list[float]], float]:
        reranker = Reranker.from_pretrained(args.model, dtype="bfloat16", device="cpu", fusion=None)
        if variant:
            convert(reranker, variant)
        start = time.perf_counter()
        out = reranker.score_lists([q for q, _ in lists], [d for _, d in lists], max_doc_length=args.max_doc_length)
        return [list(map(float, s.scores)) for s in out], time.perf_counter() - start

    reference, seconds = scores(None)
    rows = [{"variant": "bf16", "seconds": seconds}]
    print(f"{'variant':<14} {'mean |d|':>9} {'max |d|':>8} {'tau':>6} {'top10':>6} {'seconds':>8}")
    print(f"{'bf16':<14} {'':>9} {'':>8} {'':>6} {'':>6} {seconds:>8.1f}", flush=True)
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        got, seconds = scores(variant)
        row = {"variant": variant, **drift(reference, got), "seconds": seconds}
        rows.append(row)
        print(f"{variant:<14} {row['mean_abs_diff']:>9.4f} {row['max_abs_diff']:>8.4f} {row['kendall_tau']:>6.3f} "
              f"{row['top10_overlap']:>6.3f} {seconds:>8.1f}", flush=True)
    if args.output:
        Path(args.output).write_text(json.dumps({"model": args.model, "data": args.data, "split": args.split,
                                                 "lists": len(lists), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
