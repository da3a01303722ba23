"""``lbnl rerank-batch --engine ray`` on a local Ray instance: same output as the local engine, resumes its runs."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lbnl.batch.parts import parts_dir_for
from test_batch import make_rows, run_cli, write_jsonl

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module (start-up is slow); rerank-batch joins it and leaves it running."""
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def batch_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("batch-ray") / "in.jsonl", make_rows(10, seed=2))


@pytest.fixture(scope="module")
def local_output(batch_input: Path, tiny_checkpoint: Path) -> list[dict]:
    out = batch_input.with_name("local.parquet")
    assert run_cli("-i", str(batch_input), "-o", str(out), "--model", str(tiny_checkpoint), "--batch-size", "3") == 0
    return pq.read_table(out).to_pylist()


def assert_same_output(got: list[dict], expected: list[dict]) -> None:
    """Same rows, same ranked ids; scores equal up to float32 rounding (the engines' thread counts differ)."""
    assert [(r["query_id"], r["doc_ids"]) for r in got] == [(r["query_id"], r["doc_ids"]) for r in expected]
    for a, b in zip(got, expected):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-6)


def test_two_actors_match_the_local_engine(local_ray, batch_input: Path, tiny_checkpoint: Path,
                                          local_output: list[dict], capsys: pytest.CaptureFixture) -> None:
    out = batch_input.with_name("ray.parquet")
    assert run_cli("-i", str(batch_input), "-o", str(out), "--model", str(tiny_checkpoint), "--batch-size", "3",
                   "--engine", "ray", "--num-actors", "2") == 0
    assert "engine ray, 2 model copies" in capsys.readouterr().err
    assert_same_output(pq.read_table(out).to_pylist(), local_output)
    assert ray.is_initialized()


def test_ray_resumes_an_unfinished_local_run(local_ray, batch_input: Path, tiny_checkpoint: Path,
                                            local_output: list[dict], capsys: pytest.CaptureFixture) -> None:
    """A local run left with only its first part (as a crash leaves it; test_batch kills one for real)."""
    out = batch_input.with_name("resumed.parquet")
    args = ["-i", str(batch_input), "-o", str(out), "--model", str(tiny_checkpoint), "--batch-size", "3"]
    assert run_cli(*args, "--keep-parts") == 0
    parts = parts_dir_for(out)
    for k in (1, 2, 3):
        (parts / f"part-00000{k}.parquet").unlink()
    out.unlink()
    inode = (parts / "part-000000.parquet").stat().st_ino
    assert run_cli(*args, "--engine", "ray", "--num-actors", "1", "--keep-parts") == 0
    assert "3 of them from an earlier run; reranked 7 rows" in capsys.readouterr().err
    assert (parts / "part-000000.parquet").stat().st_ino == inode
    assert sorted(p.name for p in parts.glob("part-*")) == [f"part-00000{k}.parquet" for k in range(4)]
    assert_same_output(pq.read_table(out).to_pylist(), local_output)


def test_worker_errors_are_messages(local_ray, batch_input: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "not-a-checkpoint").mkdir()
    assert run_cli("-i", str(batch_input), "-o", str(tmp_path / "out.parquet"), "--model",
                   str(tmp_path / "not-a-checkpoint"), "--engine", "ray", "--num-actors", "1") == 2
    err = capsys.readouterr().err
    # Ray Data's own log handler may also complain here that pytest closed an earlier test's stderr.
    assert "not-a-checkpoint has no config.json (nor lbnl_adapter.json): not a checkpoint directory" in err \
        and "error: " in err and "lbnl.errors" not in err, err
