#!/usr/bin/env python3
"""nDCG@10 of the model in two ``lbnl eval`` runs over the same queries, with the paired randomisation
test between them (e.g. bf16 against int8 weights, issue 19).

    python scripts/compare_runs.py runs/eval/q-none-scifact-test runs/eval/q-int8-scifact-test
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _model_rows(run: Path) -> tuple[str, dict, dict]:
    results = json.loads((run / "results.json").read_text())
    name = next(k for k in results["per_query"] if k.startswith("lbnl"))
    return name, results["per_query"][name], results["timing"]


def main() -> None:
    from lbnl.ir.metrics import paired_tests

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", type=Path)
    ap.add_argument("other", type=Path)
    ap.add_argument("--metric", default="ndcg@10")
    args = ap.parse_args()
    _, base, base_time = _model_rows(args.base)
    _, other, other_time = _model_rows(args.other)
    qids = sorted(set(base) & set(other))
    a = [base[q][args.metric] for q in qids]
    b = [other[q][args.metric] for q in qids]
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    print(f"{len(qids)} queries, {args.metric}: {args.base.name} {mean_a:.4f}, {args.other.name} {mean_b:.4f}, "
          f"delta {mean_b - mean_a:+.4f}; paired test {paired_tests(a, b)}; docs/s "
          f"{base_time['docs_per_second']:.2f} / {other_time['docs_per_second']:.2f}")


if __name__ == "__main__":
    main()
