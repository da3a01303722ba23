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
    fmt = lambda v, p=2: "" if v is None else f"{v:.{p}f}"  # noqa: E731
    sci = lambda v: "" if v is None else f"{v:.1e}"  # noqa: E731
    for w in report["workloads"]:
        forward = w.get("kind") == "forward"
        hidden = any(r.get("hidden_max_abs_diff") is not None for r in w["results"])
        bases = [b for b in ("default", "default-bf16") if any(b in r["speedup"] for r in w["results"])]
        if forward:
            head = ["path", "seconds", "tok/s", "peak RSS MB", "TFLOP/s", "% peak",
                    *[f"x {b}" for b in bases], "max |dh| fp32", "cos h min"]
        else:
            head = ["path", "docs/s", "tok/s", "latency s", "peak RSS MB", "TFLOP/s", "% peak", "x ref fp32",
                    "x ref bf16", "max |d| fp32", "top10 agree"] + (["max |dh| fp32", "cos h min"] if hidden else [])
        rows = []
        for r in w["results"]:
            if r["status"] != "ok":
                rows.append([r["path"], "skipped: " + r["reason"]] + [""] * (len(head) - 2))
                continue
            agreement = [sci(r.get("hidden_max_abs_diff")), fmt(r.get("hidden_cos_min"), 5)]
            if forward:
                rows.append([r["path"], fmt(r["seconds"]), f"{r['prompt_tokens_per_s']:.0f}", f"{r['peak_rss_mb']:.0f}",
                             fmt(r["tflops"], 4), f"{100 * r['peak_fraction']:.1f}",
                             *[fmt(r["speedup"].get(b)) for b in bases], *agreement])
                continue
            rows.append([
                r["path"], fmt(r["docs_per_s"]), f"{r['doc_tokens_per_s']:.0f}", fmt(r["latency_per_query_s"]),
                f"{r['peak_rss_mb']:.0f}", fmt(r["tflops"], 4), f"{100 * r['peak_fraction']:.1f}",
                fmt(r["speedup"].get("reference-fp32")), fmt(r["speedup"].get("reference-bf16")),
                "" if "reference-fp32" not in r["max_abs_diff"] else f"{r['max_abs_diff']['reference-fp32']:.1e}",
                fmt(r["top10_agreement"].get("reference-fp32")),
            ] + (agreement if hidden else []))
        if forward:
            title = (f"{w['workload']} (one forward of a {w['tokens']}-token prompt, hidden states read at "
                     f"{w['documents'] + 1} positions, {w['source']})")
        else:
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
    peers = {name: text for name, text in report.get("paths", {}).items() if ":" in name and text.startswith(
        ("OpenVINO", "ONNX Runtime", "llama.cpp"))}
    if peers:
        lines += ["", "Peers:"] + [f"- {name}: {text}" for name, text in peers.items()]
    return "\n".join(lines)
