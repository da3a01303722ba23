"""``lbnl eval`` end to end in a real process: a tiny random model (scores meaningless, plumbing real)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lbnl.eval import LBNLScorer, first_stage_hits, load_beir, per_query_metrics
from lbnl.eval.scorers import order_by_scores
from test_eval import make_beir


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lbnl", "eval", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_beir(tmp_path_factory.mktemp("eval_cli") / "tinybeir")


def test_eval_cli_with_a_tiny_model(tiny_checkpoint: Path, tiny_reranker, data_dir: Path, tmp_path: Path) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    done = run("--model", str(tiny_checkpoint), "--device", "cpu", "--data", str(data_dir), "--split", "test",
               "--top-k", "5", "--max-doc-length", "24", "--output", str(out), "--cache-dir", str(cache), "--quiet")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("tinybeir test: 5 of 5 queries, BM25 top-5, max 24 tokens per document")
    assert lines[1].split()[:2] == ["system", "nDCG@10"]
    assert [line.split()[0] for line in lines[2:6]] == ["bm25", "lbnl:ckpt", "rrf(k=60)", "linear(w=0.5)"]
    assert {p.name for p in out.iterdir()} >= {"results.json", "run.first_stage.trec", "run.reranked.trec",
                                                "run.rrf.trec", "run.linear.trec", "ndcg_delta.png"}

    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["top_k"] == 5 and saved["config"]["max_doc_length"] == 24
    assert saved["config"]["scorer"]["model"] == "ckpt" and saved["config"]["scorer"]["source"] == str(tiny_checkpoint)
    dataset = load_beir(data_dir, "test")
    hits = first_stage_hits(dataset, k=5, cache_dir=cache, progress=False)
    scorer = LBNLScorer(tiny_reranker, max_doc_length=24)
    scores = scorer.score([dataset.queries[q] for q in dataset.query_ids],
                          [[dataset.document_text(d) for d, _ in hits[q]] for q in dataset.query_ids])
    rankings = {q: [d for d, _ in order_by_scores([d for d, _ in hits[q]], s)]
                for q, s in zip(dataset.query_ids, scores)}
    expected = per_query_metrics(dataset.qrels, rankings)
    for qid, values in expected.items():
        assert saved["per_query"]["lbnl:ckpt"][qid] == pytest.approx(values)
    trec = [line.split() for line in (out / "run.reranked.trec").read_text().splitlines()]
    assert {q: [row[2] for row in trec if row[0] == q] for q in rankings if rankings[q]} == {
        q: r for q, r in rankings.items() if r}
    assert rankings != {q: [d for d, _ in hits[q]] for q in dataset.query_ids}

    again = run("--model", str(tiny_checkpoint), "--device", "cpu", "--data", str(data_dir), "--top-k", "5",
                "--max-doc-length", "24", "--output", str(out), "--cache-dir", str(cache), "--quiet")
    assert again.returncode == 0 and again.stdout.splitlines()[:6] == lines[:6]
    (store,) = out.glob("scores-*.jsonl")
    assert len(store.read_text().splitlines()) == 1 + 4, "a header and q1-q4 (q5 has no BM25 hit), none twice"


def test_eval_cli_held_out_ids_and_candidate_fusion_rows(tiny_checkpoint: Path, tiny_reranker, data_dir: Path,
                                                         tmp_path: Path) -> None:
    from lbnl.checkpoints import Fusion
    from lbnl.fusion import fuse_scores

    ids = tmp_path / "validation_queries.txt"
    ids.write_text("q3\nq1\n")
    out = tmp_path / "out"
    done = run("--model", str(tiny_checkpoint), "--device", "cpu", "--data", str(data_dir), "--top-k", "5",
               "--max-doc-length", "24", "--query-ids", str(ids), "--fusion", "none", "--candidate-fusion", "0.3,0",
               "--output", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet")
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()[2:5]] == [
        "bm25", "lbnl:ckpt", "candidate-bm25(w=0.3)"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["queries_evaluated"] == 2 and set(saved["per_query"]["bm25"]) == {"q1", "q3"}
    assert (out / "run.candidate-bm25-w0.3.trec").is_file() and (out / "run.candidate-bm25-w0.trec").is_file()
    dataset = load_beir(data_dir, "test")
    hits = first_stage_hits(dataset, k=5, cache_dir=tmp_path / "cache", progress=False)
    texts = [dataset.document_text(d) for d, _ in hits["q1"]]
    (model,) = LBNLScorer(tiny_reranker, max_doc_length=24).score([dataset.queries["q1"]], [texts])
    fused = fuse_scores(Fusion(0.3), dataset.queries["q1"], texts, model)
    trec = [line.split() for line in (out / "run.candidate-bm25-w0.3.trec").read_text().splitlines()]
    assert [r[2] for r in trec if r[0] == "q1"] == [d for d, _ in order_by_scores([d for d, _ in hits["q1"]], fused)]


def test_eval_cli_first_stage_only(data_dir: Path, tmp_path: Path) -> None:
    done = run("--model", "none", "--data", str(data_dir), "--top-k", "3", "--max-queries", "2",
               "--output", str(tmp_path / "bm25"), "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr
    rows = [line.split()[0] for line in done.stdout.splitlines()[2:] if not line.startswith("wrote")]
    assert rows == ["bm25"]
    saved = json.loads((tmp_path / "bm25" / "results.json").read_text())
    assert saved["config"]["queries_evaluated"] == 2 and saved["config"]["max_queries"] == 2
    assert not (tmp_path / "bm25" / "ndcg_delta.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--data", "/nonexistent/beir"], "no dataset directory"),
        (["--data", "DATA", "--split", "dev"], "no qrels for split 'dev'"),
        (["--data", "DATA", "--top-k", "0"], "top-k must be a positive integer"),
        (["--data", "DATA", "--fusion", "max"], "unknown fusion 'max'"),
        (["--data", "DATA", "--max-doc-length", "0"], "--max-doc-length must be a positive integer"),
        (["--data", "DATA", "--query-ids", "/nonexistent/ids.txt"], "--query-ids: no file"),
        (["--data", "DATA", "--query-ids", "IDS"], "1 query ids are not judged queries of the test split"),
        (["--data", "DATA", "--candidate-fusion", "0.5,x"], "--candidate-fusion takes comma-separated weights"),
        (["--data", "DATA", "--candidate-fusion", "2"], "candidate-fusion weights must be in [0, 1]"),
    ],
)
def test_eval_cli_errors_are_messages(data_dir: Path, tmp_path: Path, args: list[str], message: str) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("q1\nno-such-query\n")
    args = [str(data_dir) if a == "DATA" else str(ids) if a == "IDS" else a for a in args]
    done = run("--model", "none", *args, "--output", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"))
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
