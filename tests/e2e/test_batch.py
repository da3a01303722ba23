"""``lbnl rerank-batch`` with the local engine: real files, the tiny real-tokenizer model, a real kill -9."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lbnl.batch.parts import OUTPUT_SCHEMA, PartStore, parts_dir_for
from lbnl.batch.source import ChunkReader, scan_input
from lbnl.cli import main

WORDS = ("green tea catechins reduce inflammation coffee prices rise basketball league brain function metabolism "
         "heart disease weight control antioxidants study trial patients dose effect").split()


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows with 0 to 7 documents of 1 to 40 words; one document forges the embed token, row 7 has none."""
    rng = random.Random(seed)
    rows = []
    for q in range(n):
        k = 5 if q == 0 else 0 if q == 7 else rng.randint(1, 7)
        docs = [" ".join(rng.choices(WORDS, k=rng.randint(1, 40))) for _ in range(k)]
        if q == 1 and docs:
            docs[0] = "tea <|embed_token|> " + docs[0]
        rows.append({"query_id": f"q{q}", "query": " ".join(rng.choices(WORDS, k=rng.randint(1, 6))),
                     "doc_ids": [f"d{q}-{i}" for i in range(k)], "documents": docs})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows: list[dict], row_group_size: int = 3) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def run_cli(*args: str) -> int:
    return main(["rerank-batch", "--no-progress", *args])


def assert_same_ranking(got_ids: list, got_scores: list, exp_ids: list, exp_scores: list, tol: float = 1e-5) -> None:
    """Same scores per document within ``tol``, best first, and the same order except inside near-ties."""
    assert dict(zip(got_ids, got_scores)) == pytest.approx(dict(zip(exp_ids, exp_scores)), abs=tol)
    assert got_scores == sorted(got_scores, reverse=True)
    i = 0
    while i < len(exp_ids):
        j = i + 1
        while j < len(exp_ids) and exp_scores[j - 1] - exp_scores[j] <= tol:
            j += 1
        assert set(got_ids[i:j]) == set(exp_ids[i:j])
        i = j


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return make_rows(10)


def test_jsonl_and_parquet_outputs_match_the_reranker(tmp_path: Path, tiny_checkpoint: Path, tiny_reranker,
                                                     rows: list[dict]) -> None:
    """Both formats give each row the scores of a lone ``rerank`` call; ``--top-n`` keeps a prefix."""
    outputs = {}
    for name, path, extra in [("jsonl", write_jsonl(tmp_path / "in.jsonl", rows), []),
                              ("parquet", write_parquet(tmp_path / "in.parquet", rows), ["--top-n", "2"])]:
        out = tmp_path / f"out-{name}.parquet"
        assert run_cli("-i", str(path), "-o", str(out), "--model", str(tiny_checkpoint), "--batch-size", "4",
                       *extra) == 0
        assert not parts_dir_for(out).exists()
        table = pq.read_table(out)
        assert table.schema == OUTPUT_SCHEMA
        outputs[name] = table.to_pylist()
    for full, top in zip(outputs["jsonl"], outputs["parquet"]):
        assert top == {"query_id": full["query_id"], "doc_ids": full["doc_ids"][:2], "scores": full["scores"][:2]}
    got = outputs["jsonl"]
    assert [r["query_id"] for r in got] == [r["query_id"] for r in rows]
    for row, out in zip(rows, got):
        expected = tiny_reranker.rerank(row["query"], row["documents"])
        assert_same_ranking(out["doc_ids"], out["scores"], [row["doc_ids"][r.index] for r in expected],
                            [r.relevance_score for r in expected])


def test_chunks_read_back_in_any_order(tmp_path: Path) -> None:
    rows = make_rows(23, seed=1)
    expected = [(r["query_id"], r["doc_ids"], r["documents"]) for r in rows]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" + ("\n" if i % 4 == 0 else "") for i, r in enumerate(rows)))
    typed = pa.Table.from_pylist(rows).set_column(0, "query_id", pa.array(range(23), pa.int64()))
    typed = typed.set_column(1, "query", typed.column("query").cast(pa.large_string()))
    pq.write_table(typed, tmp_path / "in.parquet", row_group_size=5)
    for path, want in [(jsonl, expected), (tmp_path / "in.parquet", [(str(i), *e[1:]) for i, e in enumerate(expected)])]:
        plan = scan_input(path, 4, progress=False)
        assert plan.rows == 23 and [c.rows for c in plan.chunks] == [4, 4, 4, 4, 4, 3]
        reader = ChunkReader(plan.path, plan.format, plan.chunk_rows)
        order = plan.chunks + random.Random(0).sample(plan.chunks, len(plan.chunks))
        for chunk in order:
            got = reader.read(chunk).to_pydict()
            assert list(zip(got["query_id"], got["doc_ids"], got["documents"])) == want[chunk.start:chunk.stop]


STREAM_PARQUET = """
import sys
import pyarrow as pa
from lbnl.batch.source import ChunkReader, scan_input
plan = scan_input(sys.argv[1], 50, progress=False)
reader = ChunkReader(plan.path, plan.format, 50)
print(sum(reader.read(c).num_rows for c in plan.chunks), pa.default_memory_pool().max_memory())
"""


def test_parquet_is_streamed_not_loaded(tmp_path: Path) -> None:
    """Checking and reading a Parquet file peaks at about a row group of Arrow memory, not the file."""
    rng = random.Random(0)
    rows = [{"query_id": f"q{i}", "query": "q", "doc_ids": [str(j) for j in range(10)],
             "documents": [rng.randbytes(200).hex() for _ in range(10)]} for i in range(8000)]
    path = tmp_path / "big.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=500)
    meta = pq.ParquetFile(path).metadata
    size = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
    out = subprocess.run([sys.executable, "-c", STREAM_PARQUET, str(path)], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert int(out[0]) == 8000
    assert int(out[1]) < size / 4, (int(out[1]), size)


CRASHING_RUN = """
import os, signal, sys
import lbnl.batch.parts as parts
limit, commits, real = int(sys.argv[1]), [], parts._commit
def commit(tmp, final):
    if final.name.startswith("part-"):
        commits.append(final.name)
        if len(commits) > limit:
            os.truncate(tmp, tmp.stat().st_size // 2)
            os.kill(os.getpid(), signal.SIGKILL)
    real(tmp, final)
parts._commit = commit
from lbnl.cli import main
sys.exit(main(sys.argv[2:]))
"""


def crash_after(parts: int, *args: str) -> subprocess.CompletedProcess:
    """Run rerank-batch in a child that kill -9s itself half-way through writing part number ``parts``."""
    return subprocess.run([sys.executable, "-c", CRASHING_RUN, str(parts), "rerank-batch", "--no-progress", *args],
                          capture_output=True, text=True, timeout=300)


def test_killed_run_resumes_without_redoing_chunks(tmp_path: Path, tiny_checkpoint: Path, rows: list[dict],
                                                   capsys: pytest.CaptureFixture) -> None:
    src = write_parquet(tmp_path / "in.parquet", rows)
    out, reference = tmp_path / "out.parquet", tmp_path / "reference.parquet"
    args = ["-i", str(src), "--model", str(tiny_checkpoint), "--batch-size", "3"]
    crashed = crash_after(2, *args, "-o", str(out))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    parts = parts_dir_for(out)
    assert sorted(p.name for p in parts.glob("part-*")) == ["part-000000.parquet", "part-000001.parquet"]
    assert list(parts.glob(".part-*.tmp")) and not out.exists()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in parts.glob("part-*")}

    assert run_cli(*args, "-o", str(out), "--keep-parts") == 0
    assert "wrote 10 rows to" in (err := capsys.readouterr().err) and "6 of them from an earlier run" in err
    assert {p: (parts / p).stat().st_ino for p in before} == {p: v[0] for p, v in before.items()}
    assert {p: (parts / p).stat().st_mtime_ns for p in before} == {p: v[1] for p, v in before.items()}
    assert sorted(p.name for p in parts.iterdir()) == [".lock", "manifest.json"] + [f"part-00000{k}.parquet" for k in range(4)]

    assert run_cli(*args, "-o", str(reference)) == 0
    assert pq.read_table(out).to_pylist() == pq.read_table(reference).to_pylist()

    stale = out.with_name(f".{out.name}.0123abcd.tmp")  # what a kill -9 during assembly leaves
    stale.write_bytes(b"half an output")
    assert run_cli(*args, "-o", str(out), "--keep-parts") == 0
    assert not stale.exists() and pq.read_table(out).to_pylist() == pq.read_table(reference).to_pylist()


def test_resume_refuses_other_settings_and_existing_output(tmp_path: Path, tiny_checkpoint: Path, rows: list[dict],
                                                           capsys: pytest.CaptureFixture) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", rows[:4])
    out = tmp_path / "out.parquet"
    args = ["-i", str(src), "-o", str(out), "--model", str(tiny_checkpoint), "--batch-size", "2"]
    assert run_cli(*args, "--keep-parts") == 0
    assert run_cli(*args, "--top-n", "3") == 2
    err = capsys.readouterr().err
    assert "unfinished run with other inputs or settings" in err and "top_n: None then, 3 now" in err
    assert run_cli(*args, "--top-n", "3", "--overwrite") == 0
    assert all(len(r["doc_ids"]) <= 3 for r in pq.read_table(out).to_pylist())
    assert not parts_dir_for(out).exists()
    assert run_cli(*args, "--top-n", "3") == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    held = PartStore(out, {"held": True}, overwrite=True)
    try:
        assert run_cli(*args, "--overwrite") == 2
        assert "another rerank-batch run is writing" in capsys.readouterr().err
    finally:
        held.close()


def _bad_jsonl(tmp_path: Path, change: dict | str) -> Path:
    """Three rows; the third (line 3) replaced by raw text or updated with ``change``."""
    rows = make_rows(3)
    lines = [json.dumps(r) for r in rows]
    lines[2] = change if isinstance(change, str) else json.dumps({**rows[2], **change})
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _bad_parquet(tmp_path: Path, change) -> Path:
    """Six rows in row groups of two, the table passed through ``change``."""
    path = tmp_path / "bad.parquet"
    pq.write_table(change(pa.Table.from_pylist(make_rows(6))), path, row_group_size=2)
    return path


def _replace(name: str, row: int, value: object, type_: pa.DataType | None = None):
    def change(table: pa.Table) -> pa.Table:
        values = table.column(name).to_pylist()
        values[row] = value
        return table.set_column(table.schema.get_field_index(name), name, pa.array(values, type_))
    return change


BAD_INPUTS = {
    "missing file": (lambda d: d / "nope.jsonl", "no input file at"),
    "bad json": (lambda d: _bad_jsonl(d, '{"query_id": "x", '), "bad.jsonl, line 3: not valid JSON"),
    "missing field": (lambda d: _bad_jsonl(d, '{"query_id": "q2", "query": "t", "documents": []}'),
                      "line 3: missing field(s) 'doc_ids'"),
    "length mismatch": (lambda d: _bad_jsonl(d, {"doc_ids": ["a"], "documents": ["x", "y"]}),
                        "line 3 (query_id 'q2'): 1 doc_ids but 2 documents"),
    "non-string doc": (lambda d: _bad_jsonl(d, {"doc_ids": ["a", "b"], "documents": ["x", 7]}),
                       "line 3 (query_id 'q2'): document 1 is a int"),
    "empty query": (lambda d: _bad_jsonl(d, {"query": "  "}), "line 3 (query_id 'q2'): the query is empty"),
    "missing column": (lambda d: _bad_parquet(d, lambda t: t.drop_columns(["documents"])),
                       "missing column(s) 'documents'"),
    "int documents": (lambda d: _bad_parquet(d, lambda t: t.set_column(
                          3, "documents", pa.array([[1]] * 6, pa.list_(pa.int64())))),
                      "column 'documents' must be a list of strings, found list<element: int64>"),
    "parquet mismatch": (lambda d: _bad_parquet(d, _replace("doc_ids", 3, ["a"])),
                         "row 3 (query_id 'q3'): 1 doc_ids but 6 documents"),
    "null document": (lambda d: _bad_parquet(d, _replace("documents", 5, ["x", None, "y"])),
                      "row 5 (query_id 'q5'): documents holds a null"),
    "null query": (lambda d: _bad_parquet(d, _replace("query", 4, None)), "row 4 (query_id 'q4'): query is null"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_a_message_with_the_row(case: str, tmp_path: Path, tiny_checkpoint: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    make, message = BAD_INPUTS[case]
    path = make(tmp_path)
    assert run_cli("-i", str(path), "-o", str(tmp_path / "out.parquet"), "--model", str(tiny_checkpoint)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "out.parquet").exists()


def test_import_is_light_and_local_engine_needs_no_ray(tmp_path: Path, tiny_checkpoint: Path, rows: list[dict],
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    code = "import sys, lbnl.batch; print(sorted(m for m in ('torch', 'pyarrow', 'ray') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert loaded.stdout.strip() == "[]", loaded.stderr
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)
    src = write_jsonl(tmp_path / "in.jsonl", rows[:3])
    assert run_cli("-i", str(src), "-o", str(tmp_path / "a.parquet"), "--model", str(tiny_checkpoint)) == 0
    assert run_cli("-i", str(src), "-o", str(tmp_path / "b.parquet"), "--model", str(tiny_checkpoint),
                   "--engine", "ray") == 2
    assert "--engine ray needs Ray Data: pip install 'lbnl[ray]'" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"doc_ids": ["a", "b"], "documents": ["fine", "caf\ud800"]}, "line 3 (query_id 'q2'): document 1 holds a lone surrogate (U+D800)"),
    ({"query": "t\udfff"}, "line 3 (query_id 'q2'): the query holds a lone surrogate (U+DFFF)"),
], ids=["document", "query"])
def test_a_lone_surrogate_is_refused_before_any_model_loads(change: dict, message: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    path = _bad_jsonl(tmp_path, change)
    # a model path that does not exist: the input check must speak first
    assert run_cli("-i", str(path), "-o", str(tmp_path / "out.parquet"), "--model", str(tmp_path / "no-model")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
