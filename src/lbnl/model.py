"""The LBNL model: a decoder backbone, a projector, and embeddings read at two special tokens.

Checkpoints use the official jina-reranker-v3 layout (spec section 1): a plain backbone config,
the decoder weights under ``model.``, ``projector.0.weight`` and ``projector.2.weight``, and a
tokenizer holding ``<|embed_token|>`` and ``<|rerank_token|>``. Any backbone that
``transformers.AutoModel`` builds works. No remote code is executed and weights load from
safetensors only.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .attention import causal_attention_chunked, resolve_attention
from .errors import CheckpointError, InvalidInputError
from .prompt import EMBED_TOKEN, RERANK_TOKEN
from .runtime import cpu_has_amx, cpu_has_fast_bf16  # noqa: F401 - re-exported

logger = logging.getLogger(__name__)

PROJECTOR_DIM = 512
HUB_FILE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
_DTYPE_NAMES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks CUDA when present, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, checkpoint_dtype: Any, device: torch.device) -> torch.dtype:
    """Pick the compute dtype: the caller's, else the checkpoint's, float32 where the device lacks fast half precision."""
    if dtype is not None and dtype != "auto":
        if isinstance(dtype, torch.dtype):
            return dtype
        if str(dtype).lower() not in _DTYPE_NAMES:
            raise CheckpointError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16")
        return _DTYPE_NAMES[str(dtype).lower()]
    if isinstance(checkpoint_dtype, str):
        checkpoint_dtype = _DTYPE_NAMES.get(checkpoint_dtype.lower(), torch.float32)
    if not isinstance(checkpoint_dtype, torch.dtype):
        checkpoint_dtype = torch.float32
    if device.type == "cpu" and checkpoint_dtype != torch.float32:
        if checkpoint_dtype == torch.float16 or not cpu_has_fast_bf16():
            return torch.float32
    return checkpoint_dtype


def resolve_checkpoint(name_or_path: str | os.PathLike[str]) -> Path:
    """Return a local directory for a path or a Hugging Face hub id (downloaded once, then cached)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; pass the checkpoint directory that holds config.json")
    name = str(name_or_path)
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise CheckpointError(f"no checkpoint directory at {name!r}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=HUB_FILE_PATTERNS))
    except Exception as exc:  # noqa: BLE001 - every hub failure becomes one readable message
        raise CheckpointError(
            f"{name!r} is not a local directory and could not be fetched from the Hugging Face hub "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _safetensors_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / n for n in names]
    return sorted(path.glob("*.safetensors"))


def _load_projector_state(path: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in _safetensors_files(path):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if key.startswith("projector."):
                    state[key.removeprefix("projector.")] = f.get_tensor(key)
    return state


def build_projector(hidden_size: int, inner: int | None = None, out: int = PROJECTOR_DIM) -> nn.Sequential:
    """Linear(hidden -> hidden/2) -> ReLU -> Linear(hidden/2 -> 512), no biases (spec section 3)."""
    inner = inner or hidden_size // 2
    return nn.Sequential(nn.Linear(hidden_size, inner, bias=False), nn.ReLU(), nn.Linear(inner, out, bias=False))


def special_token_ids(tokenizer: Any) -> tuple[int, int]:
    """Look up the embed and rerank token ids by string; fail with a message naming what is missing."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in (EMBED_TOKEN, RERANK_TOKEN) if t not in vocab]
    if missing:
        raise CheckpointError(
            f"the tokenizer lacks the special token(s) {', '.join(missing)}; an LBNL checkpoint must define both "
            f"{EMBED_TOKEN} and {RERANK_TOKEN}"
        )
    return vocab[EMBED_TOKEN], vocab[RERANK_TOKEN]


#: Backbone classes whose decoder layers :meth:`LBNLModel.encode` runs with its own loop.
FAST_PATH_BACKBONES = frozenset({"LlamaModel", "MistralModel", "Qwen2Model", "Qwen3Model"})


def fast_path_supported(backbone: nn.Module) -> bool:
    """True when ``backbone`` is a plain Llama-family decoder (full causal attention, rotary positions).

    Wrapped backbones (peft), sliding-window attention and unknown architectures use the ordinary
    transformers forward instead; scores are the same either way.
    """
    if type(backbone).__name__ not in FAST_PATH_BACKBONES:
        return False
    config = backbone.config
    if getattr(config, "sliding_window", None) is not None:
        return False
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
        return False
    needed = ("q_proj", "k_proj", "v_proj", "o_proj", "scaling", "head_dim")
    return hasattr(backbone, "rotary_emb") and all(
        all(hasattr(layer.self_attn, n) for n in needed) for layer in backbone.layers
    )


@dataclass
class PrefixState:
    """Keys and values, per layer, of a token prefix that several prompts share (the system prompt and
    the request line), computed once and reused: causal attention makes them independent of what follows."""

    ids: tuple[int, ...]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


def _signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """``sin`` with its first half negated: rotate_half(x) * sin == swap_halves(x) * signed_sin."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding, the rotate-half form of Llama and Qwen, on ``x`` in token layout
    [batch, tokens, heads, dim]: one multiply and one fused multiply-add over contiguous memory (the
    rotate-half form over a transposed view costs three times as much on a CPU)."""
    half = x.shape[-1] // 2
    swapped = x.view(*x.shape[:-1], 2, half).flip(-2).view_as(x)
    return torch.addcmul(x * cos.unsqueeze(2), swapped, signed_sin.unsqueeze(2))


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The RMSNorm of Llama-family models: normalised in float32, cast back, scaled by the weight."""
    return weight * torch.nn.functional.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate).mul_(up)


_KERNELS: dict[str, Any] = {"rms": _rms, "silu_mul": _silu_mul}
_COMPILED: dict[str, Any] = {}


def _kernel(name: str, compiled: bool) -> Any:
    """An elementwise kernel of the fast path, eager or through ``torch.compile`` (compiled once per process,
    dynamic shapes, shared by every layer and model)."""
    if not compiled:
        return _KERNELS[name]
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(_KERNELS[name], dynamic=True)
    return _COMPILED[name]


def _norm(norm: nn.Module, x: torch.Tensor, compiled: bool = False) -> torch.Tensor:
    """``norm(x)`` for the RMSNorm of Llama-family models through the fused kernel: the same float32
    arithmetic (bit-identical results), half the time on a CPU, a third for the per-head norms of Qwen3."""
    eps = getattr(norm, "variance_epsilon", None)
    if not type(norm).__name__.endswith("RMSNorm") or eps is None or getattr(norm, "weight", None) is None:
        return norm(x)
    return _kernel("rms", compiled)(x, norm.weight, eps)


def _heads(attn: nn.Module, proj: nn.Module, norm: str, x: torch.Tensor, cos: torch.Tensor,
           signed_sin: torch.Tensor, compiled: bool = False) -> torch.Tensor:
    """Projected, normed, rotated heads as [batch, heads, tokens, dim] (a transposed view)."""
    y = proj(x).view(*x.shape[:-1], -1, attn.head_dim)
    if getattr(attn, norm, None) is not None:
        y = _norm(getattr(attn, norm), y, compiled)
    return _rotate(y, cos, signed_sin).transpose(1, 2)


def _gate_up_weight(mlp: nn.Module) -> torch.Tensor | None:
    """The gate and up projections of a SiLU-gated MLP as one [2 * inner, hidden] matrix, or ``None``.

    The two weights are made views into the joined matrix, so in-place updates and ``load_state_dict``
    keep it current and no memory is duplicated; anything that replaces a weight is detected by address.
    """
    gate, up = getattr(mlp, "gate_proj", None), getattr(mlp, "up_proj", None)
    if type(gate) is not nn.Linear or type(up) is not nn.Linear or gate.bias is not None or up.bias is not None:
        return None
    if type(getattr(mlp, "act_fn", None)).__name__ not in ("SiLU", "SiLUActivation"):
        return None
    joined = getattr(mlp, "_lbnl_gate_up", None)
    g, u = gate.weight, up.weight
    if (joined is not None and joined.dtype == g.dtype and joined.device == g.device
            and g.data_ptr() == joined.data_ptr() and u.data_ptr() == joined[g.shape[0]:].data_ptr()):
        return joined
    if g.requires_grad and torch.is_grad_enabled():
        return None
    with torch.no_grad():
        joined = torch.cat([g.detach(), u.detach()], dim=0)
        gate.weight.data = joined[: g.shape[0]]
        up.weight.data = joined[g.shape[0]:]
    mlp._lbnl_gate_up = joined
    return joined


def _mlp(mlp: nn.Module, x: torch.Tensor, compiled: bool = False) -> torch.Tensor:
    """``mlp(x)``; a SiLU-gated MLP runs its gate and up projections as one matmul, SiLU and product in place."""
    joined = _gate_up_weight(mlp)
    if joined is None:
        return mlp(x)
    return mlp.down_proj(_kernel("silu_mul", compiled)(torch.nn.functional.linear(x, joined)))


def _decode(
    backbone: nn.Module,
    rows: Sequence[Sequence[int]],
    prefix: PrefixState | None = None,
    select: Sequence[Sequence[int]] | None = None,
    keep_kv: bool = False,
    compiled: bool = False,
    attention: str = "sdpa",
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The decoder forward of a Llama-family backbone over prompts packed end to end, without padding.

    Equal to ``backbone(row).last_hidden_state`` for each row, with these savings: the rows are
    concatenated so the linear layers never compute padding, and attention runs per row as the
    causal SDPA kernel; ``prefix`` supplies the keys and values of tokens that precede every row
    (shared prompt heads are computed once; handled by padding the queries, never by a dense
    mask); with ``select`` (positions per row) the last layer computes queries, MLP and final
    norm only at those positions. Returns [tokens, hidden] (the selected tokens, row by row, when
    ``select`` is given) and, with ``keep_kv``, every layer's keys and values of the new tokens.
    ``compiled`` runs the norms and the SiLU product through ``torch.compile``; ``attention``
    (``sdpa`` or ``chunked``) picks the causal attention kernel of the full layers.
    """
    F = torch.nn.functional
    device = backbone.get_input_embeddings().weight.device
    start = len(prefix) if prefix is not None else 0
    lengths = [len(r) for r in rows]
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    ids = torch.tensor([t for r in rows for t in r], dtype=torch.long, device=device).unsqueeze(0)
    positions = torch.cat([torch.arange(start, start + n, device=device) for n in lengths]).unsqueeze(0)
    hidden = backbone.get_input_embeddings()(ids)
    cos, sin = backbone.rotary_emb(hidden, positions)
    sin = _signed_sin(sin)
    if select is not None:
        picked = torch.tensor([bounds[i] + p for i, row in enumerate(select) for p in row], device=device)
        picked_bounds = [0]
        for row in select:
            picked_bounds.append(picked_bounds[-1] + len(row))
    keys_out: list[torch.Tensor] = []
    values_out: list[torch.Tensor] = []
    layers = backbone.layers
    for i, layer in enumerate(layers):
        attn = layer.self_attn
        x = _norm(layer.input_layernorm, hidden, compiled)
        k = _heads(attn, attn.k_proj, "k_norm", x, cos, sin, compiled)
        v = attn.v_proj(x).view(1, x.shape[1], -1, attn.head_dim).transpose(1, 2)
        if keep_kv:
            keys_out.append(k)
            values_out.append(v)
        last = select is not None and i == len(layers) - 1
        if last:
            hidden, x = hidden[:, picked], x[:, picked]
            q = _heads(attn, attn.q_proj, "q_norm", x, cos[:, picked], sin[:, picked], compiled)
        else:
            q = _heads(attn, attn.q_proj, "q_norm", x, cos, sin, compiled)
        gqa = q.shape[1] != k.shape[1]
        outs = []
        for r in range(len(rows)):
            ks, vs = k[:, :, bounds[r]:bounds[r + 1]], v[:, :, bounds[r]:bounds[r + 1]]
            if prefix is not None:
                ks, vs = torch.cat([prefix.keys[i], ks], dim=2), torch.cat([prefix.values[i], vs], dim=2)
            if last:
                qs = q[:, :, picked_bounds[r]:picked_bounds[r + 1]]
                at = torch.tensor(select[r], device=device).unsqueeze(-1) + start
                visible = torch.arange(ks.shape[2], device=device) <= at
                outs.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=visible, scale=attn.scaling,
                                                           enable_gqa=gqa))
                continue
            if attention == "chunked":
                rows_q = q[0, :, bounds[r]:bounds[r + 1]].transpose(0, 1)
                chunked = causal_attention_chunked(rows_q, ks[0].contiguous(), vs[0].contiguous(), attn.scaling)
                outs.append(chunked.transpose(0, 1).unsqueeze(0))
                continue
            qs = q[:, :, bounds[r]:bounds[r + 1]]
            if start:
                qs = torch.cat([qs.new_zeros(1, qs.shape[1], start, qs.shape[3]), qs], dim=2)
            out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=attn.scaling, enable_gqa=gqa)
            outs.append(out[:, :, start:] if start else out)
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(*hidden.shape[:-1], -1))
        hidden = hidden + _mlp(layer.mlp, _norm(layer.post_attention_layernorm, hidden, compiled), compiled)
    return _norm(backbone.norm, hidden, compiled)[0], keys_out, values_out


def quantize_int8(model: "LBNLModel") -> "LBNLModel":
    """Replace the decoder's linear layers by int8 dynamically quantized ones, in place (CPU, float32 only).

    Weights are stored in int8 and activations quantized per call (fbgemm); the projector stays in
    float32. Scores move by about 1e-2: measure the ranking quality before relying on it.
    """
    if model.device.type != "cpu" or model.dtype != torch.float32:
        raise InvalidInputError("int8 quantization needs a float32 model on the CPU (use dtype='float32', device='cpu')")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(model.backbone, {nn.Linear}, dtype=torch.qint8, inplace=True)
    model.quantized = "int8"
    return model


class LBNLModel(nn.Module):
    """Backbone plus projector; reads document embeddings at embed tokens and the query's at the rerank token."""

    def __init__(self, backbone: nn.Module, projector: nn.Sequential, embed_token_id: int, rerank_token_id: int):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.embed_token_id = embed_token_id
        self.rerank_token_id = rerank_token_id
        self.quantized: str | None = None
        #: Run the fast path's norms and SiLU product through ``torch.compile`` (see :meth:`compile_kernels`).
        self.compiled = False
        #: The fast path's attention kernel: ``auto`` (see :func:`resolve_attention`), ``sdpa`` or ``chunked``.
        self.attention = "auto"

    @property
    def config(self) -> Any:
        return self.backbone.config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def fast_path(self) -> bool:
        """Whether :meth:`encode` runs lbnl's own decoder loop (prefix reuse, last-layer pruning)."""
        return fast_path_supported(self.backbone)

    @property
    def attention_kernel(self) -> str:
        """The attention kernel the fast path runs with the current weights and device."""
        return resolve_attention(self.attention, self.dtype, self.device)

    def compile_kernels(self) -> "LBNLModel":
        """Fuse the fast path's elementwise work (RMSNorms, SiLU product) with ``torch.compile``: about 10% faster
        on a CPU after a one-off compilation of some seconds per process; needs a C++ compiler. Scores move by
        float rounding only."""
        self.compiled = True
        return self

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        tokenizer: Any,
        *,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        attn_implementation: str | None = "sdpa",
    ) -> "LBNLModel":
        """Load a checkpoint directory in the official layout (use :func:`resolve_checkpoint` for hub ids)."""
        from transformers import AutoConfig, AutoModel
        from transformers.utils import logging as hf_logging

        path = Path(path)
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path} has no config.json")
        if not _safetensors_files(path):
            raise CheckpointError(f"{path} has no .safetensors weights (pickled weights are never loaded)")
        embed_id, rerank_id = special_token_ids(tokenizer)
        projector_state = _load_projector_state(path)
        missing = [k for k in ("projector.0.weight", "projector.2.weight") if k.removeprefix("projector.") not in projector_state]
        if missing:
            raise CheckpointError(f"{path} has no projector weights: missing {', '.join(missing)}")
        config = AutoConfig.from_pretrained(path, trust_remote_code=False)
        device_ = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, getattr(config, "dtype", None) or getattr(config, "torch_dtype", None), device_)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            backbone, info = AutoModel.from_pretrained(
                path,
                config=config,
                dtype=torch_dtype,
                use_safetensors=True,
                trust_remote_code=False,
                attn_implementation=attn_implementation,
                output_loading_info=True,
            )
        finally:
            hf_logging.set_verbosity(verbosity)
        if info.get("missing_keys"):
            raise CheckpointError(f"{path} lacks backbone weights: {sorted(info['missing_keys'])[:5]}")
        w0, w2 = projector_state["0.weight"], projector_state["2.weight"]
        hidden = backbone.config.hidden_size
        if w0.shape[1] != hidden or w2.shape[1] != w0.shape[0]:
            raise CheckpointError(
                f"projector shapes {tuple(w0.shape)} and {tuple(w2.shape)} do not fit hidden size {hidden}"
            )
        projector = build_projector(hidden, w0.shape[0], w2.shape[0])
        projector.load_state_dict(projector_state)
        if backbone.get_input_embeddings().num_embeddings <= max(embed_id, rerank_id):
            raise CheckpointError(
                f"the tokenizer's special token ids ({embed_id}, {rerank_id}) exceed the model's vocabulary "
                f"({backbone.get_input_embeddings().num_embeddings} rows)"
            )
        model = cls(backbone, projector, embed_id, rerank_id).to(device=device_, dtype=torch_dtype)
        return model.eval()

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (after the last norm) for right-padded ``input_ids`` of shape [batch, length].

        With right padding, causal attention already keeps every real token blind to the padding, so no
        mask is needed and the fast causal kernel is used.
        """
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.projector(hidden)

    def forward(self, input_ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Projected document embeddings per row (one per embed token) and the query embedding per row."""
        hidden = self.hidden_states(input_ids)
        doc_mask = input_ids == self.embed_token_id
        query_mask = input_ids == self.rerank_token_id
        if not bool((query_mask.sum(dim=1) == 1).all()):
            raise ValueError("every prompt must hold exactly one rerank token")
        docs = self.project(hidden[doc_mask])
        query = self.project(hidden[query_mask])
        return list(docs.split(doc_mask.sum(dim=1).tolist())), query

    @torch.inference_mode()
    def prefix_state(self, ids: Sequence[int], base: PrefixState | None = None) -> PrefixState:
        """Keys and values of the token prefix ``ids``, extending ``base`` (a cached state for a prefix of ``ids``)."""
        if not self.fast_path:
            raise ValueError("prefix states need a backbone supported by the fast path")
        ids = tuple(int(i) for i in ids)
        start = len(base) if base is not None else 0
        if base is not None and ids[:start] != base.ids:
            raise ValueError("the base state is not a prefix of ids")
        if start == len(ids) and base is not None:
            return base
        _, keys, values = _decode(self.backbone, [ids[start:]], prefix=base, keep_kv=True, compiled=self.compiled,
                                 attention=self.attention_kernel)
        if base is not None:
            keys = [torch.cat([a, b], dim=2) for a, b in zip(base.keys, keys)]
            values = [torch.cat([a, b], dim=2) for a, b in zip(base.values, values)]
        return PrefixState(ids, keys, values)

    @torch.inference_mode()
    def encode(
        self, rows: Sequence[Sequence[int]], prefix: PrefixState | None = None, pad_token_id: int = 0
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Inference: projected document embeddings per row and the query embedding per row, like :meth:`forward`.

        Args:
            rows: token ids of each prompt, or of what follows ``prefix`` when one is given. Tokens after
                the rerank token cannot change a score and may be left out.
            prefix: keys and values of a token prefix shared by every row (see :meth:`prefix_state`).
            pad_token_id: id used to right-pad the rows when the plain forward runs (the fast path packs
                the rows end to end and computes no padding).
        """
        if not self.fast_path:
            if prefix is not None:
                rows = [list(prefix.ids) + list(r) for r in rows]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
            for n, row in enumerate(rows):
                ids[n, : len(row)] = torch.as_tensor(row, dtype=torch.long)
            return self(ids.to(self.device))
        select, counts = [], []
        for row in rows:
            docs_at = [i for i, t in enumerate(row) if t == self.embed_token_id]
            query_at = [i for i, t in enumerate(row) if t == self.rerank_token_id]
            if len(query_at) != 1:
                raise ValueError("every prompt must hold exactly one rerank token")
            select.append(docs_at + query_at)
            counts.append(len(docs_at))
        hidden, _, _ = _decode(self.backbone, rows, prefix=prefix, select=select, compiled=self.compiled,
                               attention=self.attention_kernel)
        projected = self.project(hidden)
        docs, queries, at = [], [], 0
        for n in counts:
            docs.append(projected[at:at + n])
            queries.append(projected[at + n])
            at += n + 1
        return docs, torch.stack(queries)

    def save_pretrained(self, path: str | os.PathLike[str], tokenizer: Any | None = None) -> None:
        """Write the official layout: config.json, model.safetensors (``model.*`` and ``projector.*``), tokenizer."""
        if self.quantized:
            raise CheckpointError("a quantized model cannot be saved in the official layout; save the float model")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = self.backbone.config
        config.architectures = ["JinaForRanking"]
        config.save_pretrained(path)
        raw = json.loads((path / "config.json").read_text())
        raw["torch_dtype"] = str(self.dtype).removeprefix("torch.")
        (path / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
        state = {f"model.{k}": v for k, v in self.backbone.state_dict().items()}
        state.update({f"projector.{k}": v for k, v in self.projector.state_dict().items()})
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(path / "model.safetensors"),
                  metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
