"""A sentence-embedding teacher for distillation (``loss.distill``): the cosine of mean-pooled,
normalised embeddings of a BERT-style encoder, the way sentence-transformers scores a query and a
document (all-MiniLM-L6-v2, for one).

A training-time tool only: inference never loads a teacher. The teacher reads the same truncated
texts the student reads, so the two score the same thing; embeddings are cached per text, because
a document comes back in many lists.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError


class EmbeddingTeacher:
    """Scores ``(query, documents)`` by the cosine of mean-pooled embeddings.

    Args:
        path: a local model directory (``config.json``, weights, tokenizer files) that
            ``transformers.AutoModel`` loads, e.g. all-MiniLM-L6-v2 unpacked by ``scripts/teacher.py fetch``.
        max_length: tokens kept per text (256 is what sentence-transformers uses for MiniLM).
        batch_size: texts per forward.
        cache_size: embeddings kept in memory (least recently used dropped first).
    """

    def __init__(self, path: str | Path, *, max_length: int = 256, batch_size: int = 64, cache_size: int = 200_000):
        from transformers import AutoModel, AutoTokenizer

        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise InvalidInputError(f"loss.teacher: {path} is not a model directory (no config.json); "
                                    "fetch one with: python scripts/teacher.py fetch")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.max_length = max_length
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.texts_encoded = 0

    @torch.inference_mode()
    def _encode(self, texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i:i + self.batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1))
        self.texts_encoded += len(texts)
        return torch.cat(out)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), D]`` normalised embeddings (cached per text)."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            for text, vec in zip(missing, self._encode(missing)):
                self._cache[text] = vec.clone()
        for t in texts:
            self._cache.move_to_end(t)
        out = torch.stack([self._cache[t] for t in texts])
        while len(self._cache) > self.cache_size:  # after reading: this call's texts may exceed the cache
            self._cache.popitem(last=False)
        return out

    def scores(self, query: str, documents: Sequence[str]) -> torch.Tensor:
        """``[len(documents)]`` cosines of each document with the query."""
        if not documents:
            return torch.zeros(0)
        q = self.encode([query])
        return (self.encode(documents) @ q.T).squeeze(1)
