"""Parquet tables read a few columns at a time, block by block, with pyarrow (the OMOP loader).

A table is one `.parquet` file or a folder of part files (as Spark and most ETLs write them). Only
the wanted columns are read, a block of rows at a time, into the same column accumulators as CSV
files (`hapnet.data.csv_stream.Column`): dates and times as times, everything else as strings, so
that ids read the same from CSV and parquet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hapnet.data.csv_stream import Column
from hapnet.errors import InputError, error_summary
from hapnet.ontology.meds_codes import parquet_schema
from hapnet.utils.textio import os_error_reason

BATCH_ROWS = 1 << 20  # rows per block: bounds memory whatever the table's size


def parquet_files(folder: Path) -> list[Path]:
    """The `.parquet` files under a folder (any depth), sorted."""
    try:
        return sorted(p for p in folder.rglob("*") if p.name.lower().endswith(".parquet") and p.is_file())
    except OSError as exc:
        raise InputError(folder, os_error_reason(exc)) from None


def _is_temporal(kind: pa.DataType) -> bool:
    return pa.types.is_timestamp(kind) or pa.types.is_date(kind)


@dataclass
class ParquetTable:
    """A parquet table (a file or a folder of parts) and its column names (of its first part)."""

    path: Path
    files: list[Path]
    schemas: list[pa.Schema]
    first_line = None  # rows have no line numbers

    @classmethod
    def open(cls, path: Path) -> ParquetTable:
        files = parquet_files(path) if path.is_dir() else [path]
        if not files:
            raise InputError(path, "no .parquet files in this folder")
        return cls(path, files, [parquet_schema(f) for f in files])

    @property
    def header(self) -> list[str]:
        return list(self.schemas[0].names)

    def find(self, names: Sequence[str]) -> str | None:
        """The first column whose name (case-insensitive) is in `names`, in `names` order."""
        lowered = {h.lower(): h for h in reversed(self.header)}
        return next((lowered[n.lower()] for n in names if n.lower() in lowered), None)

    def require(self, role: str, names: Sequence[str], hint: str) -> str:
        found = self.find(names)
        if found is None:
            found_columns = ", ".join(self.header)
            reason = f"no {role} column: found columns {found_columns}; expected {' or '.join(names)}{hint}"
            raise InputError(self.path, reason)
        return found

    def read(self, wanted: dict[str, str]) -> dict[str, Column]:
        """The wanted columns (role -> column name) of every part: times (dates and timestamps, in
        every part) as times, anything else as text."""
        per_file: list[dict[str, str]] = []
        for file, schema in zip(self.files, self.schemas, strict=True):
            lowered = {n.lower(): n for n in reversed(schema.names)}
            names = {}
            for role, name in wanted.items():
                if name.lower() not in lowered:
                    raise InputError(file, f"no column {name} (found {', '.join(schema.names)})")
                names[role] = lowered[name.lower()]
            per_file.append(names)
        temporal = {
            role: all(
                _is_temporal(s.field(n[role]).type) for s, n in zip(self.schemas, per_file, strict=True)
            )
            for role in wanted
        }
        columns = {role: Column() for role in wanted}
        for file, names in zip(self.files, per_file, strict=True):
            try:
                reader = pq.ParquetFile(file)
                for batch in reader.iter_batches(
                    batch_size=BATCH_ROWS, columns=list(dict.fromkeys(names.values()))
                ):
                    for role, name in names.items():
                        columns[role].add(_as_column_values(batch.column(name), temporal[role]))
            except OSError as exc:
                reason = os_error_reason(exc) if exc.errno else error_summary(exc)
                raise InputError(file, f"unreadable parquet data ({reason})") from None
            except pa.ArrowException as exc:
                raise InputError(file, f"unreadable parquet data ({error_summary(exc)})") from None
        if not columns or len(next(iter(columns.values()))) == 0:
            raise InputError(self.path, "no data rows")
        return columns


def _as_column_values(values: pa.Array, temporal: bool) -> pa.Array:
    """A block of one column as Column takes it: timestamps in seconds, or text without nulls."""
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if temporal:
        return pc.cast(values, pa.timestamp("s"), safe=False)  # sub-seconds dropped: times order visits
    text = values if pa.types.is_string(values.type) else pc.cast(values, pa.string())
    return pc.fill_null(text, "")
