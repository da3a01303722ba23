"""Evaluation output: the results table, ``results.json``, TREC run files and the per-query delta plot."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from ..ir.metrics import LABELS, METRICS

if TYPE_CHECKING:
    from .run import EvalResult


def _p(value: float | None) -> str:
    if value is None:
        return ""
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def format_table(result: "EvalResult") -> str:
    """First stage, reranked and fusion rows: the metrics, the nDCG@10 delta and its p-values."""
    headline = METRICS[0]
    header = ["system", *(LABELS[m] for m in METRICS), f"delta {LABELS[headline]}", "p t-test", "p rand"]
    rows = []
    for name in result.systems:
        test = result.tests.get(name, {}).get(headline)
        rows.append([
            name, *(f"{result.metrics[name][m]:.4f}" for m in METRICS),
            f"{test['mean_delta']:+.4f}" if test else "", _p(test["t_test_p"] if test else None),
            _p(test["randomization_p"] if test else None),
        ])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header, *rows]]
    config = result.config
    caption = (f"{Path(config['dataset']).name} {config['split']}: {config['queries_evaluated']} of "
               f"{config['queries_in_split']} queries, BM25 top-{config['top_k']}")
    if config.get("max_doc_length"):
        caption += f", max {config['max_doc_length']} tokens per document"
    if result.timing.get("docs_per_second"):
        caption += f", reranking {result.timing['docs_per_second']:.1f} docs/s"
    return "\n".join([caption, *lines])


def write_trec(path: str | os.PathLike[str], run: Mapping[str, Sequence[tuple[str, float]]], tag: str) -> None:
    """A TREC run file: ``qid Q0 docid rank score tag``, best first."""
    tag = re.sub(r"\s+", "_", tag) or "lbnl"
    with open(path, "w", encoding="utf-8") as handle:
        for qid, hits in run.items():
            for rank, (doc_id, score) in enumerate(hits, 1):
                handle.write(f"{qid} Q0 {doc_id} {rank} {score:.6f} {tag}\n")


def plot_ndcg_delta(deltas: Sequence[float], path: str | os.PathLike[str], title: str) -> None:
    """Bar chart of per-query nDCG@10 deltas, sorted; wins above zero, losses below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    values = sorted(deltas, reverse=True)
    fig, ax = plt.subplots(figsize=(8, 3.5), dpi=120)
    colors = ["#2b8a3e" if v > 0 else "#c92a2a" if v < 0 else "#868e96" for v in values]
    ax.bar(range(len(values)), values, width=1.0, color=colors)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xlim(-0.5, max(len(values), 1) - 0.5)
    ax.set_ylim(-1.05, 1.05)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("queries, sorted by delta")
    ax.set_ylabel("nDCG@10 delta")
    wins, losses = sum(v > 0 for v in values), sum(v < 0 for v in values)
    ax.set_title(f"{title}\n{wins} better, {losses} worse, {len(values) - wins - losses} tied", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _file_label(name: str, kind: str) -> str:
    if kind == "first_stage":
        return "first_stage"
    if kind == "reranked":
        return "reranked"
    return kind.split(":", 1)[1]


def write_outputs(result: "EvalResult", out: Path, plot: bool = True) -> None:
    """``results.json``, one TREC run per system and ``ndcg_delta.png`` (when something was reranked)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in result.systems:
        path = out / f"run.{_file_label(name, result.kinds[name])}.trec"
        write_trec(path, result.runs[name], name)
        result.files[name] = path
    reranked = [s for s in result.systems if result.kinds[s] == "reranked"]
    if plot and reranked:
        name = reranked[0]
        first = result.systems[0]
        deltas = [result.per_query[name][q]["ndcg@10"] - result.per_query[first][q]["ndcg@10"]
                  for q in result.query_ids]
        test = result.tests[name]["ndcg@10"]
        title = (f"{name} vs {first} on {Path(result.config['dataset']).name} {result.config['split']}: "
                 f"mean {test['mean_delta']:+.4f}, paired t-test p{'' if test['t_test_p'] < 0.001 else '='}"
                 f"{_p(test['t_test_p'])}")
        result.files["plot"] = out / "ndcg_delta.png"
        plot_ndcg_delta(deltas, result.files["plot"], title)
    result.files["results"] = out / "results.json"
    payload = result.to_json()
    payload["files"] = {k: v.name for k, v in result.files.items()}
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    os.replace(tmp, result.files["results"])
