"""The small interface every peer implements, and the adapter that lets a peer score documents.

A :class:`Backend` maps token ids and read positions to final hidden states. :class:`PeerModel` wraps a
backend as the model :class:`lbnl.reranker.Reranker` expects (its plain, non-fast interface: right-padded
ids in, projected document and query embeddings out), so a peer scores through the very same prompt
building, block planning and merge as lbnl's paths; only the decoder forward differs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence


class PeerUnavailable(Exception):
    """A peer cannot run here; the message says why (missing package, no export for this backbone, a failure)."""


class Backend(ABC):
    """One peer runtime with one model loaded: token ids in, final hidden states at the read positions out."""

    #: ``family:variant``, e.g. ``openvino:bf16``.
    name: str = ""

    @abstractmethod
    def hidden(self, ids: Sequence[int], read: Sequence[int]) -> Any:
        """Final hidden states (after the last norm) of the causal forward over ``ids`` at positions ``read``,
        as a float32 numpy array [len(read), hidden]."""

    @abstractmethod
    def describe(self) -> str:
        """What runs: runtime version, precision, threads, the export it loaded."""

    def activation_bytes(self, tokens: int) -> int:
        """Memory one forward over ``tokens`` tokens needs beyond the weights, where that can outgrow the machine
        (the bench skips the path when it would not fit); 0 when it stays small."""
        return 0


class PeerModel:
    """A :class:`Backend` dressed as the model :class:`~lbnl.reranker.Reranker` drives (``fast_forward=False``).

    Each prompt row is cut after its rerank token (later tokens cannot change a score, and lbnl's fast path
    skips them too), its embed and rerank positions are read, and the checkpoint's projector (float32) maps
    them to embeddings. ``captured`` keeps the last hidden states of every prompt, keyed by its token ids.
    """

    fast_path = False

    def __init__(self, backend: Backend, projector: Any, embed_token_id: int, rerank_token_id: int):
        import torch

        self.backend = backend
        self.projector = projector
        self.embed_token_id = embed_token_id
        self.rerank_token_id = rerank_token_id
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.attention = "auto"
        self.captured: dict[tuple[int, ...], Any] = {}

    def read_positions(self, row: Sequence[int]) -> tuple[list[int], list[int]]:
        """``(ids up to the rerank token, read positions: every embed token, then the rerank token)``."""
        if self.rerank_token_id not in row:
            raise ValueError("every prompt must hold a rerank token")
        end = len(row) - list(row)[::-1].index(self.rerank_token_id)
        ids = [int(t) for t in row[:end]]
        return ids, [i for i, t in enumerate(ids) if t == self.embed_token_id] + [end - 1]

    def __call__(self, input_ids: Any) -> tuple[list[Any], Any]:
        import torch

        docs, queries = [], []
        with torch.inference_mode():
            for row in input_ids.tolist():
                ids, read = self.read_positions(row)
                hidden = torch.from_numpy(self.backend.hidden(ids, read)).float()
                self.captured[tuple(ids)] = hidden
                projected = self.projector(hidden)
                docs.append(projected[:-1])
                queries.append(projected[-1])
        return docs, torch.stack(queries)
