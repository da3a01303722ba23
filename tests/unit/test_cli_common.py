"""Reading documents files (lbnl.cli.common): formats, encodings, line ends; errors name the file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from lbnl.cli.common import read_documents
from lbnl.errors import InvalidInputError


def test_read_documents_formats(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("a\n\nb\n")
    assert read_documents(str(plain)) == ["a", "b"]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "x"}\n"y"\n')
    assert read_documents(str(jsonl)) == ["x", "y"]
    jsonl.write_text('{"text": "x"}\n{"body": "y"}\n')
    with pytest.raises(InvalidInputError, match="line 2"):
        read_documents(str(jsonl))
    jsonl.write_text('{"text": "x"}\n{not json\n')
    with pytest.raises(InvalidInputError, match="line 2: not valid JSON"):
        read_documents(str(jsonl))


def test_format_is_explicit_or_never_silently_wrong(tmp_path: Path) -> None:
    quoted = tmp_path / "quoted.txt"
    quoted.write_text('"Green tea," she said.\nBasketball.\n')
    with pytest.raises(InvalidInputError, match="--format text"):
        read_documents(str(quoted))
    assert read_documents(str(quoted), "text") == ['"Green tea," she said.', "Basketball."]
    with pytest.raises(InvalidInputError, match="unknown documents format"):
        read_documents(str(quoted), "csv")


def test_only_newlines_end_documents_and_bytes_are_checked(tmp_path: Path) -> None:
    odd = tmp_path / "odd.txt"
    odd.write_bytes("one\x0cstill one\u2028and one\r\ntwo\x1cstill two\n".encode())
    assert read_documents(str(odd)) == ["one\x0cstill one\u2028and one", "two\x1cstill two"]
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + '{"text": "a\u2028b"}\n'.encode())
    assert read_documents(str(bom)) == ["a\u2028b"]
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\ncaf\xe9\n")
    with pytest.raises(InvalidInputError, match="line 2: not UTF-8"):
        read_documents(str(bad))


def test_lone_surrogates_in_json_lines_name_the_line(tmp_path: Path) -> None:
    docs = tmp_path / "s.jsonl"
    docs.write_text('{"text": "fine"}\n\n{"text": "a\\ud800b"}\n')
    with pytest.raises(InvalidInputError, match=r"line 3 holds a lone surrogate \(U\+D800\) at character 1"):
        read_documents(str(docs))


def test_documents_are_read_line_by_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is never read whole: only line iteration is used, so memory follows the documents kept."""
    import builtins

    big = tmp_path / "big.txt"
    big.write_text("".join(f"document {i}\n" for i in range(5000)))
    real_open = builtins.open

    class LinesOnly:
        def __init__(self, handle):
            self.handle = handle

        def __iter__(self):
            return iter(self.handle)

        def read(self, *args):
            raise AssertionError("read the whole file")

        def close(self):
            self.handle.close()

    monkeypatch.setattr(builtins, "open", lambda *a, **k: LinesOnly(real_open(*a, **k)))
    docs = read_documents(str(big))
    assert len(docs) == 5000 and docs[-1] == "document 4999"
    with pytest.raises(InvalidInputError, match="no documents file"):
        read_documents(str(tmp_path / "missing.txt"))


def test_quantize_flag_reaches_the_loader() -> None:
    import argparse

    from lbnl.cli.common import add_model_arguments, model_options

    parser = argparse.ArgumentParser()
    add_model_arguments(parser)
    assert "quantize" not in model_options(parser.parse_args([]))
    assert model_options(parser.parse_args(["--quantize", "int8"]))["quantize"] == "int8"
    with pytest.raises(SystemExit):
        parser.parse_args(["--quantize", "int4"])
