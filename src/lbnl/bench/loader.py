"""Models and scorers for the paths: each model loaded once, weights copied into process memory.

Paths that share weights (kind, dtype, quantization, compile) share one loaded model, and the RSS
growth of each load is recorded so a path's peak memory can be reported as if it ran alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from .memory import rss
from .paths import PathSpec
from .reference import ReferenceScorer

class LbnlScorer:
    """lbnl's :class:`~lbnl.reranker.Reranker` with a path's settings, all queries in one ``rerank_many`` call."""

    def __init__(self, reranker: Any, attention: str = "auto"):
        self.reranker = reranker
        self.tokenizer = reranker.tokenizer
        self.attention = attention

    def score(self, queries: list[str], documents: list[list[str]], max_doc_length: int) -> list[list[float]]:
        self.reranker.model.attention = self.attention
        results = self.reranker.rerank_many(queries, documents, max_doc_length=max_doc_length)
        aligned = []
        for docs, ranked in zip(documents, results):
            row = [0.0] * len(docs)
            for r in ranked:
                row[r.index] = r.relevance_score
            aligned.append(row)
        return aligned


def materialize(module: Any) -> None:
    """Copy every weight into the process's own memory.

    transformers maps float32 safetensors files into memory instead of copying them, so the
    weights live in the page cache; when other processes need memory the kernel drops those pages
    and every forward reads the weights from disk again. Timing needs weights that stay put.
    """
    import torch

    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.data = tensor.data.clone()


class Loader:
    """Loads each model once per (kind, dtype, quantization, compile) and hands out scorers."""

    def __init__(self, path: Path):
        self.path = path
        self.models: dict[tuple[Any, ...], Any] = {}
        self.loaded_bytes: dict[tuple[Any, ...], int] = {}

    @staticmethod
    def key(spec: PathSpec) -> tuple[Any, ...]:
        if spec.kind == "reference":
            return ("reference", spec.dtype)
        return ("lbnl", spec.dtype, spec.quantize, spec.compile)

    def _load(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        import gc

        if key not in self.models:
            gc.collect()
            before = rss()
            self.models[key] = build()
            gc.collect()
            self.loaded_bytes[key] = max(0, rss() - before)
        return self.models[key]

    def scorer(self, spec: PathSpec) -> Any:
        import torch

        dtype = torch.float32 if spec.dtype == "float32" else torch.bfloat16
        if spec.kind == "reference":
            def build_reference() -> ReferenceScorer:
                scorer = ReferenceScorer(self.path, dtype)
                materialize(scorer.model)
                return scorer

            return self._load(self.key(spec), build_reference)
        from ..checkpoints import load_checkpoint
        from ..hardware import quantize_int8
        from ..reranker import Reranker

        def build() -> Any:
            model, tokenizer = load_checkpoint(self.path, dtype=dtype, device="cpu")
            materialize(model)
            if spec.quantize == "int8":
                quantize_int8(model)
            if spec.compile:
                model.compile_kernels()
            return model, tokenizer

        model, tokenizer = self._load(self.key(spec), build)
        reranker = Reranker(model, tokenizer, block_size=spec.block_size, fast_forward=spec.fast_forward,
                            name=self.path.name, pointwise=spec.pointwise)
        return LbnlScorer(reranker, spec.attention)

    def release(self, spec: PathSpec) -> None:
        """Forget the models only ``spec`` used (the reference models are large)."""
        if spec.kind == "reference":
            self.models.pop(self.key(spec), None)
            import gc

            gc.collect()
