"""The fast inference engine: lbnl's own decoder loop for Llama-family backbones and the runner that
turns prompt blocks into embeddings.

The decoder loop packs prompts end to end (no padding is computed), reuses the keys and values of
a prompt head shared by several prompts, and runs the last layer only at the positions whose hidden
states are read. It knows nothing of queries or documents beyond the token ids of the two special
tokens; scores are made by :mod:`lbnl.reranker`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch
from torch import nn

from . import attention as attention_kernels
from . import int8, native

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


def _native(x: torch.Tensor) -> bool:
    """Whether :mod:`lbnl.native` runs this tensor's elementwise pass: bf16 on a CPU, at inference, kernels built."""
    return (x.dtype == torch.bfloat16 and x.device.type == "cpu" and not (torch.is_grad_enabled() and x.requires_grad)
            and native.available())


def _rms_eps(norm: nn.Module) -> float | None:
    """The epsilon of a Llama-family RMSNorm with a weight (what lbnl's norm kernels compute), else ``None``."""
    eps = getattr(norm, "variance_epsilon", None)
    if not type(norm).__name__.endswith("RMSNorm") or getattr(norm, "weight", None) is None:
        return None
    return eps


def _norm(norm: nn.Module, x: torch.Tensor, compiled: bool = False) -> torch.Tensor:
    """``norm(x)`` for the RMSNorm of Llama-family models through the fused kernel: the same float32
    arithmetic (bit-identical results), half the time on a CPU, a third for the per-head norms of Qwen3.
    In bf16 on a CPU, one pass of :mod:`lbnl.native` (4x faster again; float32 sums in another order, so
    about one output in a million moves by one bf16 rounding step)."""
    eps = _rms_eps(norm)
    if eps is None:
        return norm(x)
    if not compiled and _native(x) and norm.weight.dtype == torch.bfloat16 and x.is_contiguous():
        return native.rms_norm(x, norm.weight, eps)
    return _kernel("rms", compiled)(x, norm.weight, eps)


def _heads(attn: nn.Module, proj: nn.Module, norm: str, x: torch.Tensor, cos: torch.Tensor,
           signed_sin: torch.Tensor, compiled: bool = False) -> torch.Tensor:
    """Projected, normed, rotated heads as [batch, heads, tokens, dim] (a transposed view). In bf16 on a
    CPU the per-head norm and the rotation are one pass of :mod:`lbnl.native` (the same roundings)."""
    y = proj(x).view(*x.shape[:-1], -1, attn.head_dim)
    head_norm = getattr(attn, norm, None)
    eps = None if head_norm is None else _rms_eps(head_norm)
    plain_norm = head_norm is None or (eps is not None and head_norm.weight.dtype == torch.bfloat16)
    if (not compiled and plain_norm and y.shape[0] == 1 and _native(y) and y.is_contiguous()
            and cos.dtype == signed_sin.dtype == torch.bfloat16):
        weight = None if head_norm is None else head_norm.weight
        return native.norm_rotate(y[0], weight, eps or 0.0, cos[0].contiguous(),
                                  signed_sin[0].contiguous()).unsqueeze(0).transpose(1, 2)
    if head_norm is not None:
        y = _norm(head_norm, y, compiled)
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
    gate_up = torch.nn.functional.linear(x, joined)
    if not compiled and _native(gate_up) and gate_up.is_contiguous():
        return mlp.down_proj(native.silu_mul(gate_up))
    return mlp.down_proj(_kernel("silu_mul", compiled)(gate_up))


def decode(
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
    (``sdpa``, ``chunked``, ``int8`` or ``amx``) picks the causal attention kernel of the full layers. Layers
    converted by :mod:`lbnl.int8` quantize the input of their query, key and value projections once.
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
        x = int8.shared_input(attn, _norm(layer.input_layernorm, hidden, compiled))
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
            if attention in ("chunked", "int8", "amx"):  # kernels taking [n, heads, dim] and [kv_heads, L, dim]
                rows_q = q[0, :, bounds[r]:bounds[r + 1]].transpose(0, 1)
                if attention == "amx":  # takes the heads-first views as they are; returns token-major rows
                    chunked = native.causal_attention_amx(rows_q, ks[0], vs[0], attn.scaling)
                else:
                    kernel = {"chunked": attention_kernels.causal_attention_chunked,
                              "int8": int8.causal_attention_int8}[attention]
                    chunked = kernel(rows_q, ks[0].contiguous(), vs[0].contiguous(), attn.scaling)
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


#: Shared prompt heads shorter than this are not worth a separate pass.
MIN_PREFIX_TOKENS = 16


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class Block:
    """One prompt: the documents it scores (input positions), its token ids, where its rerank token ends
    (``end``; later tokens cannot change a score) and how long its shared prompt head is (``head``)."""

    doc_indices: list[int]
    input_ids: list[int]
    end: int = 0
    head: int = 0


class Encoder(Protocol):
    """What the runner needs of a model (:class:`lbnl.model.LBNLModel` is one)."""

    device: torch.device
    fast_path: bool

    def encode(self, rows: Sequence[Sequence[int]], prefix: PrefixState | None = None,
               pad_token_id: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]: ...

    def prefix_state(self, ids: Sequence[int], base: PrefixState | None = None) -> PrefixState: ...

    def __call__(self, input_ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]: ...


class PrefixCache:
    """Key/value states of prompt heads, for the blocks of one run only.

    A state is always computed as its first ``anchor`` tokens (the system prompt, shared by every
    query) and then the rest, so a score never depends on what happened to be cached. Living for one
    run, the cache can never serve states of weights that have since changed.
    """

    def __init__(self, model: Encoder, size: int = 8):
        self.model = model
        self.size = size
        self.states: OrderedDict[tuple[int, ...], PrefixState] = OrderedDict()

    def get(self, ids: Sequence[int], anchor: int) -> PrefixState:
        key = tuple(ids)
        if key in self.states:
            self.states.move_to_end(key)
            return self.states[key]
        base = None
        if 0 < anchor < len(key):
            base = self.states.get(key[:anchor]) or self.model.prefix_state(key[:anchor])
            self._put(base)
        state = self.model.prefix_state(key, base)
        self._put(state)
        return state

    def _put(self, state: PrefixState) -> None:
        self.states[state.ids] = state
        self.states.move_to_end(state.ids)
        while len(self.states) > self.size:
            self.states.popitem(last=False)


def pack(blocks: Sequence[Block], max_batch_tokens: int) -> list[list[Block]]:
    """Blocks sorted by length, longest first, packed into batches of at most ``max_batch_tokens`` padded tokens."""
    ordered = sorted(blocks, key=lambda b: len(b.input_ids), reverse=True)
    batches: list[list[Block]] = []
    for block in ordered:
        if batches and len(batches[-1][0].input_ids) * (len(batches[-1]) + 1) <= max_batch_tokens:
            batches[-1].append(block)
        else:
            batches.append([block])
    return batches


@torch.inference_mode()
def run_blocks(
    model: Encoder,
    blocks: Sequence[Block],
    *,
    max_batch_tokens: int,
    pad_token_id: int,
    anchor: Sequence[int] = (),
    fast: bool = True,
    progress: bool = False,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Projected embeddings of every block, keyed by ``id(block)``: (documents [n, d], query [d]).

    Args:
        model: the model to run.
        blocks: the prompts; a block's results depend on the others in its batch only through the
            matrix kernels' rounding (none when every block is a batch of its own).
        max_batch_tokens: padded tokens per forward.
        pad_token_id: right-padding id for the plain transformers forward.
        anchor: token ids every prompt starts with (the system prompt): computed first in every
            prefix state so that states are identical whatever is batched together.
        fast: use the model's own decoder loop when it has one (prefix reuse, last layer pruning).
        progress: show a tqdm bar over the batches.
    """
    from tqdm.auto import tqdm

    outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    batches = pack(blocks, max_batch_tokens)
    cache = PrefixCache(model)
    fast = fast and model.fast_path
    for batch in tqdm(batches, desc="rerank", unit="batch", disable=not progress or len(batches) < 2):
        if fast:
            docs, query = _encode_fast(model, batch, cache, anchor, pad_token_id)
        else:
            width = len(batch[0].input_ids)
            ids = torch.full((len(batch), width), pad_token_id, dtype=torch.long)
            for row, block in enumerate(batch):
                ids[row, : len(block.input_ids)] = torch.tensor(block.input_ids)
            docs, query = model(ids.to(model.device))
        for row, block in enumerate(batch):
            if docs[row].shape[0] != len(block.doc_indices):
                raise RuntimeError("embed token count does not match the documents of a block")
            outputs[id(block)] = (docs[row], query[row])
    return outputs


def _encode_fast(model: Encoder, batch: list[Block], cache: PrefixCache, anchor: Sequence[int],
                 pad_token_id: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    rows = [b.input_ids[: b.end] for b in batch]
    shared = min(b.head for b in batch)
    for row in rows[1:]:
        shared = min(shared, common_prefix(rows[0], row))
    if shared < MIN_PREFIX_TOKENS:
        return model.encode(rows, pad_token_id=pad_token_id)
    prefix = cache.get(rows[0][:shared], common_prefix(rows[0], anchor))
    return model.encode([r[shared:] for r in rows], prefix=prefix, pad_token_id=pad_token_id)
