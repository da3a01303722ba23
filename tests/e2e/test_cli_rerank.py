"""``lbnl rerank`` end to end, as a user runs it: a real process, real files, stdin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lbnl.cli.common import read_documents


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lbnl", *args], input=stdin, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def docs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    rows = [{"text": "green tea catechins"}, {"text": "basketball league"}, {"text": "coffee prices rise"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_rerank_table_and_json(tiny_checkpoint: Path, tiny_reranker, docs_file: Path) -> None:
    table = run("rerank", "--model", str(tiny_checkpoint), "--query", "tea", "--documents", str(docs_file))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "index", "document"] and len(lines) == 4

    out = run("rerank", "--model", str(tiny_checkpoint), "-q", "tea", "-d", str(docs_file), "--json", "--top-n", "2")
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    expected = tiny_reranker.rerank("tea", read_documents(str(docs_file)), top_n=2)
    assert [r["index"] for r in rows] == [r.index for r in expected]
    assert [r["relevance_score"] for r in rows] == pytest.approx([r.relevance_score for r in expected], abs=1e-5)


def test_rerank_preset_flag(tiny_checkpoint: Path, docs_file: Path) -> None:
    """``--preset`` reaches ``Reranker.from_pretrained``: fast reads up to 16 documents per prompt."""
    from lbnl import Reranker

    docs = [f"document {i} about tea and {'coffee ' * (i % 5)}" for i in range(20)]
    path = docs_file.parent / "twenty.txt"
    path.write_text("\n".join(docs) + "\n")
    out = run("rerank", "--model", str(tiny_checkpoint), "-q", "tea", "-d", str(path), "--json", "--preset", "fast",
              "--dtype", "float32")
    assert out.returncode == 0, out.stderr
    got = {r["index"]: r["relevance_score"] for r in map(json.loads, out.stdout.splitlines())}
    want = Reranker.from_pretrained(tiny_checkpoint, device="cpu", preset="fast", dtype="float32").rerank("tea", docs)
    assert [got[r.index] for r in want] == pytest.approx([r.relevance_score for r in want], abs=1e-5)
    spec = Reranker.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32").rerank("tea", docs)
    assert max(abs(got[r.index] - r.relevance_score) for r in spec) > 1e-4  # 16 per prompt changes the scores
    bad = run("rerank", "--model", str(tiny_checkpoint), "-q", "tea", "-d", str(path), "--preset", "turbo")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr and "Traceback" not in bad.stderr


def test_rerank_plain_text_from_stdin(tiny_checkpoint: Path) -> None:
    out = run("rerank", "--model", str(tiny_checkpoint), "-q", "tea", "-d", "-", "--json",
              stdin="first line\n\nsecond line\n")
    assert out.returncode == 0, out.stderr
    assert sorted(json.loads(line)["document"] for line in out.stdout.splitlines()) == ["first line", "second line"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["-q", "", "-d", "DOCS"], "query is empty"),
        (["-q", "tea", "-d", "DOCS", "--top-n", "0"], "top_n must be a positive integer"),
        (["-q", "tea", "-d", "/nonexistent/docs.txt"], "no documents file"),
    ],
)
def test_rerank_errors_are_messages_not_tracebacks(tiny_checkpoint: Path, docs_file: Path, args, message) -> None:
    args = [str(docs_file) if a == "DOCS" else a for a in args]
    out = run("rerank", "--model", str(tiny_checkpoint), *args)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


def test_bad_model_path_is_a_message(tmp_path: Path, docs_file: Path) -> None:
    out = run("rerank", "--model", str(tmp_path / "missing"), "-q", "tea", "-d", str(docs_file))
    assert out.returncode == 2 and "no checkpoint directory" in out.stderr and "Traceback" not in out.stderr


def test_help_lists_rerank() -> None:
    out = run("--help")
    assert out.returncode == 0 and "rerank" in out.stdout
