"""Training lists: the prompts of a group's list, the deterministic stream of lists, padded batches.

Which group a step sees, its negatives, the positive's place in the prompt and the augmentation are
pure functions of ``(seed, position in the stream)``, so a resumed run sees exactly the lists an
uninterrupted one would. Prompts are built with :func:`lbnl.prompt.build_prompt` after
:func:`lbnl.prompt.truncate_many`, exactly as at inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import InvalidInputError
from ..prompt import EMBED_TOKEN, RERANK_TOKEN, build_prompt, truncate, truncate_many
from .sources import Group, TrainData


@dataclass
class EncodedList:
    """The prompts of one training list and where each embedding sits.

    Slots are ``(prompt index, token position)``, indexed by the list's documents in canonical
    order (the positive first): ``doc`` in the main prompts, ``query`` and ``early`` the final and
    early rerank tokens the document's prompt holds, ``augmented`` the document's augmented copy in
    the second pass, ``reread_doc`` and ``reread_query`` each document's embed token and the final rerank
    token in a prompt holding the main prompt's documents in reverse order (a one-document list is its
    own reverse: the main slots). ``positive`` is False for a list holding only a negative (``data.lone_split``).
    ``query_text`` and ``texts`` are the query and documents (canonical order) as the prompts hold
    them, after truncation: what a distillation teacher reads.
    """

    prompts: list[list[int]]
    doc: list[tuple[int, int]]
    query: list[tuple[int, int]]
    early: list[tuple[int, int]] | None = None
    augmented: list[tuple[int, int]] | None = None
    reread_doc: list[tuple[int, int]] | None = None
    reread_query: list[tuple[int, int]] | None = None
    positive: bool = True
    query_text: str = ""
    texts: list[str] | None = None

    @property
    def n_docs(self) -> int:
        return len(self.doc)

    @property
    def n_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)


def drop_span(ids: Sequence[int], rng: np.random.Generator, low: float, high: float) -> list[int]:
    """Remove one random contiguous span of ``round(f * len(ids))`` tokens, ``f`` uniform in [low, high]."""
    n = len(ids)
    span = int(round(rng.uniform(low, high) * n))
    if span <= 0 or span >= n:
        return list(ids)
    start = int(rng.integers(0, n - span + 1))
    return list(ids[:start]) + list(ids[start + span:])


class ListEncoder:
    """Turns (query, documents) into token ids of training prompts, truncated as at inference.

    Args:
        tokenizer: the model's tokenizer (with the two special tokens).
        mode: ``listwise`` (one prompt per list) or ``pointwise`` (one prompt per document).
        max_doc_tokens, max_query_tokens: truncation caps.
        instruction: optional instruction in every prompt.
        dual: add the early query token (for L_dual).
        similar: add the augmented, shuffled second pass (for L_similar).
        span_drop: (low, high) fraction of a document's tokens dropped in its augmented copy.
        reverse: add the main prompt's documents in reverse order as another prompt (for L_order;
            listwise only). It draws nothing from the generator, so the lists are the same either way.
    """

    def __init__(self, tokenizer: Any, *, mode: str = "listwise", max_doc_tokens: int = 768,
                 max_query_tokens: int = 512, instruction: str | None = None, dual: bool = True,
                 similar: bool = True, span_drop: tuple[float, float] = (0.1, 0.2), reverse: bool = False):
        if mode not in ("listwise", "pointwise"):
            raise ValueError(f"mode must be listwise or pointwise, got {mode!r}")
        if reverse and mode != "listwise":
            raise ValueError("reverse (L_order) needs listwise prompts: a pointwise prompt has no order")
        self.tokenizer = tokenizer
        self.mode = mode
        self.max_doc_tokens = max_doc_tokens
        self.max_query_tokens = max_query_tokens
        self.instruction = instruction
        self.dual = dual
        self.similar = similar
        self.span_drop = span_drop
        self.reverse = reverse
        vocab = tokenizer.get_vocab()
        self.embed_id, self.rerank_id = vocab[EMBED_TOKEN], vocab[RERANK_TOKEN]
        self._docs: dict[str, tuple[str, list[int]]] = {}
        self._queries: dict[str, str] = {}

    def _doc(self, doc_id: str, text: str) -> tuple[str, list[int]]:
        if doc_id not in self._docs:
            (short,), _ = truncate_many([text], self.tokenizer, self.max_doc_tokens)
            self._docs[doc_id] = (short, self.tokenizer(short, add_special_tokens=False)["input_ids"])
        return self._docs[doc_id]

    def _query(self, query: str) -> str:
        if query not in self._queries:
            self._queries[query] = truncate(query, self.tokenizer, self.max_query_tokens)[0]
        return self._queries[query]

    def _prompts(self, query: str, groups: list[list[str]], early: bool) -> list[list[int]]:
        prompts = [build_prompt(query, g, self.instruction, early_query_token=early) for g in groups]
        return self.tokenizer(prompts, add_special_tokens=True)["input_ids"]

    def _locate(self, prompts: list[list[int]], early: bool) -> tuple[list[list[int]], list[int], list[int]]:
        docs, finals, earlies = [], [], []
        for ids in prompts:
            arr = np.asarray(ids)
            docs.append(np.flatnonzero(arr == self.embed_id).tolist())
            ranks = np.flatnonzero(arr == self.rerank_id)
            if len(ranks) != (2 if early else 1):
                raise RuntimeError("a training prompt holds an unexpected number of rerank tokens")
            finals.append(int(ranks[-1]))
            earlies.append(int(ranks[0]))
        return docs, finals, earlies

    def encode(self, query: str, docs: Sequence[tuple[str, str]], rng: np.random.Generator) -> EncodedList:
        """Encode one list; ``docs`` are ``(doc id, text)`` with the positive first."""
        query = self._query(query)
        texts = [self._doc(i, t) for i, t in docs]
        n = len(texts)
        passes = [("main", [t for t, _ in texts], rng.permutation(n))]
        if self.similar:
            low, high = self.span_drop
            augmented = [self.tokenizer.decode(drop_span(ids, rng, low, high), skip_special_tokens=False)
                         for _, ids in texts]
            passes.append(("augmented", augmented, rng.permutation(n)))
        if self.reverse and n > 1:
            passes.append(("reread", passes[0][1], passes[0][2][::-1]))
        out = EncodedList(prompts=[], doc=[(0, 0)] * n, query=[(0, 0)] * n,
                          early=[(0, 0)] * n if self.dual else None,
                          augmented=[(0, 0)] * n if self.similar else None,
                          query_text=query, texts=[t for t, _ in texts])
        if self.reverse:  # filled by the reversed pass; a one-document list reads its main slots
            out.reread_doc, out.reread_query = ([(0, 0)] * n, [(0, 0)] * n) if n > 1 else (out.doc, out.query)
        for name, pass_texts, order in passes:
            if self.mode == "listwise":
                layout = [list(order)]
            else:
                layout = [[int(i)] for i in order]
            prompts = self._prompts(query, [[pass_texts[i] for i in g] for g in layout], self.dual)
            doc_pos, finals, earlies = self._locate(prompts, self.dual)
            base = len(out.prompts)
            for p, group in enumerate(layout):
                if len(doc_pos[p]) != len(group):
                    raise RuntimeError("a training prompt holds an unexpected number of embed tokens")
                for slot, canonical in enumerate(group):
                    where = (base + p, doc_pos[p][slot])
                    if name == "main":
                        out.doc[canonical] = where
                        out.query[canonical] = (base + p, finals[p])
                        if out.early is not None:
                            out.early[canonical] = (base + p, earlies[p])
                    elif name == "reread":
                        out.reread_doc[canonical] = where
                        out.reread_query[canonical] = (base + p, finals[p])
                    else:
                        assert out.augmented is not None
                        out.augmented[canonical] = where
            out.prompts.extend(prompts)
        return out


class ListSampler:
    """The deterministic stream of training lists.

    List number ``g`` of the stream belongs to epoch ``g // len(groups)``; each epoch visits the
    groups in its own seeded order. The negatives, shuffles and augmentation of list ``g`` come
    from a generator seeded with ``(seed, g)``.
    """

    def __init__(self, data: TrainData, encoder: ListEncoder, *, negatives: int, seed: int,
                 negatives_min: int | None = None, size_block: int = 1, lone_split: float = 0.0):
        if not data.groups:
            raise InvalidInputError("no training lists: the data source produced no groups")
        self.data = data
        self.encoder = encoder
        self.negatives = negatives
        self.negatives_min = negatives_min
        self.size_block = max(1, size_block)
        self.lone_split = lone_split
        self.seed = seed
        self._orders: dict[int, np.ndarray] = {}
        self._all_ids = list(data.docs)

    def group(self, g: int) -> Group:
        epoch, pos = divmod(g, len(self.data.groups))
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.seed, 1, epoch]).permutation(len(self.data.groups))}
        return self.data.groups[int(self._orders[epoch][pos])]

    def list_negatives(self, g: int) -> int:
        """Negatives of list ``g``: ``negatives``, or with ``negatives_min`` a list size drawn
        log-uniformly from ``negatives_min + 1 .. negatives + 1`` documents, shared by the
        ``size_block`` consecutive lists of a micro-batch (so they pad to the same width)."""
        if self.negatives_min is None:
            return self.negatives
        low, high = self.negatives_min + 1, self.negatives + 1
        u = np.random.default_rng([self.seed, 6, g // self.size_block]).uniform(np.log(low), np.log(high + 1))
        return min(high, int(np.exp(u))) - 1

    def negatives_for(self, group: Group, rng: np.random.Generator, count: int | None = None) -> list[str]:
        """``count`` (default ``negatives``) ids: drawn from the group's pool, topped up with random
        documents when the pool is short (BM25 finds few documents sharing a term with some queries) or
        when negatives are random."""
        count = self.negatives if count is None else count
        pool = [] if self.data.random_negatives else list(group.negatives)
        if len(pool) > count:
            return [pool[i] for i in sorted(rng.choice(len(pool), size=count, replace=False))]
        banned = set(group.positives) | {group.positive} | set(pool)
        need = min(count - len(pool), len(self._all_ids) - len(banned))
        while need > 0:
            picks = rng.choice(len(self._all_ids), size=min(len(self._all_ids), need + len(banned)), replace=False)
            for i in picks:
                if need and self._all_ids[i] not in banned:
                    pool.append(self._all_ids[i])
                    banned.add(self._all_ids[i])
                    need -= 1
        return pool

    def encode(self, g: int) -> EncodedList:
        group = self.group(g)
        rng = np.random.default_rng([self.seed, 0, g])
        ids = [group.positive, *self.negatives_for(group, rng, self.list_negatives(g))]
        return self.encoder.encode(group.query, [(i, self.data.docs[i]) for i in ids], rng)

    def is_lone_split(self, start: int) -> bool:
        """Whether the micro-batch starting at list ``start`` is a lone split (seeded per micro-batch)."""
        if not self.lone_split:
            return False
        return bool(np.random.default_rng([self.seed, 7, start // self.size_block]).uniform() < self.lone_split)

    def lone_lists(self, start: int, count: int) -> list[EncodedList]:
        """List ``start``'s query with its positive alone and ``count - 1`` of its negatives, each alone."""
        group = self.group(start)
        rng = np.random.default_rng([self.seed, 0, start])
        ids = [group.positive, *self.negatives_for(group, rng, count - 1)]
        out = []
        for k, i in enumerate(ids):
            item = self.encoder.encode(group.query, [(i, self.data.docs[i])], rng)
            item.positive = k == 0
            out.append(item)
        return out

    def lists(self, start: int, count: int) -> list[EncodedList]:
        """Lists ``start .. start + count - 1`` of the stream (one micro-batch when ``count`` is its size)."""
        if count >= 2 and self.is_lone_split(start):
            return self.lone_lists(start, count)
        return [self.encode(g) for g in range(start, start + count)]


@dataclass
class Batch:
    """Right-padded prompts of several lists and the flat positions (``row * width + column``) to read.

    ``doc``, ``query``, ``early``, ``augmented``, ``reread_doc``, ``reread_query`` and ``mask`` are
    ``[lists, max documents]``;
    ``positive`` ``[lists]`` marks the lists whose document 0 is a positive; ``queries`` and ``texts``
    hold each list's query and documents as text (for a teacher).
    """

    input_ids: Any
    doc: Any
    query: Any
    mask: Any
    early: Any = None
    augmented: Any = None
    reread_doc: Any = None
    reread_query: Any = None
    docs: int = 0
    tokens: int = 0
    positive: Any = None
    queries: list[str] | None = None
    texts: list[list[str]] | None = None


def collate(lists: Sequence[EncodedList], pad_id: int) -> Batch:
    """Pad the prompts of ``lists`` into one tensor and index every embedding position."""
    import torch

    prompts = [p for item in lists for p in item.prompts]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, : len(p)] = torch.tensor(p, dtype=torch.long)
    n = max(item.n_docs for item in lists)
    mask = torch.zeros((len(lists), n), dtype=torch.bool)
    tables: dict[str, Any] = {}
    for name in ("doc", "query", "early", "augmented", "reread_doc", "reread_query"):
        if getattr(lists[0], name) is None:
            tables[name] = None
            continue
        table = torch.zeros((len(lists), n), dtype=torch.long)
        offset = 0
        for b, item in enumerate(lists):
            for i, (prompt, pos) in enumerate(getattr(item, name)):
                table[b, i] = (offset + prompt) * width + pos
            offset += len(item.prompts)
        tables[name] = table
    for b, item in enumerate(lists):
        mask[b, : item.n_docs] = True
    return Batch(ids, tables["doc"], tables["query"], mask, tables["early"], tables["augmented"],
                 tables["reread_doc"], tables["reread_query"],
                 docs=sum(item.n_docs for item in lists), tokens=sum(item.n_tokens for item in lists),
                 positive=torch.tensor([item.positive for item in lists], dtype=torch.bool),
                 queries=[item.query_text for item in lists], texts=[list(item.texts or []) for item in lists])
