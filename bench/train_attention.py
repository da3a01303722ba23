"""Training step time with torch's SDPA against lbnl's chunked attention kernel, side by side.

    python bench/train_attention.py [--model src/lbnl/checkpoints/weights/lbnl-small-stage1] [--lists 4]
                                    [--tokens 1320] [--repeats 3] [--threads 1]

Loads the model twice (one copy with ``lbnl.attention.use_chunked_attention``), puts LoRA on the last
10 layers as ``configs/lbnl-small.yaml`` does, and times forward + backward of the same random batch
(``lists`` prompts of ``tokens`` tokens, the shape of an lbnl-small training step) under bf16 autocast,
alternating the two kernels; each kernel's time is its fastest repeat. Also prints the largest
difference between the two kernels' losses and LoRA gradients.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="src/lbnl/checkpoints/weights/lbnl-small-stage1")
    parser.add_argument("--lists", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=1320)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from lbnl.attention import use_chunked_attention
    from lbnl.checkpoints import load_checkpoint
    from lbnl.hardware import tune_allocator
    from lbnl.train.modeling import TrainableLBNL

    tune_allocator()
    torch.set_num_threads(args.threads)
    models = {}
    for kernel in ("sdpa", "chunked"):
        model, _ = load_checkpoint(args.model, dtype="float32", device="cpu")
        if kernel == "chunked":
            use_chunked_attention(model.backbone)
        torch.manual_seed(0)
        models[kernel] = TrainableLBNL(model, lora_r=16, lora_alpha=32, lora_layers=10, train_tokens=False)
    ids = torch.randint(100, 40000, (args.lists, args.tokens), generator=torch.Generator().manual_seed(0))

    def step(kernel: str) -> tuple[float, float, list[torch.Tensor]]:
        trainable = models[kernel]
        trainable.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = trainable.hidden_states(ids)
            loss = trainable.project(hidden[:, ::50]).float().square().mean()
        loss.backward()
        seconds = time.perf_counter() - start
        return seconds, float(loss.detach()), [p.grad.clone() for p in trainable.parameter_groups()["backbone"]]

    best = {k: float("inf") for k in models}
    results = {}
    for _ in range(args.repeats):
        for kernel in models:
            seconds, loss, grads = step(kernel)
            best[kernel] = min(best[kernel], seconds)
            results[kernel] = (loss, grads)
    grad_diff = max(float((a - b).abs().max()) for a, b in zip(results["sdpa"][1], results["chunked"][1]))
    grad_scale = max(float(a.abs().max()) for a in results["sdpa"][1])
    print(f"batch {args.lists} x {args.tokens} tokens, {args.threads} thread(s), best of {args.repeats}")
    for kernel, seconds in best.items():
        print(f"  {kernel:8s} {seconds:7.2f} s per forward + backward   loss {results[kernel][0]:.6f}")
    print(f"  speed-up {best['sdpa'] / best['chunked']:.2f}x; largest LoRA gradient difference {grad_diff:.2e} "
          f"(largest gradient {grad_scale:.2e})")


if __name__ == "__main__":
    main()
