"""BEIR-layout datasets: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/{split}.tsv``, each plain or ``.gz``.

The layout is the one the BEIR benchmark distributes; loading it in place keeps results
comparable with published numbers. A BEIR name (``scifact``) stands for the public BEIR archive,
downloaded once when the network allows, checked against the checksum BEIR publishes, and kept
under ``$LBNL_CACHE/beir``.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from ..errors import InvalidInputError
from ..jsonl import iter_jsonl, open_text

Qrels = dict[str, dict[str, int]]


@dataclass
class BeirDataset:
    """One BEIR dataset split held in memory.

    Attributes:
        root: the dataset directory.
        split: the qrels split that was loaded (``test``, ``dev``, ``train``...).
        corpus: document id -> ``{"title": ..., "text": ...}``, in file order.
        queries: query id -> query text (all queries of the file, not only the split's).
        qrels: query id -> {document id -> graded relevance} for the split.
        files: the files read, for cache keys (``corpus``, ``queries``, ``qrels``).
    """

    root: Path
    split: str
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: Qrels
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def query_ids(self) -> list[str]:
        """Ids of the split's judged queries that have a text, in qrels order (what gets evaluated)."""
        return [qid for qid in self.qrels if qid in self.queries]

    def document_text(self, doc_id: str) -> str:
        """The text a document is scored by: ``title + " " + text`` (just the text when there is no title)."""
        return document_text(self.corpus[doc_id])

    def fingerprint(self, *names: str) -> list[list[object]]:
        """Path, size and modification time of the named files (all when none named), for cache keys."""
        chosen = names or tuple(sorted(self.files))
        out: list[list[object]] = []
        for name in chosen:
            stat = self.files[name].stat()
            out.append([name, str(self.files[name].resolve()), stat.st_size, stat.st_mtime_ns])
        return out


def document_text(doc: dict[str, str]) -> str:
    """``title + " " + text``, stripped; BM25 and the rerankers read the same string."""
    return f"{doc.get('title') or ''} {doc.get('text') or ''}".strip()


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise InvalidInputError(f"{root}: no {stem} or {stem}.gz (expected the BEIR layout)")


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for n, row in iter_jsonl(path):
        if not isinstance(row, dict) or "_id" not in row:
            raise InvalidInputError(f"{path}, line {n}: expected a JSON object with an '_id' field")
        yield n, row


def load_corpus(path: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """``corpus.jsonl[.gz]`` -> id -> ``{"title", "text"}``."""
    corpus: dict[str, dict[str, str]] = {}
    for n, row in _jsonl(Path(path)):
        title, text = row.get("title") or "", row.get("text") or ""
        if not isinstance(title, str) or not isinstance(text, str):
            raise InvalidInputError(f"{path}, line {n}: 'title' and 'text' must be strings")
        corpus[str(row["_id"])] = {"title": title, "text": text}
    return corpus


def load_queries(path: str | os.PathLike[str]) -> dict[str, str]:
    """``queries.jsonl[.gz]`` -> id -> text."""
    queries: dict[str, str] = {}
    for n, row in _jsonl(Path(path)):
        text = row.get("text")
        if not isinstance(text, str):
            raise InvalidInputError(f"{path}, line {n}: 'text' must be a string")
        queries[str(row["_id"])] = text
    return queries


def load_qrels(path: str | os.PathLike[str]) -> Qrels:
    """``qrels/{split}.tsv[.gz]`` (header ``query-id corpus-id score``) -> query id -> {doc id -> relevance}."""
    qrels: Qrels = {}
    with open_text(Path(path)) as handle:
        reader = csv.reader(handle, delimiter="\t")
        for n, row in enumerate(reader, 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 3:
                raise InvalidInputError(f"{path}, line {n}: expected query-id, corpus-id and score separated by tabs")
            try:
                score = int(float(row[2]))
            except ValueError:
                if n == 1:
                    continue
                raise InvalidInputError(f"{path}, line {n}: score {row[2]!r} is not a number") from None
            qrels.setdefault(row[0], {})[row[1]] = score
    return qrels


#: Public BEIR archives by name: (address, the MD5 that BEIR publishes for it).
BEIR_ARCHIVES: dict[str, tuple[str, str]] = {
    "scifact": ("https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip",
                "5f7d1de60b170fc8027bb7898e2efca1"),
}


def beir_cache() -> Path:
    """``$LBNL_CACHE/beir`` (default ``~/.cache/lbnl/beir``)."""
    return Path(os.environ.get("LBNL_CACHE") or "~/.cache/lbnl").expanduser() / "beir"


def resolve_beir(name_or_path: str | os.PathLike[str]) -> Path:
    """A BEIR-layout directory: the path itself, or a known BEIR name's cached (or now downloaded) copy."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    name = str(name_or_path).strip().lower()
    if name not in BEIR_ARCHIVES:
        raise InvalidInputError(f"no dataset directory at {name_or_path} (and not a BEIR name lbnl can fetch: "
                                f"{', '.join(sorted(BEIR_ARCHIVES))})")
    target = beir_cache() / name
    if not (target / "qrels").is_dir():
        _download_beir(name, target)
    return target


def _download_beir(name: str, target: Path) -> None:
    url, md5 = BEIR_ARCHIVES[name]
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        archive = Path(tmp) / f"{name}.zip"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as exc:
            raise InvalidInputError(
                f"the BEIR data set {name!r} is not cached and could not be downloaded from {url} ({exc}); "
                f"download and unzip it yourself and pass its directory (corpus.jsonl, queries.jsonl, qrels/), "
                f"or put it at {target}") from None
        digest = hashlib.md5(archive.read_bytes()).hexdigest()  # noqa: S324 - the checksum BEIR publishes
        if digest != md5:
            raise InvalidInputError(f"{url}: MD5 {digest} is not the one BEIR publishes ({md5}); not used")
        staged = Path(tmp) / "staged"
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                parts = Path(member).parts
                keep = parts[1:] if len(parts) > 1 and parts[0] == name else parts
                if not keep or ".." in keep or member.endswith("/"):
                    continue
                if keep[0] in ("corpus.jsonl", "queries.jsonl") or (keep[0] == "qrels" and len(keep) == 2):
                    dest = staged.joinpath(*keep)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(member) as src, open(dest, "wb") as out:
                        shutil.copyfileobj(src, out)
        if not (staged / "qrels").is_dir():
            raise InvalidInputError(f"{url}: the archive holds no qrels/ directory")
        if not target.exists():
            os.replace(staged, target)


def load_beir(root: str | os.PathLike[str], split: str = "test") -> BeirDataset:
    """Load a BEIR-layout directory for one split.

    Args:
        root: directory holding ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/`` (files may be gzipped),
            or a BEIR name lbnl can fetch (see :data:`BEIR_ARCHIVES`).
        split: which ``qrels/{split}.tsv`` to load.
    """
    root = resolve_beir(root)
    qrels_dir = root / "qrels"
    try:
        qrels_path = _find(qrels_dir, f"{split}.tsv")
    except InvalidInputError:
        have = sorted(p.name.split(".")[0] for p in qrels_dir.glob("*.tsv*")) if qrels_dir.is_dir() else []
        raise InvalidInputError(f"{root}: no qrels for split {split!r}"
                                + (f" (available: {', '.join(have)})" if have else "")) from None
    files = {"corpus": _find(root, "corpus.jsonl"), "queries": _find(root, "queries.jsonl"), "qrels": qrels_path}
    dataset = BeirDataset(
        root=root.resolve(), split=split, corpus=load_corpus(files["corpus"]),
        queries=load_queries(files["queries"]), qrels=load_qrels(files["qrels"]), files=files,
    )
    if not dataset.corpus:
        raise InvalidInputError(f"{files['corpus']}: the corpus is empty")
    if not dataset.query_ids:
        raise InvalidInputError(f"{files['qrels']}: no judged query has a text in {files['queries'].name}")
    return dataset
