"""Evaluation harness: BEIR loading, BM25 first stage and its cache, metrics, tests, fusion, scorers, resume."""

from __future__ import annotations

import gzip
import json
import math
from itertools import product
from pathlib import Path

import pytest

from lbnl.errors import InvalidInputError
from lbnl.eval import (
    BM25Index,
    BM25Params,
    EvalConfig,
    FirstStageScorer,
    LBNLScorer,
    Scorer,
    evaluate_rerank,
    first_stage_hits,
    fuse,
    load_beir,
    paired_tests,
    per_query_metrics,
    run_evaluation,
    sample_queries,
)
from lbnl.ir import bm25 as first_stage_module

CORPUS = [
    ("d1", "Green tea", "Green tea catechins reduce inflammation in adults."),
    ("d2", "Coffee", "Coffee prices rose sharply this year."),
    ("d3", "Tea and the brain", "Drinking green tea improves brain function and memory."),
    ("d4", "Basketball", "The basketball league expanded to new cities."),
    ("d5", "Running", "Runners who run daily improve their heart health."),
    ("d6", "Heart disease", "Catechins lower the risk of heart disease."),
    ("d7", "Quantum", "Quantum lattice models describe electrons."),
    ("d8", "Lattice", "A lattice of atoms forms a crystal."),
    ("d9", "Volcano", "Volcanic eruptions release ash and gas."),
    ("d10", "Ocean", "Ocean currents carry heat around the planet."),
    ("q3", "", "Electrons hop on a quantum lattice."),
    ("d11", "Tea health", "Health benefits of tea for adults."),
    ("d12", "", "Green tea, black tea and white tea."),
]
QUERIES = {
    "q1": "health benefits of green tea",
    "q2": "heart health from running",
    "q3": "quantum lattice electrons",
    "q4": "volcanic ash",
    "q5": "the and of",
    "q6": "coffee prices",
}
TEST_QRELS = [("q1", "d1", 2), ("q1", "d3", 1), ("q2", "d5", 1), ("q2", "d6", 1), ("q3", "d7", 1),
              ("q4", "d9", 1), ("q5", "d10", 1), ("q7", "d2", 1)]


def make_beir(root: Path) -> Path:
    """A tiny BEIR-layout dataset: gzipped corpus, plain queries, plain test qrels, gzipped train qrels."""
    (root / "qrels").mkdir(parents=True)
    with gzip.open(root / "corpus.jsonl.gz", "wt", encoding="utf-8") as f:
        for doc_id, title, text in CORPUS:
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text, "metadata": {}}) + "\n")
    (root / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items()))
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in TEST_QRELS))
    with gzip.open(root / "qrels" / "train.tsv.gz", "wt") as f:
        f.write("query-id\tcorpus-id\tscore\nq6\td2\t1\n")
    return root


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    return make_beir(tmp_path / "tinybeir")


@pytest.fixture()
def dataset(data_dir: Path):
    return load_beir(data_dir, "test")


class OverlapScorer:
    """A toy scorer: shared lowercase words, minus a length penalty. Counts its calls."""

    name = "overlap"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def score(self, queries: list[str], candidates: list[list[str]]) -> list[list[float]]:
        self.calls.append(list(queries))
        out = []
        for q, docs in zip(queries, candidates):
            words = set(q.lower().split())
            out.append([len(words & set(d.lower().replace(".", "").split())) - len(d) / 1000 for d in docs])
        return out


def test_load_beir_plain_and_gzip(dataset, data_dir: Path) -> None:
    assert dataset.name == "tinybeir" and dataset.split == "test"
    assert list(dataset.corpus) == [d for d, _, _ in CORPUS]
    assert dataset.document_text("d1") == "Green tea Green tea catechins reduce inflammation in adults."
    assert dataset.document_text("q3") == "Electrons hop on a quantum lattice."
    assert dataset.qrels["q1"] == {"d1": 2, "d3": 1}
    assert dataset.query_ids == ["q1", "q2", "q3", "q4", "q5"]
    assert load_beir(data_dir, "train").qrels == {"q6": {"d2": 1}}


def test_load_beir_errors(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no dataset directory"):
        load_beir(tmp_path / "missing")
    with pytest.raises(InvalidInputError, match=r"no qrels for split 'dev' \(available: test, train\)"):
        load_beir(data_dir, "dev")
    (data_dir / "queries.jsonl").write_text('{"_id": "q1", "text": "ok"}\nnot json\n')
    with pytest.raises(InvalidInputError, match="queries.jsonl, line 2: not valid JSON"):
        load_beir(data_dir)


def test_bm25_lucene_scores_match_the_formula() -> None:
    texts = ["apple banana", "apple apple cherry", "banana cherry cherry date", "elder"]
    k1, b = 0.9, 0.4
    index = BM25Index.build(["a", "b", "c", "d"], texts, BM25Params(k1=k1, b=b))
    lengths = [2, 3, 4, 1]
    avgdl = sum(lengths) / 4
    idf = math.log(1 + (4 - 2 + 0.5) / (2 + 0.5))

    def score(tf: int, dl: int) -> float:
        return idf * tf / (tf + k1 * (1 - b + b * dl / avgdl))

    hits = index.search(["apples"], k=10)[0]
    assert [d for d, _ in hits] == ["b", "a"]
    assert [s for _, s in hits] == pytest.approx([score(2, 3), score(1, 2)], rel=1e-5)
    assert index.search(["the of and", "zebra"], k=3) == [[], []]


def test_bm25_drops_self_hits_and_breaks_ties_by_corpus_order(dataset) -> None:
    index = BM25Index.build(list(dataset.corpus), [dataset.document_text(d) for d in dataset.corpus])
    with_self = index.search([QUERIES["q3"]], k=2)[0]
    assert {d for d, _ in with_self} == {"d7", "q3"}
    hits = first_stage_hits(dataset, k=2, cache_dir=dataset.root / "cache", progress=False)
    assert [d for d, _ in hits["q3"]][0] == "d7" and "q3" not in [d for d, _ in hits["q3"]]
    assert len(hits["q3"]) == 2
    assert hits["q5"] == []
    twins = BM25Index.build(["x", "y", "z"], ["solar wind", "solar wind", "moon"])
    assert [d for d, _ in twins.search(["solar"], k=2)[0]] == ["x", "y"]


def test_first_stage_cache_is_reused_and_keyed_by_parameters(dataset, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    first = first_stage_hits(dataset, k=5, cache_dir=cache, progress=False)
    files = sorted(p.name for p in cache.iterdir())
    assert any(f.startswith("index-tinybeir-") for f in files)
    assert any(f.startswith("hits-tinybeir-test-") for f in files)

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(first_stage_module.BM25Index, "for_dataset", no_rebuild)
    assert first_stage_hits(dataset, k=5, cache_dir=cache, progress=False) == first
    assert first_stage_hits(dataset, ["q2"], k=5, cache_dir=cache, progress=False) == {"q2": first["q2"]}
    monkeypatch.undo()

    monkeypatch.setattr(first_stage_module.BM25Index, "build", no_rebuild)
    reloaded = BM25Index.for_dataset(dataset, cache_dir=cache, progress=False)
    assert reloaded.search([QUERIES["q1"]], k=5, exclude=["q1"])[0] == first["q1"]
    monkeypatch.undo()

    other = first_stage_hits(dataset, k=5, params=BM25Params(k1=1.5, b=0.75), cache_dir=cache, progress=False)
    assert len(list(cache.glob("hits-*"))) == 2 and len(list(cache.glob("index-*"))) == 2
    assert other["q1"] != first["q1"]


def test_metrics_match_hand_computed_values() -> None:
    qrels = {"a": {"r1": 2, "r2": 1}, "b": {"r1": 1}, "c": {"r1": 1}, "d": {"r1": 1, "r2": 1}}
    rankings = {
        "a": ["x", "r1", "y", "r2"],
        "b": [f"n{i}" for i in range(10)] + ["r1"],
        "c": [],
        "d": ["r2", "r1"],
    }
    values = per_query_metrics(qrels, rankings, ["a", "b", "c", "d"])
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert values["a"]["ndcg@10"] == pytest.approx(dcg / ideal)
    assert values["a"]["recall@100"] == pytest.approx(1.0)
    assert values["a"]["mrr@10"] == pytest.approx(1 / 2)
    assert values["a"]["map@100"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert values["b"]["ndcg@10"] == 0 and values["b"]["mrr@10"] == 0
    assert values["b"]["recall@100"] == 1 and values["b"]["map@100"] == pytest.approx(1 / 11)
    assert values["c"] == {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0, "map@100": 0.0}
    assert values["d"]["ndcg@10"] == pytest.approx(1.0)
    tied_order = per_query_metrics({"e": {"r": 1}}, {"e": ["a", "r"]})
    assert tied_order["e"]["mrr@10"] == pytest.approx(1 / 2)


def test_paired_tests() -> None:
    from scipy import stats

    base = [0.1, 0.4, 0.35, 0.8, 0.5, 0.2]
    system = [0.3, 0.5, 0.30, 0.9, 0.7, 0.45]
    result = paired_tests(base, system, permutations=20000, seed=1)
    diffs = [s - b for b, s in zip(base, system)]
    observed = abs(sum(diffs) / len(diffs))
    exact = sum(abs(sum(s * d for s, d in zip(signs, diffs)) / len(diffs)) >= observed - 1e-12
                for signs in product((-1, 1), repeat=len(diffs))) / 2 ** len(diffs)
    assert result["randomization_p"] == pytest.approx(exact, abs=0.01)
    assert result["t_test_p"] == pytest.approx(stats.ttest_rel(system, base).pvalue)
    assert result["mean_delta"] == pytest.approx(sum(diffs) / len(diffs))
    assert paired_tests(base, base)["t_test_p"] == 1.0 and paired_tests(base, base)["randomization_p"] == 1.0
    assert paired_tests(base, system, seed=3) == paired_tests(base, system, seed=3)


def test_fusion() -> None:
    first, reranked = [9.0, 5.0, 1.0], [0.1, 0.9, 0.5]
    assert fuse("rrf", first, reranked, rrf_k=60) == pytest.approx([1 / 61 + 1 / 63, 1 / 62 + 1 / 61, 1 / 63 + 1 / 62])
    assert fuse("linear", first, reranked, weight=0.25) == pytest.approx(
        [0.25 * 0 + 0.75 * 1, 0.25 * 1 + 0.75 * 0.5, 0.25 * 0.5 + 0.75 * 0])
    assert fuse("linear", [1.0, 1.0], [2.0, 2.0]) == [0.0, 0.0]
    with pytest.raises(InvalidInputError, match="unknown fusion"):
        fuse("max", first, reranked)


def test_sample_queries_is_fixed_and_seeded() -> None:
    ids = [f"q{i}" for i in range(50)]
    sample = sample_queries(ids, 10, seed=0)
    assert sample == sample_queries(ids, 10, seed=0) and len(sample) == 10
    assert sample == [q for q in ids if q in sample]
    assert sample != sample_queries(ids, 10, seed=1)
    assert sample_queries(ids, None) == ids and sample_queries(ids, 500) == ids


def test_lbnl_scorer_aligns_scores_with_candidates(tiny_reranker) -> None:
    query, docs = "green tea", ["coffee prices", "green tea catechins", "basketball league", "tea and heart"]
    scorer = LBNLScorer(tiny_reranker, max_doc_length=16, block_size=2)
    assert isinstance(scorer, Scorer) and tiny_reranker.block_size == 125
    (scores,) = scorer.score([query], [docs])
    blocked = type(tiny_reranker)(tiny_reranker.model, tiny_reranker.tokenizer, block_size=2)
    expected = {r.index: r.relevance_score for r in blocked.rerank(query, docs, max_doc_length=16)}
    assert scores == pytest.approx([expected[i] for i in range(len(docs))], abs=1e-5)
    pointwise = LBNLScorer(tiny_reranker, max_doc_length=16, pointwise=True)
    two = pointwise.score([query, "coffee"], [docs, docs[:2]])
    alone = [[tiny_reranker.rerank(q, [d], max_doc_length=16)[0].relevance_score for d in ds]
             for q, ds in ((query, docs), ("coffee", docs[:2]))]
    assert two[0] == pytest.approx(alone[0], abs=1e-5) and two[1] == pytest.approx(alone[1], abs=1e-5)
    assert pointwise.name.endswith("+pointwise") and pointwise.config["pointwise"] is True


def test_first_stage_scorer_through_the_harness_reproduces_the_first_stage(dataset, tmp_path: Path) -> None:
    hits = first_stage_hits(dataset, k=5, cache_dir=tmp_path / "cache", progress=False)
    metrics = evaluate_rerank(FirstStageScorer(), dataset, dataset.query_ids, hits, k=5)
    rankings = {q: [d for d, _ in hits[q]] for q in dataset.query_ids}
    baseline = per_query_metrics(dataset.qrels, rankings)
    assert metrics == pytest.approx({m: sum(v[m] for v in baseline.values()) / len(baseline)
                                     for m in metrics})
    overlap = evaluate_rerank(OverlapScorer(), dataset, dataset.query_ids, hits, k=5)
    assert overlap["recall@100"] == pytest.approx(metrics["recall@100"])


def test_interrupted_run_resumes_where_it_stopped(dataset, tmp_path: Path) -> None:
    config = EvalConfig(top_k=5, batch_queries=1, permutations=500)
    cache, out = tmp_path / "cache", tmp_path / "run"
    reference = run_evaluation(dataset, OverlapScorer(), config, tmp_path / "reference", cache, progress=False)

    def stop_after_two(done: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    first = OverlapScorer()
    with pytest.raises(KeyboardInterrupt):
        run_evaluation(dataset, first, config, out, cache, progress=False, on_batch=stop_after_two)
    assert [q for call in first.calls for q in call] == [QUERIES["q1"], QUERIES["q2"]]
    (store,) = out.glob("scores-*.jsonl")
    with open(store, "a") as f:
        f.write('{"qid": "q3", "doc_ids": ["d7"')

    second = OverlapScorer()
    resumed = run_evaluation(dataset, second, config, out, cache, progress=False)
    assert [q for call in second.calls for q in call] == [QUERIES["q3"], QUERIES["q4"]]
    assert resumed.runs == reference.runs and resumed.metrics == reference.metrics
    assert (out / "results.json").is_file() and (out / "run.reranked.trec").is_file()

    third = OverlapScorer()
    run_evaluation(dataset, third, config, out, cache, progress=False)
    assert third.calls == []
    changed = EvalConfig(top_k=4, batch_queries=1, permutations=500)
    fourth = OverlapScorer()
    run_evaluation(dataset, fourth, changed, out, cache, progress=False)
    assert len(fourth.calls) == 4 and len(list(out.glob("scores-*.jsonl"))) == 2


def test_run_evaluation_outputs(dataset, tmp_path: Path) -> None:
    config = EvalConfig(top_k=5, max_queries=3, seed=0, permutations=500, fusion_weight=0.3)
    result = run_evaluation(dataset, OverlapScorer(), config, tmp_path / "out", tmp_path / "cache", progress=False)
    assert result.systems == ["bm25", "overlap", "rrf(k=60)", "linear(w=0.3)"]
    assert result.query_ids == sample_queries(dataset.query_ids, 3, 0)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["config"]["max_queries"] == 3 and saved["config"]["top_k"] == 5
    assert saved["config"]["queries_evaluated"] == 3 and saved["config"]["scorer"] == {"name": "overlap"}
    assert [s["name"] for s in saved["systems"]] == result.systems
    assert set(saved["per_query"]["overlap"]) == set(result.query_ids)
    assert saved["systems"][1]["vs_first_stage"]["ndcg@10"]["queries"] == 3
    lines = (tmp_path / "out" / "run.reranked.trec").read_text().splitlines()
    first_q = result.query_ids[0]
    written = [line.split()[2] for line in lines if line.split()[0] == first_q]
    assert written == [d for d, _ in result.runs["overlap"][first_q]]
    assert lines[0].split()[1] == "Q0" and lines[0].split()[3] == "1"
    assert (tmp_path / "out" / "ndcg_delta.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InvalidInputError, match="top-k must be a positive integer"):
        run_evaluation(dataset, None, EvalConfig(top_k=0), None, tmp_path / "cache", progress=False)
