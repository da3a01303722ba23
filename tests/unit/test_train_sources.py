"""Training groups: BM25-mined negatives (never a judged positive), held-out validation, the three sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lbnl.errors import InvalidInputError
from lbnl.train.config import DataConfig, load_config
from lbnl.train.lists import ListEncoder, ListSampler
from lbnl.train.sources import build_train_data, default_searcher
from train_toy import data_config


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


def test_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no dataset directory at .*nope"):
        build_train_data(DataConfig(path=str(tmp_path / "nope")), seed=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInputError, match="qrels|corpus.jsonl"):
        build_train_data(DataConfig(path=str(tmp_path / "empty")), seed=0)


def test_a_split_without_positives_in_the_corpus_is_a_clear_error(tmp_path: Path, fixtures_dir: Path) -> None:
    import shutil

    data = Path(shutil.copytree(fixtures_dir / "beir-mini", tmp_path / "mini"))
    (data / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nq1\tno-such-doc\t1\n")
    with pytest.raises(InvalidInputError, match="mini: no query of split 'train' has a positive in the corpus"):
        build_train_data(DataConfig(path=str(data)), seed=0)
