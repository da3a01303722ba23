"""Does batching change a score? Lone calls against one batched call, and what one prompt per forward costs.

    taskset -c 1 python bench/batch_invariance.py                          # lbnl-small-v3 in its default dtype
    taskset -c 1 python bench/batch_invariance.py --dtype float32
    taskset -c 1 python bench/batch_invariance.py --model /path/to/checkpoint --queries 8 --docs 20 --words 60

For each ``max_batch_tokens`` setting (``--budgets``; by default the library's default, then 1: every prompt
in a forward of its own) it scores ``--queries`` synthetic requests once with ``rerank_many`` (batched) and
once each with ``rerank`` (alone), and prints the largest score difference, how many requests came out in
another order, and the docs/s of the batched call (best of ``--repeats``). Documents are random words from a
small topical vocabulary, so many scores lie close together, as in a real candidate list. One thread.
"""

from __future__ import annotations

import argparse
import random
import time

WORDS = ("tea green catechin heart study cohort coffee brew water leaf sport cup risk health cell oxidant "
         "the of a in and to trial dose blood pressure").split()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lbnl-small-v3", help="a built-in model's name or a checkpoint directory")
    parser.add_argument("--dtype", default=None, help="float32 or bfloat16 (default: the model's own choice)")
    parser.add_argument("--queries", type=int, default=8, help="requests per call (default 8)")
    parser.add_argument("--docs", type=int, default=20, help="documents per request (default 20)")
    parser.add_argument("--words", type=int, default=60, help="words per document (default 60)")
    parser.add_argument("--repeats", type=int, default=2, help="timed batched calls per setting (default 2)")
    parser.add_argument("--budgets", default=None,
                        help="comma-separated max_batch_tokens settings (default: the library's default, then 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from lbnl import Reranker
    from lbnl.defaults import MAX_BATCH_TOKENS

    torch.set_num_threads(1)
    options = {"dtype": args.dtype} if args.dtype else {}
    reranker = Reranker.from_pretrained(args.model, fusion=None, **options)
    rng = random.Random(args.seed)
    queries = [" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(args.queries)]
    documents = [[" ".join(rng.choice(WORDS) for _ in range(args.words)) for _ in range(args.docs)] for _ in queries]
    print(f"{args.model}, {reranker.model.dtype}, attention {reranker.model.attention_kernel}; "
          f"{args.queries} requests of {args.docs} documents of {args.words} words")
    print(f"{'max_batch_tokens':>16}  {'max |batched - alone|':>21}  {'requests reordered':>18}  {'docs/s batched':>14}")
    budgets = [int(b) for b in args.budgets.split(",")] if args.budgets else [MAX_BATCH_TOKENS, 1]
    for budget in budgets:
        reranker.max_batch_tokens = budget
        reranker.rerank_many(queries[:1], documents[:1])  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            batched = reranker.rerank_many(queries, documents)
            best = min(best, time.perf_counter() - start)
        worst, reordered = 0.0, 0
        for query, docs, together in zip(queries, documents, batched):
            alone = reranker.rerank(query, docs)
            a = {r.index: r.relevance_score for r in together}
            worst = max(worst, max(abs(a[r.index] - r.relevance_score) for r in alone))
            reordered += [r.index for r in together] != [r.index for r in alone]
        print(f"{budget:>16}  {worst:>21.3g}  {reordered:>11} of {len(queries):<3}  "
              f"{len(queries) * args.docs / best:>14.1f}")


if __name__ == "__main__":
    main()
