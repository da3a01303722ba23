"""Batch input: check every row of a Parquet or JSON-lines file and read it back in fixed chunks.

The file is never loaded whole. ``scan_input`` streams it once to check each row and to cut it
into chunks of ``chunk_rows`` rows (chunk ``k`` holds rows ``k*chunk_rows`` onwards), so both
engines, and a resumed run, see exactly the same chunks. ``ChunkReader`` then reads one chunk at
a time: JSON lines by seeking to the chunk's byte offset, Parquet by streaming record batches
from the row group that holds the chunk's first row.
"""

from __future__ import annotations

import bisect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import InvalidInputError
from ..truncation import check_unicode

INPUT_COLUMNS = ("query_id", "query", "doc_ids", "documents")

#: Rows as the engines see them, whatever the input's own types (integer ids become strings).
ROWS_SCHEMA = pa.schema([
    ("query_id", pa.string()),
    ("query", pa.string()),
    ("doc_ids", pa.list_(pa.string())),
    ("documents", pa.list_(pa.string())),
])

PARQUET_SUFFIXES = (".parquet", ".pq")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")

#: Rows per record batch while checking a Parquet file.
_SCAN_BATCH_ROWS = 256
_READ_BUFFER_BYTES = 1 << 20


@dataclass(frozen=True)
class Chunk:
    """Rows ``start`` to ``stop - 1`` of the input (0-based); ``offset`` is the byte offset of the
    first row's line in a JSON-lines file, -1 for Parquet."""

    index: int
    start: int
    stop: int
    offset: int = -1

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass
class InputPlan:
    """A checked input file cut into chunks."""

    path: Path
    format: str
    rows: int
    chunk_rows: int
    chunks: list[Chunk] = field(default_factory=list)


def detect_format(path: Path) -> str:
    """``"parquet"`` or ``"jsonl"``, from the suffix, else from the Parquet magic bytes."""
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    with open(path, "rb") as f:
        return "parquet" if f.read(4) == b"PAR1" else "jsonl"


def check_input_path(path: str | os.PathLike[str]) -> Path:
    """The input as an absolute path; a clear error when it is missing or not a file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise InvalidInputError(f"no input file at {path}")
    if not p.is_file():
        raise InvalidInputError(f"the input {path} is not a file")
    return p.resolve()


def _id_text(value: Any, what: str, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise InvalidInputError(f"{where}: {what} must be a string or an integer, got {type(value).__name__}")


def row_from_json(obj: Any, where: str) -> tuple[str, str, list[str], list[str]]:
    """Check one JSON row and return ``(query_id, query, doc_ids, documents)`` with string ids."""
    if not isinstance(obj, dict):
        raise InvalidInputError(f"{where}: expected a JSON object with fields {', '.join(INPUT_COLUMNS)}")
    missing = [c for c in INPUT_COLUMNS if c not in obj]
    if missing:
        raise InvalidInputError(f"{where}: missing field(s) {', '.join(repr(m) for m in missing)}; "
                                f"each row needs {', '.join(INPUT_COLUMNS)}")
    query_id = _id_text(obj["query_id"], "query_id", where)
    where = f"{where} (query_id {query_id!r})"
    query = obj["query"]
    if not isinstance(query, str):
        raise InvalidInputError(f"{where}: the query must be a string, got {type(query).__name__}")
    if not query.strip():
        raise InvalidInputError(f"{where}: the query is empty")
    check_unicode(query, f"{where}: the query")
    doc_ids, documents = obj["doc_ids"], obj["documents"]
    if not isinstance(doc_ids, list):
        raise InvalidInputError(f"{where}: doc_ids must be a list, got {type(doc_ids).__name__}")
    if not isinstance(documents, list):
        raise InvalidInputError(f"{where}: documents must be a list of strings, got {type(documents).__name__}")
    if len(doc_ids) != len(documents):
        raise InvalidInputError(f"{where}: {len(doc_ids)} doc_ids but {len(documents)} documents; "
                                "they must pair up one to one")
    for i, doc in enumerate(documents):
        if not isinstance(doc, str):
            raise InvalidInputError(f"{where}: document {i} is a {type(doc).__name__}; documents must be strings")
        check_unicode(doc, f"{where}: document {i}")
    return query_id, query, [_id_text(d, f"doc_ids[{i}]", where) for i, d in enumerate(doc_ids)], documents


def rows_table(rows: list[tuple[str, str, list[str], list[str]]]) -> pa.Table:
    """Checked rows as a table in :data:`ROWS_SCHEMA`."""
    columns = list(zip(*rows)) if rows else [[], [], [], []]
    return pa.Table.from_arrays([pa.array(list(c), type=f.type) for c, f in zip(columns, ROWS_SCHEMA)],
                                schema=ROWS_SCHEMA)


def _parse_line(raw: bytes, where: str) -> tuple[str, str, list[str], list[str]]:
    try:
        obj = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{where}: not valid JSON ({exc})") from None
    return row_from_json(obj, where)


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t)


def check_parquet_schema(path: Path, schema: pa.Schema) -> None:
    """Columns present and of usable types; a message that names what is wrong."""
    missing = [c for c in INPUT_COLUMNS if c not in schema.names]
    if missing:
        raise InvalidInputError(
            f"{path}: missing column(s) {', '.join(repr(m) for m in missing)}; an input needs "
            f"{', '.join(INPUT_COLUMNS)} (found: {', '.join(schema.names) or 'none'})")
    types = {name: schema.field(name).type for name in INPUT_COLUMNS}
    if not (_is_string(types["query_id"]) or pa.types.is_integer(types["query_id"])):
        raise InvalidInputError(f"{path}: column 'query_id' must hold strings or integers, found {types['query_id']}")
    if not _is_string(types["query"]):
        raise InvalidInputError(f"{path}: column 'query' must hold strings, found {types['query']}")
    ids = types["doc_ids"]
    if not (_is_list(ids) and (_is_string(ids.value_type) or pa.types.is_integer(ids.value_type))):
        raise InvalidInputError(f"{path}: column 'doc_ids' must be a list of strings or integers, found {ids}")
    docs = types["documents"]
    if not (_is_list(docs) and _is_string(docs.value_type)):
        raise InvalidInputError(f"{path}: column 'documents' must be a list of strings, found {docs}")


def normalize_batch(batch: pa.RecordBatch | pa.Table) -> pa.Table:
    """Select the input columns and cast them to :data:`ROWS_SCHEMA`."""
    table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
    return table.select(list(INPUT_COLUMNS)).cast(ROWS_SCHEMA)


def check_rows(table: pa.Table, first_row: int, path: Path) -> None:
    """Vectorised row checks of a normalised Parquet batch; the error names the first bad row (0-based)."""

    def fail(i: int, message: str) -> None:
        qid = table.column("query_id")[i].as_py()
        raise InvalidInputError(f"{path}, row {first_row + i} (query_id {qid!r}): {message}")

    for name in INPUT_COLUMNS:
        column = table.column(name)
        if column.null_count:
            fail(pc.index(pc.is_null(column), True).as_py(), f"{name} is null")
    for name in ("doc_ids", "documents"):
        column = table.column(name)
        values = pc.list_flatten(column)
        if values.null_count:
            parents = pc.list_parent_indices(column)
            fail(parents[pc.index(pc.is_null(values), True).as_py()].as_py(), f"{name} holds a null")
    empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(table.column("query"))), 0)
    if pc.any(empty).as_py():
        fail(pc.index(empty, True).as_py(), "the query is empty")
    n_ids = pc.list_value_length(table.column("doc_ids"))
    n_docs = pc.list_value_length(table.column("documents"))
    mismatch = pc.not_equal(n_ids, n_docs)
    if pc.any(mismatch).as_py():
        i = pc.index(mismatch, True).as_py()
        fail(i, f"{n_ids[i].as_py()} doc_ids but {n_docs[i].as_py()} documents; they must pair up one to one")


def _chunks(rows: int, chunk_rows: int, offsets: list[int] | None) -> list[Chunk]:
    return [
        Chunk(k, start, min(start + chunk_rows, rows), offsets[k] if offsets is not None else -1)
        for k, start in enumerate(range(0, rows, chunk_rows))
    ]


def _scan_jsonl(path: Path, chunk_rows: int, bar: Any) -> InputPlan:
    offsets: list[int] = []
    rows = 0
    position = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if raw.strip():
                if rows % chunk_rows == 0:
                    offsets.append(position)
                _parse_line(raw, f"{path}, line {number}")
                rows += 1
            position += len(raw)
            bar.update(len(raw))
    return InputPlan(path, "jsonl", rows, chunk_rows, _chunks(rows, chunk_rows, offsets))


def _open_parquet(path: Path) -> pq.ParquetFile:
    """Open for streaming: pre-buffering (pyarrow's default) would read every requested row group
    into memory up front, i.e. the rest of the file; a buffered stream reads page by page."""
    try:
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BUFFER_BYTES)
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInputError(f"{path} is not a readable Parquet file ({exc})") from None


def _scan_parquet(path: Path, chunk_rows: int, bar: Any) -> InputPlan:
    file = _open_parquet(path)
    check_parquet_schema(path, file.schema_arrow)
    start = 0
    for batch in file.iter_batches(batch_size=_SCAN_BATCH_ROWS, columns=list(INPUT_COLUMNS)):
        check_rows(normalize_batch(batch), start, path)
        start += batch.num_rows
        bar.update(batch.num_rows)
    return InputPlan(path, "parquet", start, chunk_rows, _chunks(start, chunk_rows, None))


def scan_input(path: str | os.PathLike[str], chunk_rows: int, progress: bool = True) -> InputPlan:
    """Check every row of the input (streaming) and cut it into chunks of ``chunk_rows`` rows.

    Args:
        path: a Parquet file or a JSON-lines file with ``query_id, query, doc_ids, documents``.
        chunk_rows: rows per chunk (the last chunk may be shorter).
        progress: show a tqdm bar while checking.
    """
    from tqdm.auto import tqdm

    p = check_input_path(path)
    fmt = detect_format(p)
    if fmt == "parquet":
        total, unit, scan = _open_parquet(p).metadata.num_rows, "row", _scan_parquet
    else:
        total, unit, scan = p.stat().st_size, "B", _scan_jsonl
    with tqdm(total=total, unit=unit, unit_scale=unit == "B", desc="checking input", disable=not progress,
              leave=False) as bar:
        return scan(p, chunk_rows, bar)


class ChunkReader:
    """Reads chunks of a scanned input, holding at most about one chunk of rows in memory.

    Parquet is read by streaming record batches; reading chunks in increasing order (as the local
    engine does, and each Ray actor mostly does) continues the open stream instead of reopening it.
    """

    def __init__(self, path: str | os.PathLike[str], fmt: str, chunk_rows: int):
        self.path = Path(path)
        self.format = fmt
        self.chunk_rows = chunk_rows
        self._file: pq.ParquetFile | None = None
        self._batches: Iterator[pa.RecordBatch] | None = None
        self._batch: pa.RecordBatch | None = None
        self._batch_start = 0
        if fmt == "parquet":
            self._file = _open_parquet(self.path)
            sizes = [self._file.metadata.row_group(g).num_rows for g in range(self._file.num_row_groups)]
            self._group_starts = [sum(sizes[:g]) for g in range(len(sizes))]

    def read(self, chunk: Chunk) -> pa.Table:
        """The chunk's rows in :data:`ROWS_SCHEMA`."""
        if self.format == "jsonl":
            return self._read_jsonl(chunk)
        return self._read_parquet(chunk)

    def _read_jsonl(self, chunk: Chunk) -> pa.Table:
        rows = []
        with open(self.path, "rb") as f:
            f.seek(chunk.offset)
            for raw in f:
                if raw.strip():
                    rows.append(_parse_line(raw, f"{self.path}, row {chunk.start + len(rows)}"))
                    if len(rows) == chunk.rows:
                        break
        if len(rows) != chunk.rows:
            raise InvalidInputError(f"{self.path} changed while it was being read")
        return rows_table(rows)

    def _group_of(self, row: int) -> int:
        return bisect.bisect_right(self._group_starts, row) - 1

    def _reopen(self, row: int) -> None:
        assert self._file is not None
        group = self._group_of(row)
        self._batches = self._file.iter_batches(batch_size=self.chunk_rows, columns=list(INPUT_COLUMNS),
                                                row_groups=range(group, self._file.num_row_groups))
        self._batch = None
        self._batch_start = self._group_starts[group]

    def _read_parquet(self, chunk: Chunk) -> pa.Table:
        if (self._batches is None or chunk.start < self._batch_start
                or self._group_of(chunk.start) > self._group_of(self._batch_start)):
            self._reopen(chunk.start)
        pieces = []
        while True:
            if self._batch is None:
                self._batch = next(self._batches, None)
                if self._batch is None:
                    raise InvalidInputError(f"{self.path} changed while it was being read")
            end = self._batch_start + self._batch.num_rows
            lo = max(chunk.start - self._batch_start, 0)
            hi = min(chunk.stop, end) - self._batch_start
            if hi > lo:
                pieces.append(self._batch.slice(lo, hi - lo))
            if end >= chunk.stop:
                break
            self._batch, self._batch_start = None, end
        return normalize_batch(pa.Table.from_batches(pieces, schema=pieces[0].schema))
