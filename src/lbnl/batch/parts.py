"""Batch output: one Parquet part per finished chunk, committed atomically, then one final file.

A run writes into ``OUTPUT.parts/``: ``manifest.json`` (the input and the settings that decide
the scores) and ``part-000012.parquet`` for chunk 12. A part is written to a hidden temporary
name, flushed to disk and renamed, so after a crash (even ``kill -9``) every part present is
complete and a chunk is either done or not: a resumed run redoes only the missing chunks.
When all parts exist they are streamed into ``OUTPUT`` (again via a temporary name and a rename)
and the directory is removed.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InvalidInputError

#: Ranked results: ``doc_ids[0]`` is the best document, ``scores`` are cosines in [-1, 1].
OUTPUT_SCHEMA = pa.schema([
    ("query_id", pa.string()),
    ("doc_ids", pa.list_(pa.string())),
    ("scores", pa.list_(pa.float32())),
])

MANIFEST = "manifest.json"
_PART = re.compile(r"^part-(\d+)\.parquet$")
#: Rows per row group of the final file (parts are small; the final file should not be).
_OUTPUT_ROW_GROUP_ROWS = 16384


def parts_dir_for(output: Path) -> Path:
    """Where the parts of ``output`` live while a run is unfinished."""
    return output.with_name(output.name + ".parts")


def part_path(parts_dir: Path, index: int) -> Path:
    return parts_dir / f"part-{index:06d}.parquet"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(tmp: Path, final: Path) -> None:
    """Flush ``tmp`` to disk and rename it to ``final`` in one atomic step."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def write_part(table: pa.Table, parts_dir: Path, index: int) -> Path:
    """Write chunk ``index``'s results; a crash leaves either the whole part or none of it."""
    final = part_path(parts_dir, index)
    tmp = parts_dir / f".{final.name}.{uuid.uuid4().hex}.tmp"
    pq.write_table(table.cast(OUTPUT_SCHEMA), tmp)
    _commit(tmp, final)
    return final


def done_chunks(parts_dir: Path) -> set[int]:
    """Indices of the chunks whose part is present."""
    found = set()
    for p in parts_dir.iterdir():
        m = _PART.match(p.name)
        if m:
            found.add(int(m.group(1)))
    return found


def _remove_temporaries(parts_dir: Path) -> None:
    for p in parts_dir.glob(".part-*.tmp"):
        p.unlink(missing_ok=True)


def _describe_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "; ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in keys)


class PartStore:
    """The parts directory of one output, locked for the lifetime of this object.

    Args:
        output: the final Parquet file.
        manifest: what decides the results (input identity, chunking, model and options); a
            resumed run must match it exactly.
        overwrite: discard an existing output and unfinished parts instead of refusing / resuming.
    """

    def __init__(self, output: Path, manifest: dict[str, Any], overwrite: bool = False):
        self.output = output
        self.dir = parts_dir_for(output)
        if not output.parent.is_dir():
            raise InvalidInputError(f"the output's directory {output.parent} does not exist")
        if output.is_dir():
            raise InvalidInputError(f"the output {output} is a directory; --output names a Parquet file")
        if output.exists() and not self.dir.exists() and not overwrite:
            raise InvalidInputError(f"{output} already exists; pass --overwrite to replace it")
        self.dir.mkdir(exist_ok=True)
        self._lock: IO[str] | None = open(self.dir / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise InvalidInputError(f"another rerank-batch run is writing {output}") from None
        if overwrite:
            for p in self.dir.iterdir():
                if p.name != ".lock":
                    p.unlink()
            output.unlink(missing_ok=True)
        self._check_manifest(manifest)
        _remove_temporaries(self.dir)
        for stale in output.parent.glob(f".{glob.escape(output.name)}.*.tmp"):
            stale.unlink(missing_ok=True)  # an assembly killed midway; this run holds the lock now

    def _check_manifest(self, manifest: dict[str, Any]) -> None:
        path = self.dir / MANIFEST
        if path.exists():
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError):
                old = {"manifest": "unreadable"}
            if old != manifest:
                self.close()
                raise InvalidInputError(
                    f"{self.dir} holds an unfinished run with other inputs or settings "
                    f"({_describe_difference(old, manifest)}); rerun it with the same ones to resume, "
                    "or pass --overwrite to start over")
            return
        tmp = self.dir / f".{MANIFEST}.tmp"
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        _commit(tmp, path)

    def done(self) -> set[int]:
        return done_chunks(self.dir)

    def assemble(self, num_chunks: int, rows: int, keep_parts: bool = False) -> None:
        """Stream all parts, in chunk order, into the output file; then drop the parts directory."""
        missing = [k for k in range(num_chunks) if not part_path(self.dir, k).exists()]
        if missing:
            raise RuntimeError(f"cannot assemble {self.output}: {len(missing)} chunks unfinished (first: {missing[0]})")
        tmp = self.output.with_name(f".{self.output.name}.{uuid.uuid4().hex}.tmp")
        written = 0
        try:
            with pq.ParquetWriter(tmp, OUTPUT_SCHEMA) as writer:
                pending: list[pa.Table] = []
                for k in range(num_chunks):
                    pending.append(pq.read_table(part_path(self.dir, k)).cast(OUTPUT_SCHEMA))
                    if sum(t.num_rows for t in pending) >= _OUTPUT_ROW_GROUP_ROWS or k == num_chunks - 1:
                        table = pa.concat_tables(pending)
                        writer.write_table(table, row_group_size=max(table.num_rows, 1))
                        written += table.num_rows
                        pending = []
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if written != rows:
            tmp.unlink(missing_ok=True)
            raise RuntimeError(f"the parts of {self.output} hold {written} rows, the input {rows}")
        _commit(tmp, self.output)
        if not keep_parts:
            self.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None
