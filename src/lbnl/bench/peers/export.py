"""What the peers share: a plain torch rendering of the backbone forward to export, the checkpoint's
fingerprint, and the on-disk cache of exported models.

:class:`BackboneForward` is the Llama/Qwen decoder forward over one prompt written with ordinary ops
only (no cache, no padding mask, causal SDPA, grouped-query heads repeated), so the ONNX exporter
and OpenVINO's PyTorch frontend both turn it into a clean graph. It takes the token ids and the
positions whose final hidden states are read (the embed and rerank tokens), and like lbnl's engine
and llama.cpp it runs the last layer's MLP and the final norm at those positions only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

#: Bumped whenever an export step changes what it writes: cached exports of older versions are not reused.
EXPORT_VERSION = 1


def _sample(path: Path, chunks: int = 32, size: int = 4096) -> bytes:
    """The safetensors header and evenly spaced slices of the file: identifies the weights without reading GBs."""
    total = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        header_len = int.from_bytes(head, "little") if len(head) == 8 else 0
        parts = [head, f.read(min(header_len, 1 << 24)), str(total).encode()]
        for i in range(chunks):
            f.seek(total * i // chunks)
            parts.append(f.read(size))
    return b"".join(parts)


def fingerprint(checkpoint: Path) -> str:
    """A short name for a checkpoint's weights: its shape (layers, hidden), then a hash of its config and
    weights (headers and sampled bytes), so two random checkpoints built with the same shape and seed share
    their exports and any other weights get their own."""
    config = json.loads((checkpoint / "config.json").read_text())
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for file in sorted(checkpoint.glob("*.safetensors")):
        digest.update(file.name.encode())
        digest.update(_sample(file))
    layers, hidden = config.get("num_hidden_layers", "x"), config.get("hidden_size", "x")
    return f"{config.get('model_type', 'model')}-L{layers}-h{hidden}-{digest.hexdigest()[:12]}"


def export_dir(cache: Path, checkpoint: Path, what: str) -> Path:
    """``cache/<fingerprint>/<what>-v<EXPORT_VERSION>``: where one export of one checkpoint lives."""
    return cache / fingerprint(checkpoint) / f"{what}-v{EXPORT_VERSION}"


def cached(target: Path, marker: str, build: Callable[[Path], None], log: Callable[[str], None]) -> Path:
    """``target`` after ``build(tmp)`` filled a temporary directory beside it and it was renamed into place.

    ``target/marker`` is checked first: an export is done at most once per checkpoint and version, and a
    crashed export leaves only a temporary directory (removed) behind.
    """
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        log(f"exporting {target.name} to {target}")
        build(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_backbone(checkpoint: Path) -> tuple[Any, Any, Any]:
    """``(backbone, projector, tokenizer)`` of a checkpoint in float32 (the weights every export starts from)."""
    import torch

    from ...checkpoints import load_checkpoint

    model, tokenizer = load_checkpoint(checkpoint, dtype=torch.float32, device="cpu")
    return model.backbone.eval(), model.projector.eval(), tokenizer


def backbone_forward(backbone: Any) -> Any:
    """A :class:`BackboneForward` module over ``backbone``'s weights (shared, not copied)."""
    import torch
    from torch import nn

    from ...model import config_head_dim

    F = torch.nn.functional

    class BackboneForward(nn.Module):
        """``(input_ids [T] int64, read [n] int64) -> final hidden states at read, [n, hidden] float32``."""

        def __init__(self, backbone: Any):
            super().__init__()
            config = backbone.config
            self.embed = backbone.get_input_embeddings()
            self.layers = backbone.layers
            self.norm = backbone.norm
            self.heads = config.num_attention_heads
            self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
            self.head_dim = config_head_dim(config)
            self.eps = config.rms_norm_eps
            self.register_buffer("inv_freq", backbone.rotary_emb.inv_freq.detach().float().clone(), persistent=False)
            self.attention_scaling = float(getattr(backbone.rotary_emb, "attention_scaling", 1.0))

        def rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
            return weight * x

        def rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
            half = x.shape[-1] // 2
            rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
            return x * cos + rotated * sin

        def forward(self, input_ids: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
            t = input_ids.shape[0]
            hidden = self.embed(input_ids)
            positions = torch.arange(t, dtype=torch.float32).unsqueeze(-1)
            freqs = positions * self.inv_freq.unsqueeze(0)
            emb = torch.cat((freqs, freqs), dim=-1)
            cos = (emb.cos() * self.attention_scaling).unsqueeze(0)
            sin = (emb.sin() * self.attention_scaling).unsqueeze(0)
            group = self.heads // self.kv_heads
            last = len(self.layers) - 1
            for i, layer in enumerate(self.layers):
                attn = layer.self_attn
                x = self.rms(hidden, layer.input_layernorm.weight)
                q = attn.q_proj(x).view(t, self.heads, self.head_dim).transpose(0, 1)
                k = attn.k_proj(x).view(t, self.kv_heads, self.head_dim).transpose(0, 1)
                v = attn.v_proj(x).view(t, self.kv_heads, self.head_dim).transpose(0, 1)
                if getattr(attn, "q_norm", None) is not None:
                    q = self.rms(q, attn.q_norm.weight)
                    k = self.rms(k, attn.k_norm.weight)
                q, k = self.rotate(q, cos, sin), self.rotate(k, cos, sin)
                if group > 1:
                    k = k.repeat_interleave(group, dim=0)
                    v = v.repeat_interleave(group, dim=0)
                out = F.scaled_dot_product_attention(q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), is_causal=True,
                                                     scale=float(attn.scaling))
                out = attn.o_proj(out[0].transpose(0, 1).reshape(t, self.heads * self.head_dim))
                if i == last:  # the last layer's MLP and the final norm only where hidden states are read
                    hidden, out = hidden[read], out[read]
                hidden = hidden + out
                mlp = layer.mlp
                y = self.rms(hidden, layer.post_attention_layernorm.weight)
                hidden = hidden + mlp.down_proj(F.silu(mlp.gate_proj(y)) * mlp.up_proj(y))
            return self.rms(hidden, self.norm.weight)

    return BackboneForward(backbone).eval()


def example_inputs(length: int = 48, read: int = 3) -> tuple[Any, Any]:
    """Token ids and read positions to trace an export with (dynamic axes make the sizes free)."""
    import torch

    ids = torch.arange(100, 100 + length, dtype=torch.long)
    return ids, torch.arange(length - read, length, dtype=torch.long)


@contextmanager
def quiet() -> Iterator[None]:
    """Silence the warnings exporters print on every traced op."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
