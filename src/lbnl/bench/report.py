"""The bench's tables: one per workload, plain text for the terminal or markdown for the docs.

Kept apart from the runner so a saved JSON report can be formatted again without running anything.
"""

from __future__ import annotations

from typing import Any

def format_report(report: dict[str, Any], markdown: bool = False) -> str:
    """One table per workload: speed, memory, FLOP/s and score drift of every path."""
    m = report["machine"]
    lines = [f"{m['cpu']}, {m['threads']} threads; matmul peaks: fp32 {m['fp32_tflops']} TFLOP/s, "
             f"bf16 {m['bf16_tflops']} TFLOP/s (fast bf16: {m['fast_bf16']}), int8 linear "
             f"{m['int8_linear_tflops']} TFLOP/s; bf16 attention kernel {m.get('bf16_attention', 'sdpa')}, "
             f"allocator tuned: {m.get('allocator_tuned', False)}. Model {report['model']} "
             f"({report['shape']['layers']} layers, hidden {report['shape']['hidden']})."]
    head = ["path", "docs/s", "tok/s", "latency s", "peak RSS MB", "TFLOP/s", "% peak", "x ref fp32",
            "x ref bf16", "max |d| fp32", "top10 agree"]
    for w in report["workloads"]:
        rows = []
        for r in w["results"]:
            if r["status"] != "ok":
                rows.append([r["path"], "skipped: " + r["reason"]] + [""] * (len(head) - 2))
                continue
            fmt = lambda v, p=2: "" if v is None else f"{v:.{p}f}"  # noqa: E731
            rows.append([
                r["path"], fmt(r["docs_per_s"]), f"{r['doc_tokens_per_s']:.0f}", fmt(r["latency_per_query_s"]),
                f"{r['peak_rss_mb']:.0f}", fmt(r["tflops"], 4), f"{100 * r['peak_fraction']:.1f}",
                fmt(r["speedup"].get("reference-fp32")), fmt(r["speedup"].get("reference-bf16")),
                "" if "reference-fp32" not in r["max_abs_diff"] else f"{r['max_abs_diff']['reference-fp32']:.1e}",
                fmt(r["top10_agreement"].get("reference-fp32")),
            ])
        title = f"{w['workload']} ({w['queries']} queries x {w['documents']} documents x {w['tokens']} tokens, {w['source']})"
        lines.append("")
        if markdown:
            lines += [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
        else:
            measured = [head] + [row for row in rows if not row[1].startswith("skipped")]
            widths = [max(len(row[i]) for row in measured) for i in range(len(head))]
            lines.append(title)
            for row in [head, *rows]:
                if row[1].startswith("skipped"):
                    lines.append(f"{row[0].rjust(widths[0])}  {row[1]}")
                else:
                    lines.append("  ".join(c.rjust(w_) for c, w_ in zip(row, widths)))
    return "\n".join(lines)
