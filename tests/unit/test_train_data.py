"""Training data: BM25-mined groups, held-out validation, deterministic lists, prompts identical to inference."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lbnl.errors import InvalidInputError
from lbnl.prompt import EMBED_TOKEN, RERANK_TOKEN, build_prompt, truncate, truncate_many
from lbnl.train.config import DataConfig, load_config
from lbnl.train.data import (
    ListEncoder,
    ListSampler,
    build_train_data,
    collate,
    default_searcher,
    drop_span,
)

TOPICS = ["coral reef bleaching", "insulin resistance", "volcanic ash clouds", "honeybee colony collapse",
          "graphene transistors", "malaria vaccine trials", "glacier retreat", "antibiotic resistance genes",
          "solar flare forecasting", "sleep deprivation memory", "microplastic pollution", "quantum error correction"]
FILLER = "study results data method analysis sample effect model group level report patients".split()


def write_beir(root: Path, gz: bool = True) -> Path:
    """A small BEIR directory: 12 queries, 2 documents per topic plus unrelated ones, train and test qrels."""
    rng = random.Random(0)
    root.mkdir(parents=True)
    corpus, queries, train, test = [], [], [], []
    for t, topic in enumerate(TOPICS):
        for k in range(2):
            words = " ".join(rng.choice(FILLER) for _ in range(12))
            corpus.append({"_id": f"d{t}-{k}", "title": f"{topic} part {k}", "text": f"{topic} {words}"})
        queries.append({"_id": f"q{t}", "text": f"what is known about {topic}"})
        (test if t >= 10 else train).append((f"q{t}", f"d{t}-0", 1))
        if t % 2 == 0 and t < 10:
            train.append((f"q{t}", f"d{t}-1", 1))  # a second positive, which must never be a negative
        elif t < 10:
            train.append((f"q{t}", f"d{t}-1", 0))  # judged but not relevant: a valid negative
    for i in range(20):
        corpus.append({"_id": f"x{i}", "title": "", "text": " ".join(rng.choice(FILLER) for _ in range(15))})

    def dump(name: str, rows: list[dict]) -> None:
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)

    dump("corpus.jsonl", corpus)
    dump("queries.jsonl", queries)
    (root / "qrels").mkdir()
    for split, rows in (("train", train), ("test", test)):
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in rows]
        (root / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_beir(tmp_path_factory.mktemp("beir") / "toy")


def data_config(path: Path, **kw) -> DataConfig:
    base = dict(path=str(path), negatives=3, negative_pool=6, validation_queries=2, validation_depth=5)
    base.update(kw)
    return DataConfig(**base)


def test_beir_groups_never_use_a_judged_positive(beir_dir: Path, lbnl_tokenizer) -> None:
    data = build_train_data(data_config(beir_dir), seed=0)
    qrels_pos = {f"q{t}": {f"d{t}-0"} | ({f"d{t}-1"} if t % 2 == 0 else set()) for t in range(10)}
    assert data.groups
    for g in data.groups:
        assert g.positive in qrels_pos[g.query_id]
        assert not set(g.negatives) & qrels_pos[g.query_id]
        assert len(g.negatives) <= 6
    # every list gets exactly K negatives: BM25's pool, topped up with random documents when it is short
    sampler = ListSampler(data, ListEncoder(lbnl_tokenizer, dual=False, similar=False), negatives=3, seed=0)
    for g in range(len(data.groups)):
        group = sampler.group(g)
        negs = sampler.negatives_for(group, np.random.default_rng(g))
        assert len(set(negs)) == 3 and not set(negs) & qrels_pos[group.query_id]
        assert set(negs) <= set(group.negatives) or len(group.negatives) < 3
    # two groups for each training query with two positives
    counts = {q: sum(g.query_id == q for g in data.groups) for q in {g.query_id for g in data.groups}}
    assert all(counts[q] == len(qrels_pos[q]) for q in counts)
    # hard negatives: the judged-non-relevant sibling document of an odd topic is mined by BM25
    odd = [g for g in data.groups if int(g.query_id[1:]) % 2 == 1]
    assert any(f"d{g.query_id[1:]}-1" in g.negatives[:2] for g in odd)


def test_validation_is_held_out_from_training_and_never_the_test_split(beir_dir: Path) -> None:
    data = build_train_data(data_config(beir_dir), seed=0)
    val_ids = {v.query_id for v in data.validation}
    assert len(val_ids) == 2
    assert not val_ids & {g.query_id for g in data.groups}
    assert val_ids <= {f"q{t}" for t in range(10)}  # from the train qrels only
    for v in data.validation:
        assert 0 < len(v.candidates) <= 5 and set(v.candidates) <= set(data.docs)
    others = [{v.query_id for v in build_train_data(data_config(beir_dir), seed=s).validation} for s in (1, 2, 3)]
    assert any(o != val_ids for o in others)  # the held-out slice depends on the seed
    with pytest.raises(InvalidInputError, match="test split"):
        load_config(None, ["model.base=x", "run.output_dir=y", f"data.path={beir_dir}", "data.split=test"])


def test_build_is_deterministic(beir_dir: Path) -> None:
    a = build_train_data(data_config(beir_dir), seed=3)
    b = build_train_data(data_config(beir_dir), seed=3)
    assert a.groups == b.groups and a.validation == b.validation


def test_random_negatives_and_max_groups(beir_dir: Path, lbnl_tokenizer) -> None:
    data = build_train_data(data_config(beir_dir, negative_source="random", max_groups=4), seed=0)
    assert data.random_negatives and len(data.groups) == 4
    sampler = ListSampler(data, ListEncoder(lbnl_tokenizer, dual=False, similar=False), negatives=3, seed=0)
    for g in range(8):
        group = sampler.group(g)
        negs = sampler.negatives_for(group, np.random.default_rng(g))
        assert len(negs) == 3 and not set(negs) & (set(group.positives) | {group.positive})


def test_bm25_searcher_ranks_the_lexical_match_first(beir_dir: Path) -> None:
    data = build_train_data(data_config(beir_dir), seed=0)
    ids = list(data.docs)
    hits = default_searcher(ids, [data.docs[i] for i in ids]).search(["glacier retreat"], 3)
    assert hits[0][0][0].startswith("d6-") and hits[0][0][1] >= hits[0][1][1]


def test_self_supervised_pairs(beir_dir: Path) -> None:
    cfg = data_config(beir_dir, source="self_supervised", validation_queries=3)
    data = build_train_data(cfg, seed=0)
    assert len(data.groups) == 24 - 3  # only documents with a title and a text
    for g in data.groups:
        assert g.query.endswith(("part 0", "part 1")) and g.positive not in g.negatives
        assert not data.docs[g.positive].startswith(g.query)  # the title is not inside its positive
    for v in data.validation:
        assert list(v.qrels) == [v.query_id.removeprefix("title:")] and v.query_id.removeprefix("title:") in v.candidates


def test_jsonl_groups_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "groups.jsonl"
    rows = [{"query": f"q {i}", "positive": f"pos {i}", "negatives": [f"neg {i} a", f"neg {i} b", f"pos {i}"]}
            for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = build_train_data(DataConfig(source="jsonl", path=str(path), negatives=2, validation_queries=2), seed=0)
    assert len(data.groups) == 4 and len(data.validation) == 2
    for g in data.groups:
        assert data.docs[g.positive].startswith("pos") and len(g.negatives) == 2  # the positive is not its negative
    for v in data.validation:
        assert sum(v.qrels.values()) == 1 and len(v.candidates) == 3
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"query": "x", "negatives": []}) + "\n")
    with pytest.raises(InvalidInputError, match="line 2"):
        build_train_data(DataConfig(source="jsonl", path=str(path), validation_queries=0), seed=0)
    path.write_text("{not json\n")
    with pytest.raises(InvalidInputError, match="line 1"):
        build_train_data(DataConfig(source="jsonl", path=str(path), validation_queries=0), seed=0)


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


def test_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no dataset directory at .*nope"):
        build_train_data(DataConfig(path=str(tmp_path / "nope")), seed=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="qrels|corpus.jsonl"):
        build_train_data(DataConfig(path=str(tmp_path / "empty")), seed=0)



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
    from lbnl.train.config import load_config

    with pytest.raises(InvalidInputError):
        load_config(None, ["model.base=x", "data.path=x", "run.output_dir=x", "data.negatives=3",
                           "data.negatives_min=4"])


def test_a_split_without_positives_in_the_corpus_is_a_clear_error(tmp_path: Path, fixtures_dir: Path) -> None:
    import shutil

    data = Path(shutil.copytree(fixtures_dir / "beir-mini", tmp_path / "mini"))
    (data / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tno-such-doc\t1\n")
    with pytest.raises(InvalidInputError, match="mini: no query of split 'train' has a positive in the corpus"):
        build_train_data(DataConfig(path=str(data)), seed=0)


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
    from lbnl.train.config import load_config

    base = ["model.base=x", "data.path=x", "run.output_dir=x"]
    with pytest.raises(InvalidInputError, match="lone_split"):
        load_config(None, [*base, "data.lone_split=1.5"])
    with pytest.raises(InvalidInputError, match="lists_per_batch"):
        load_config(None, [*base, "data.lone_split=0.3", "optim.lists_per_batch=1"])
    config = load_config(None, [*base, "data.lone_split=0.3", "loss.calibrate=0.5"])
    assert config.data.lone_split == 0.3 and config.loss.calibrate == 0.5
