"""Causal self-attention kernels of the fast path and of training (which one a machine should use is
:func:`lbnl.hardware.resolve_attention`).

torch's CPU flash-attention kernel multiplies bf16 at bf16 speed only with AMX; on other CPUs with
AVX512-BF16 it runs no faster than float32, while a plain bf16 matmul runs five times faster. The
chunked kernel here computes attention as batched bf16 matmuls over blocks of queries, and
:func:`use_chunked_attention` plugs the same kernel into a transformers backbone for training.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import native

#: Scores held at once by the chunked attention kernel (bytes = 2 x this in bf16).
CHUNK_SCORES = 1 << 25


def causal_attention_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of ``n`` new tokens over ``L >= n`` keys (the first ``L - n`` a cached prefix) as
    batched matmuls over blocks of queries: scores of one block against every visible key, a softmax
    (float32 inside, stored in the input dtype), then the weighted values.

    Args:
        q: queries in token layout, [n, heads, dim].
        k, v: keys and values, [kv_heads, L, dim] (grouped-query heads share a key/value head, as in
            Llama and Qwen: query head ``h`` reads key/value head ``h // (heads // kv_heads)``).
        scale: the softmax scale.

    Returns the attention output in token layout, [n, heads, dim]. Equal to
    ``scaled_dot_product_attention(..., is_causal=True)`` over the same inputs up to float rounding; in
    bf16 the scores are rounded to bf16 before the softmax, which the flash kernel keeps in float32.
    Inference reuses two score buffers; when gradients are needed every block is its own graph node.
    """
    n, heads, dim = q.shape
    kv_heads, total, _ = k.shape
    group = heads // kv_heads
    track = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if not track:
        return _chunked_inference(q, k, v, scale)
    start = total - n
    block = max(16, min(256, CHUNK_SCORES // max(1, heads * total)))
    grouped = q.reshape(n, kv_heads, group, dim)
    pieces = []
    for s in range(0, n, block):
        e = min(n, s + block)
        c, width = e - s, start + e
        qs = grouped[s:e].permute(1, 2, 0, 3).reshape(kv_heads, group * c, dim)
        keys = k[:, :width].transpose(1, 2)
        hidden = torch.ones(c, c, dtype=torch.bool, device=q.device).triu_(1)
        sc = torch.baddbmm(qs.new_zeros(1, 1, 1), qs, keys, beta=0.0, alpha=scale)
        blind = torch.cat([hidden.new_zeros(c, start + s), hidden], dim=1)
        p = torch.softmax(sc.view(kv_heads, group, c, width).masked_fill(blind, float("-inf")), dim=-1)
        pieces.append(torch.bmm(p.view(kv_heads, group * c, width), v[:, :width]))
    out = torch.cat([x.view(kv_heads, group, -1, dim) for x in pieces], dim=2).permute(2, 0, 1, 3)
    return out.reshape(n, heads, dim)


#: Query rows per block of the inference kernel: small enough that one key/value head's scores of a block
#: stay in the CPU's caches between the score matmul, the softmax and the value matmul.
INFERENCE_BLOCK = 128


def _chunked_inference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """:func:`causal_attention_chunked` without gradients: blocks of query rows, and within a block one
    key/value head at a time (its group of query heads at once) as 2-D matmuls over contiguous keys and
    values, so no key or value is copied and the scores are reused while in cache. In bf16 on a CPU the
    mask and softmax are one native call (:mod:`lbnl.native`: its exponential differs from torch's by
    about 2e-7 relative, so a probability moves by at most one bf16 rounding step); otherwise torch's
    softmax, bit-identical to the batched form on Qwen3 shapes (docs/results.md). The output is a token-layout
    view of a heads-first tensor (what the engine's ``[1, heads, n, dim]`` wants), so no block is scattered
    across tokens."""
    n, heads, dim = q.shape
    kv_heads, total, _ = k.shape
    group = heads // kv_heads
    start = total - n
    block = max(16, min(INFERENCE_BLOCK, CHUNK_SCORES // max(1, group * total)))
    grouped = q.reshape(n, kv_heads, group, dim)
    k, v = k.contiguous(), v.contiguous()
    out = q.new_empty(kv_heads, group, n, dim)  # heads first: a block's output is copied in whole rows
    scores = q.new_empty(group * block * total)
    probs = q.new_empty(group * block * total)
    head_out = q.new_empty(group * block, dim)
    fused = q.dtype == torch.bfloat16 and q.device.type == "cpu" and native.available()
    for s in range(0, n, block):
        e = min(n, s + block)
        c, width = e - s, start + e
        qs = grouped[s:e].permute(1, 2, 0, 3).reshape(kv_heads, group * c, dim)
        hidden = None if fused else torch.ones(c, c, dtype=torch.bool, device=q.device).triu_(1)
        sc = scores[: group * c * width].view(group * c, width)
        p = probs[: group * c * width].view(group * c, width)
        o = head_out[: group * c]
        for h in range(kv_heads):
            torch.addmm(sc, qs[h], k[h, :width].t(), beta=0.0, alpha=scale, out=sc)
            if fused:
                native.causal_softmax(sc, p, start + s, c)
            else:
                sc.view(group, c, width)[..., start + s:width].masked_fill_(hidden, float("-inf"))
                torch.ops.aten._softmax.out(sc, -1, False, out=p)
            torch.mm(p, v[h, :width], out=o)
            out[h, :, s:e].copy_(o.view(group, c, dim))
    return out.view(heads, n, dim).transpose(0, 1)


#: Name of the chunked kernel in transformers' attention registry.
HF_ATTENTION_NAME = "lbnl_chunked"


def _hf_chunked_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                          **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers attention function: the chunked kernel for plain causal attention without a padding
    mask or cache (every training forward of lbnl), torch's SDPA for anything else."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = getattr(module, "is_causal", True) and attention_mask is None and dropout == 0.0
    if not causal or query.shape[2] != key.shape[2] or query.shape[2] < 2:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    dtype = query.dtype
    if torch.is_autocast_enabled(query.device.type):
        dtype = torch.get_autocast_dtype(query.device.type)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    with torch.autocast(query.device.type, enabled=False):
        rows = [causal_attention_chunked(q.transpose(0, 1).to(dtype), k.to(dtype), v.to(dtype), scale)
                for q, k, v in zip(query, key, value)]
    return torch.stack(rows), None


def _hf_causal_mask(batch_size: int, cache_position: torch.Tensor, kv_length: int, kv_offset: int = 0,
                    attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """transformers mask function: ``None`` (plain causal: the chunked kernel) unless a padding mask hides a
    key, then SDPA's dense mask. Each row is taken as one sequence, as lbnl's training prompts are."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None or bool(attention_mask.all()):
        return None
    return sdpa_mask(batch_size=batch_size, cache_position=cache_position, kv_length=kv_length, kv_offset=kv_offset,
                     attention_mask=attention_mask, **kwargs)


def use_chunked_attention(backbone: nn.Module) -> None:
    """Make a transformers backbone compute causal attention with :func:`causal_attention_chunked` (forward
    and backward); padded or cached calls keep torch's SDPA. Call before wrapping the backbone (peft)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(HF_ATTENTION_NAME, _hf_chunked_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(HF_ATTENTION_NAME, _hf_causal_mask)
    backbone.config._attn_implementation = HF_ATTENTION_NAME
