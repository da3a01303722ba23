"""A BEIR name stands for the public archive: downloaded once, checked against BEIR's MD5, cached; a clear
message when it cannot be had. Exercised on a local archive (file:// address), no network."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from lbnl.errors import InvalidInputError
from lbnl.ir import beir


def make_archive(tmp_path: Path, fixtures_dir: Path) -> Path:
    archive = tmp_path / "mini.zip"
    source = fixtures_dir / "beir-mini"
    import gzip

    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("corpus.jsonl", "queries.jsonl"):
            zf.writestr(f"mini/{name}", gzip.decompress((source / f"{name}.gz").read_bytes()))
        zf.writestr("mini/qrels/test.tsv", (source / "qrels" / "test.tsv").read_text())
        zf.writestr("mini/../evil.txt", "never extracted")
    return archive


def test_a_beir_name_is_downloaded_checked_and_cached(tmp_path: Path, fixtures_dir: Path, monkeypatch) -> None:
    archive = make_archive(tmp_path, fixtures_dir)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setenv("LBNL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(beir, "BEIR_ARCHIVES", {"mini": (archive.as_uri(), md5)})
    data = beir.load_beir("mini", "test")
    assert data.root == (tmp_path / "cache" / "beir" / "mini").resolve() and len(data.corpus) == 12
    assert not (tmp_path / "cache" / "beir" / "evil.txt").exists()
    archive.unlink()  # cached: no second download
    assert len(beir.load_beir("mini", "test").query_ids) == 4


def test_a_wrong_checksum_or_no_network_is_a_clear_error(tmp_path: Path, fixtures_dir: Path, monkeypatch) -> None:
    archive = make_archive(tmp_path, fixtures_dir)
    monkeypatch.setenv("LBNL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(beir, "BEIR_ARCHIVES", {"mini": (archive.as_uri(), "0" * 32),
                                                "gone": ((tmp_path / "missing.zip").as_uri(), "0" * 32)})
    with pytest.raises(InvalidInputError, match="is not the one BEIR publishes"):
        beir.load_beir("mini")
    with pytest.raises(InvalidInputError, match="could not be downloaded .* pass its directory"):
        beir.load_beir("gone")
    with pytest.raises(InvalidInputError, match="not a BEIR name"):
        beir.load_beir("no-such-set")
    assert not (tmp_path / "cache" / "beir" / "mini").exists()
