"""Training lists: prompts identical to inference, a deterministic stream, list sizes, lone splits, batches."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lbnl.errors import InvalidInputError
from lbnl.prompt import EMBED_TOKEN, RERANK_TOKEN, build_prompt, truncate, truncate_many
from lbnl.train.config import load_config
from lbnl.train.lists import ListEncoder, ListSampler, collate, drop_span
from lbnl.train.sources import build_train_data
from train_toy import FILLER, data_config


def test_drop_span_removes_one_contiguous_span() -> None:
    rng = np.random.default_rng(0)
    ids = list(range(100))
    for _ in range(50):
        out = drop_span(ids, rng, 0.1, 0.2)
        dropped = 100 - len(out)
        assert 10 <= dropped <= 20
        gap = [i for i in ids if i not in set(out)]
        assert gap == list(range(gap[0], gap[0] + dropped))
    assert drop_span([1, 2], rng, 0.1, 0.2) == [1, 2]


def _docs(n: int, words: int = 40) -> list[tuple[str, str]]:
    rng = random.Random(1)
    return [(f"id{i}", f"doc{i} " + " ".join(rng.choice(FILLER) for _ in range(words))) for i in range(n)]


def test_listwise_prompt_equals_the_inference_prompt(lbnl_tokenizer) -> None:
    """Without the training-only extras, the prompt is exactly the one inference builds after truncation."""
    docs = _docs(4)
    enc = ListEncoder(lbnl_tokenizer, max_doc_tokens=16, max_query_tokens=8, dual=False, similar=False)
    query = "a long query about many things " * 5
    out = enc.encode(query, docs, np.random.default_rng(0))
    assert len(out.prompts) == 1
    texts, _ = truncate_many([t for _, t in docs], lbnl_tokenizer, 16)
    order = sorted(range(4), key=lambda i: out.doc[i][1])  # canonical documents in prompt order
    expected = build_prompt(truncate(query, lbnl_tokenizer, 8)[0], [texts[i] for i in order])
    assert out.prompts[0] == lbnl_tokenizer(expected)["input_ids"]
    embed_id = lbnl_tokenizer.convert_tokens_to_ids(EMBED_TOKEN)
    assert all(out.prompts[0][pos] == embed_id for _, pos in out.doc)


def test_dual_and_similar_prompts(lbnl_tokenizer) -> None:
    docs = _docs(5)
    enc = ListEncoder(lbnl_tokenizer, max_doc_tokens=30, span_drop=(0.1, 0.2))
    out = enc.encode("which study", docs, np.random.default_rng(0))
    assert len(out.prompts) == 2  # main and augmented
    rerank_id = lbnl_tokenizer.convert_tokens_to_ids(RERANK_TOKEN)
    main = out.prompts[0]
    ranks = [i for i, t in enumerate(main) if t == rerank_id]
    assert len(ranks) == 2 and all(q == (0, ranks[-1]) for q in out.query) and all(e == (0, ranks[0]) for e in out.early)
    assert ranks[0] < min(pos for _, pos in out.doc)  # the early token sees no document
    head = lbnl_tokenizer.decode(main[: ranks[0] + 1])
    assert head.endswith("relevance to query: which study" + RERANK_TOKEN)
    assert all(p == 1 for p, _ in out.augmented)
    # augmented copies are shorter and in another order
    assert len(out.prompts[1]) < len(main)
    main_order = sorted(range(5), key=lambda i: out.doc[i][1])
    aug_order = sorted(range(5), key=lambda i: out.augmented[i][1])
    assert main_order != aug_order


def test_reverse_adds_the_main_documents_in_reverse_order(lbnl_tokenizer) -> None:
    docs = _docs(5)
    plain = ListEncoder(lbnl_tokenizer, max_doc_tokens=30).encode("which study", docs, np.random.default_rng(0))
    enc = ListEncoder(lbnl_tokenizer, max_doc_tokens=30, reverse=True)
    out = enc.encode("which study", docs, np.random.default_rng(0))
    # the same main and augmented prompts (reversing draws nothing), then the reversed one
    assert out.prompts[:2] == plain.prompts and len(out.prompts) == 3
    assert all(p == 2 for p, _ in out.reread_doc) and all(q[0] == 2 for q in out.reread_query)
    main_order = sorted(range(5), key=lambda i: out.doc[i][1])
    assert sorted(range(5), key=lambda i: out.reread_doc[i][1]) == main_order[::-1]
    rerank_id = lbnl_tokenizer.convert_tokens_to_ids(RERANK_TOKEN)
    assert out.prompts[2][out.reread_query[0][1]] == rerank_id and len(out.prompts[2]) == len(out.prompts[0])
    lone = enc.encode("which study", docs[:1], np.random.default_rng(0))
    assert len(lone.prompts) == 2 and lone.reread_doc == lone.doc and lone.reread_query == lone.query
    with pytest.raises(ValueError, match="listwise"):
        ListEncoder(lbnl_tokenizer, mode="pointwise", reverse=True)


def test_positive_position_is_shuffled(lbnl_tokenizer) -> None:
    docs = _docs(6, words=5)
    enc = ListEncoder(lbnl_tokenizer, dual=False, similar=False)
    slots = set()
    for seed in range(12):
        out = enc.encode("q", docs, np.random.default_rng(seed))
        slots.add(sorted(range(6), key=lambda i: out.doc[i][1]).index(0))
    assert len(slots) >= 4


def test_pointwise_one_prompt_per_document(lbnl_tokenizer) -> None:
    docs = _docs(3, words=5)
    enc = ListEncoder(lbnl_tokenizer, mode="pointwise", dual=True, similar=True)
    out = enc.encode("q", docs, np.random.default_rng(0))
    assert len(out.prompts) == 6
    for i in range(3):
        prompt, _ = out.doc[i]
        assert out.query[i][0] == prompt == out.early[i][0] and prompt < 3 <= out.augmented[i][0]
        text = lbnl_tokenizer.decode(out.prompts[prompt])
        assert "I will provide you with 1 passages" in text and docs[i][1] in text


def test_sampler_is_a_pure_function_of_position(beir_dir: Path, lbnl_tokenizer) -> None:
    data = build_train_data(data_config(beir_dir), seed=0)
    make = lambda: ListSampler(data, ListEncoder(lbnl_tokenizer, max_doc_tokens=32), negatives=3, seed=5)
    a, b = make(), make()
    for g in (7, 0, 3, 25):
        assert a.encode(g).prompts == b.encode(g).prompts
    n = len(data.groups)
    first_epoch = [a.group(g) for g in range(n)]
    assert sorted(first_epoch, key=id) == sorted(data.groups, key=id)  # every group once per epoch
    assert [a.group(g) for g in range(n, 2 * n)] != first_epoch  # a new order next epoch


def test_collate_indexes_the_right_tokens(beir_dir: Path, lbnl_tokenizer) -> None:
    data = build_train_data(data_config(beir_dir), seed=0)
    enc = ListEncoder(lbnl_tokenizer, max_doc_tokens=24)
    sampler = ListSampler(data, enc, negatives=3, seed=0)
    lists = sampler.lists(0, 3)
    batch = collate(lists, pad_id=lbnl_tokenizer.pad_token_id)
    flat = batch.input_ids.reshape(-1)
    embed_id, rerank_id = enc.embed_id, enc.rerank_id
    assert bool((flat[batch.doc[batch.mask]] == embed_id).all())
    assert bool((flat[batch.augmented[batch.mask]] == embed_id).all())
    assert bool((flat[batch.query[batch.mask]] == rerank_id).all())
    assert bool((flat[batch.early[batch.mask]] == rerank_id).all())
    assert batch.input_ids.shape[0] == sum(len(x.prompts) for x in lists)
    assert batch.docs == int(batch.mask.sum()) and batch.tokens < batch.input_ids.numel() + 1
    assert isinstance(batch.input_ids, torch.Tensor)
    assert batch.reread_doc is None and batch.reread_query is None


def test_collate_indexes_the_reversed_reading(beir_dir: Path, lbnl_tokenizer) -> None:
    data = build_train_data(data_config(beir_dir), seed=0)
    enc = ListEncoder(lbnl_tokenizer, max_doc_tokens=24, similar=False, reverse=True)
    lists = ListSampler(data, enc, negatives=3, seed=0).lists(0, 3)
    batch = collate(lists, pad_id=lbnl_tokenizer.pad_token_id)
    flat = batch.input_ids.reshape(-1)
    assert bool((flat[batch.reread_doc[batch.mask]] == enc.embed_id).all())
    assert bool((flat[batch.reread_query[batch.mask]] == enc.rerank_id).all())
    width = batch.input_ids.shape[1]
    # the reversed reading sits in other prompts than the main one, and reads the same documents
    assert bool((batch.reread_doc[batch.mask] // width != batch.doc[batch.mask] // width).all())


def test_list_size_augmentation_draws_every_size(beir_dir: Path, lbnl_tokenizer) -> None:
    data = build_train_data(data_config(beir_dir), seed=0)
    enc = ListEncoder(lbnl_tokenizer, max_doc_tokens=16, dual=False, similar=False)
    sampler = ListSampler(data, enc, negatives=3, seed=0, negatives_min=0, size_block=2)
    sizes = [sampler.encode(g).n_docs for g in range(60)]
    assert set(sizes) == {1, 2, 3, 4}
    assert all(sizes[i] == sizes[i + 1] for i in range(0, 60, 2))      # one size per micro-batch
    again = ListSampler(data, enc, negatives=3, seed=0, negatives_min=0, size_block=2)
    assert [again.encode(g).n_docs for g in range(60)] == sizes
    fixed = ListSampler(data, enc, negatives=3, seed=0)
    assert {fixed.encode(g).n_docs for g in range(10)} == {4}
    batch = collate(sampler.lists(0, 6), pad_id=0)  # noqa: F841
    assert batch.mask.sum(dim=1).tolist() == sizes[:6]


def test_negatives_min_is_validated() -> None:

    with pytest.raises(InvalidInputError):
        load_config(None, ["model.base=x", "data.path=x", "run.output_dir=x", "data.negatives=3",
                           "data.negatives_min=4"])


def test_lone_split_micro_batches(beir_dir: Path, lbnl_tokenizer) -> None:
    data = build_train_data(data_config(beir_dir), seed=0)
    enc = ListEncoder(lbnl_tokenizer, max_doc_tokens=16, dual=False, similar=False)
    sampler = ListSampler(data, enc, negatives=3, seed=0, size_block=4, lone_split=0.5)
    splits = [sampler.is_lone_split(s) for s in range(0, 160, 4)]
    assert 0 < sum(splits) < len(splits)                                  # some micro-batches, not all
    start = 4 * splits.index(True)
    lists = sampler.lists(start, 4)
    assert [x.n_docs for x in lists] == [1, 1, 1, 1]
    assert [x.positive for x in lists] == [True, False, False, False]
    group = sampler.group(start)
    texts = [lbnl_tokenizer.decode(x.prompts[0]) for x in lists]
    assert all(group.query in text for text in texts)                    # one query throughout
    assert data.docs[group.positive][:20] in texts[0]
    assert all(data.docs[group.positive][:20] not in text for text in texts[1:])
    batch = collate(lists, pad_id=0)
    assert batch.positive.tolist() == [True, False, False, False]
    assert [x.prompts for x in sampler.lists(start, 4)] == [x.prompts for x in lists]  # deterministic
    normal = sampler.lists(4 * splits.index(False), 4)
    assert all(x.positive and x.n_docs == 4 for x in normal)
    assert not ListSampler(data, enc, negatives=3, seed=0, size_block=4).is_lone_split(start)


def test_lone_split_is_validated() -> None:

    base = ["model.base=x", "data.path=x", "run.output_dir=x"]
    with pytest.raises(InvalidInputError, match="lone_split"):
        load_config(None, [*base, "data.lone_split=1.5"])
    with pytest.raises(InvalidInputError, match="lists_per_batch"):
        load_config(None, [*base, "data.lone_split=0.3", "optim.lists_per_batch=1"])
    config = load_config(None, [*base, "data.lone_split=0.3", "loss.calibrate=0.5"])
    assert config.data.lone_split == 0.3 and config.loss.calibrate == 0.5


def test_order_loss_needs_listwise_prompts() -> None:
    base = ["model.base=x", "data.path=x", "run.output_dir=x", "loss.order=0.5"]
    assert load_config(None, base).loss.order == 0.5
    with pytest.raises(InvalidInputError, match="loss.order"):
        load_config(None, [*base, "mode=pointwise"])
    with pytest.raises(InvalidInputError, match=">= 0"):
        load_config(None, [*base[:3], "loss.order=-1"])


def test_batches_carry_the_texts_the_prompts_hold(lbnl_tokenizer) -> None:
    """A teacher reads the query and the documents as truncated for the prompts, in canonical order."""
    enc = ListEncoder(lbnl_tokenizer, max_doc_tokens=3, dual=False, similar=False)
    long = "one two three four five six seven"
    item = enc.encode("a query", [("p", long), ("n", "short")], np.random.default_rng(0))
    assert item.query_text == "a query" and item.texts is not None
    assert item.texts[1] == "short" and long.startswith(item.texts[0]) and item.texts[0] != long
    assert all(t in lbnl_tokenizer.decode(item.prompts[0]) for t in item.texts)
    batch = collate([item, item], pad_id=0)
    assert batch.queries == ["a query", "a query"] and batch.texts == [item.texts, item.texts]
