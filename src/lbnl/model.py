"""The LBNL model: a decoder backbone, a projector, and embeddings read at two special tokens.

The backbone is any ``transformers.AutoModel`` decoder; the projector is a two-layer MLP without
biases (docs/spec.md). :meth:`LBNLModel.forward` is the plain transformers forward (used by
training and by backbones the fast path does not know); :meth:`LBNLModel.encode` is inference
through :mod:`lbnl.engine`. Loading and saving checkpoints is :mod:`lbnl.checkpoints`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .defaults import EMBED_TOKEN, PROJECTOR_DIM, RERANK_TOKEN
from .engine import PrefixState, decode, fast_path_supported
from .errors import CheckpointError
from .hardware import resolve_attention


def config_head_dim(config: Any) -> int:
    """Width of one attention head of a decoder ``config``: its ``head_dim`` where it sets one (Qwen3's heads are
    not hidden size / heads wide), else hidden size / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


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
        #: The fast path's attention kernel: ``auto`` (see :func:`resolve_attention`), ``sdpa``, ``chunked``,
        #: ``int8`` or ``amx``.
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
        return resolve_attention(self.attention, self.dtype, self.device, self.quantized, config_head_dim(self.config))

    def compile_kernels(self) -> "LBNLModel":
        """Fuse the fast path's elementwise work (RMSNorms, SiLU product) with ``torch.compile``: about 10% faster
        on a CPU after a one-off compilation of some seconds per process; needs a C++ compiler. Scores move by
        float rounding only."""
        self.compiled = True
        return self

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
        _, keys, values = decode(self.backbone, [ids[start:]], prefix=base, keep_kv=True, compiled=self.compiled,
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
        hidden, _, _ = decode(self.backbone, rows, prefix=prefix, select=select, compiled=self.compiled,
                               attention=self.attention_kernel)
        projected = self.project(hidden)
        docs, queries, at = [], [], 0
        for n in counts:
            docs.append(projected[at:at + n])
            queries.append(projected[at + n])
            at += n + 1
        return docs, torch.stack(queries)
