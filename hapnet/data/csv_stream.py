"""Streaming CSV columns with pyarrow, block by block, for the visit loaders.

Columns whose sampled values are integers or ISO times parse natively; other strings are
dictionary-encoded a group of blocks at a time. A block that disagrees with what the sample
promised (a string in an integer column, invalid UTF-8) makes the file be read again, less
optimistically. Memory stays bounded by the block size, whatever the file's size.

Text that is not UTF-8 (UTF-16, Windows-1252, latin-1) is decoded by pyarrow with Python's codecs
(`ReadOptions.encoding`). Lines end at LF, CR or CRLF; a quoted value may not span lines.
"""

from __future__ import annotations

import codecs
import csv
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from hapnet.data.times import SECONDS_PER_DAY, parse_times
from hapnet.errors import InputError
from hapnet.utils.textio import (
    ENCODING_NAMES,
    GZIP_MAGIC,
    UTF8_BOM,
    check_readable_file,
    legacy_encoding,
    os_error_reason,
    utf16_encoding,
    utf16_name,
    warn_encoding,
)

BLOCK_SIZE = 16 << 20  # bytes of CSV per pyarrow block: bounds memory, keeps both cores busy
_SNIFF_BYTES = 1 << 20
_SCAN_BYTES = 1 << 22  # read size of the scan that finds an over-long line (for its error only)


# Sampled values that let a column be parsed natively (no strings to hash): integers without
# leading zeros (so "007" stays a string) and ISO dates or date-times.
_INTEGER = re.compile(r"-?[1-9][0-9]{0,17}|0")


_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2})?)?")
_LINE_BREAK = re.compile(r"[\r\n]")
_SPANS_LINES = "a quoted value runs over several lines (an unclosed quote?)"


class _Retry(Exception):
    """A block disagreed with what the sample promised: read the file again, less optimistically:
    in `encoding` (UTF-8 -> cp1252 -> latin-1), or, when it is None, with every column as strings."""

    def __init__(self, encoding: str | None = None):
        super().__init__(encoding or "strings")
        self.encoding = encoding


def _decode_sample(path: Path, sample: bytes, complete: bool) -> tuple[str, str, str]:
    """(pyarrow's encoding, its name for messages, text) of a file's first bytes: UTF-8, UTF-16 (a BOM
    or a NUL every other byte), else Windows-1252 or latin-1. `complete`: the sample is the whole file
    (else it may end inside a character: the incremental decoders hold that back)."""
    utf16 = utf16_encoding(sample)
    if utf16 is not None:
        name = utf16_name(sample, utf16)
        try:
            text = codecs.getincrementaldecoder(utf16)().decode(sample, final=complete)
        except UnicodeDecodeError as exc:
            raise InputError(path, f"not valid {name} text ({exc.reason})") from None
        if "\x00" in text:
            raise InputError(path, "binary data, expected a text (CSV) file")
        return utf16, name, text
    if b"\x00" in sample:
        raise InputError(path, "binary data, expected a text (CSV) file")
    try:
        return "utf8", "UTF-8", codecs.getincrementaldecoder("utf-8-sig")().decode(sample, final=complete)
    except UnicodeDecodeError:
        pass
    body = sample.removeprefix(UTF8_BOM)  # a BOM, then 8-bit bytes: the BOM is no text
    encoding = legacy_encoding(body, complete=complete)
    return encoding, ENCODING_NAMES[encoding], body.decode(encoding)


def _size(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:,.0f} MB" if num_bytes >= 2**20 else f"{num_bytes:,} bytes"


@dataclass
class CsvFile:
    """A CSV file (gzip or not) with its header and a sample of rows: ready to stream columns."""

    path: Path
    header: list[str]
    compression: str | None
    encoding: str  # pyarrow's (Python's codec name): utf8, utf-16[-le|-be], cp1252, latin-1
    sample_rows: list[list[str]]
    encoding_name: str = "UTF-8"  # what messages call it

    @classmethod
    def open(cls, path: Path) -> CsvFile:
        info = check_readable_file(path)
        if not stat.S_ISREG(info.st_mode):  # a pipe would be empty by the second read
            raise InputError(path, "not a regular file (a pipe or a device?): the file is read twice")
        try:
            with open(path, "rb") as handle:
                magic = handle.read(2)
        except OSError as exc:
            raise InputError(path, os_error_reason(exc)) from None
        compression = "gzip" if magic == GZIP_MAGIC else None
        if compression is None and path.suffix.lower() == ".gz":
            raise InputError(path, "has a .gz suffix but is not gzip-compressed")
        try:
            with pa.input_stream(str(path), compression=compression) as stream:
                sample = stream.read(_SNIFF_BYTES)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(path, f"corrupt or truncated gzip data ({exc})") from None
        complete = len(sample) < _SNIFF_BYTES
        encoding, encoding_name, text = _decode_sample(path, sample, complete)
        if not text.strip("\ufeff \t\r\n"):
            raise InputError(path, "empty file")
        lines = text.lstrip("\ufeff").splitlines()
        if not complete:
            if len(lines) < 2:
                reason = f"no line break in the first {_size(_SNIFF_BYTES)}: not a CSV file?"
                raise InputError(path, reason, 1)
            lines = lines[:-1]  # the last line may be cut
        # a long free-text cell (pyarrow reads up to BLOCK_SIZE a line) must not stop the sample
        csv.field_size_limit(max(csv.field_size_limit(), _SNIFF_BYTES))
        try:
            rows = list(csv.reader(lines))
        except csv.Error as exc:
            raise InputError(path, f"unreadable CSV ({exc})") from None
        header = [h.strip() for h in rows[0]] if rows else []
        if not any(header):
            raise InputError(path, "no header line (the first line is empty)", 1)
        return cls(path, header, compression, encoding, rows[1:], encoding_name)

    def find(self, names: Sequence[str]) -> int | None:
        """Index of the first column whose name (case-insensitive) is in `names`, in `names` order."""
        lowered = [h.lower() for h in self.header]
        for name in names:
            if name.lower() in lowered:
                return lowered.index(name.lower())
        return None

    def require(self, role: str, names: Sequence[str], hint: str) -> int:
        found = self.find(names)
        if found is None:
            raise InputError(
                self.path,
                f"no {role} column: found columns {', '.join(self.header)}; expected "
                f"{' or '.join(names)}{hint}",
                1,
            )
        return found

    def sniff_type(self, column: int, *, time: bool = False) -> pa.DataType:
        """int64 when every sampled value is an integer; timestamp for ISO times; else string."""
        values = [row[column].strip() for row in self.sample_rows if len(row) > column]
        filled = [v for v in values if v]
        if not filled:
            return pa.string()
        if len(filled) == len(values) and all(_INTEGER.fullmatch(v) for v in filled):
            return pa.int64()
        if time and all(_ISO_TIME.fullmatch(v) for v in filled):
            return pa.timestamp("s")
        return pa.string()

    def batches(self, wanted: dict[str, int], types: dict[str, pa.DataType]) -> Iterator[dict[str, pa.Array]]:
        """Stream the wanted columns (role -> column index), block by block."""
        names = [f"c{i}" for i in range(len(self.header))]
        read_options = pacsv.ReadOptions(
            column_names=names, skip_rows=1, block_size=BLOCK_SIZE, encoding=self.encoding, use_threads=True
        )
        column_types = {names[i]: types.get(role, pa.string()) for role, i in wanted.items()}
        typed = any(t != pa.string() for t in column_types.values())
        # The last column is read too: an unclosed quote there swallows the rest of the file silently.
        last = names[-1]
        column_types.setdefault(last, pa.string())
        convert_options = pacsv.ConvertOptions(
            include_columns=list(column_types),
            column_types=column_types,
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )
        parse_options = pacsv.ParseOptions(newlines_in_values=False)
        rows, last_value = 0, None
        try:
            stream = pa.input_stream(str(self.path), compression=self.compression)
            reader = pacsv.open_csv(stream, read_options, parse_options, convert_options)
            for batch in reader:
                if batch.num_rows:
                    last_value = (rows + batch.num_rows - 1, batch.column(last)[-1].as_py())
                rows += batch.num_rows
                yield {role: batch.column(names[i]) for role, i in wanted.items()}
        except UnicodeDecodeError as exc:  # pyarrow decodes other encodings with Python's codecs
            if self.encoding == "cp1252":  # a byte cp1252 leaves undefined
                raise _Retry("latin-1") from None
            raise InputError(self.path, f"not valid {self.encoding_name} text ({exc.reason})") from None
        except pa.ArrowInvalid as exc:
            message = str(exc).splitlines()[0]
            if "invalid UTF8" in message and self.encoding == "utf8":
                raise _Retry("cp1252") from None
            if typed and "conversion error" in message:
                raise _Retry() from None
            if "straddl" in message:  # no line break within a whole block
                raise self._long_line_error() from None
            if "out of sync" in message:  # pyarrow's chunker met a quoted line break
                raise InputError(self.path, f"{_SPANS_LINES} at or after this line", rows + 2) from None
            raise InputError(self.path, f"unreadable CSV ({message})") from None
        except (OSError, pa.ArrowException) as exc:
            raise InputError(self.path, f"corrupt or truncated data ({exc})") from None
        # An unclosed quote in the last block runs to the end of the file: its value holds line breaks.
        if last_value is not None and isinstance(last_value[1], str) and _LINE_BREAK.search(last_value[1]):
            raise InputError(self.path, _SPANS_LINES, last_value[0] + 2)

    def _long_line_error(self) -> InputError:
        """pyarrow found no line break within a block: name the first line longer than a block."""
        try:
            found = self._first_long_line(BLOCK_SIZE)
        except (OSError, pa.ArrowException, UnicodeError):  # the line number is a bonus
            found = None
        reason = (
            f"is longer than the reader's block of {_size(BLOCK_SIZE)}: the file is probably malformed "
            "(line breaks missing?)"
        )
        if found is None:
            return InputError(self.path, f"a line {reason}")
        line, length = found
        return InputError(self.path, f"this line of {_size(length)} {reason}", line)

    def _first_long_line(self, limit: int) -> tuple[int, int] | None:
        """(line number, length) of the first line longer than `limit` bytes of the text pyarrow reads
        (UTF-8), lines ending at LF, CR or CRLF; None if there is none. Reads the file once more."""
        stream = pa.input_stream(str(self.path), compression=self.compression)
        if self.encoding != "utf8":
            stream = pa.transcoding_input_stream(stream, self.encoding, "utf8")
        line, carry, after_cr = 1, 0, False
        with stream:
            while chunk := stream.read(_SCAN_BYTES):
                data = np.frombuffer(chunk, dtype=np.uint8)
                cr, lf = data == 13, data == 10
                ends = cr | lf
                ends[:-1] &= ~(cr[:-1] & lf[1:])  # CRLF: one line end, at the LF
                if after_cr and lf[0]:  # the LF of a CRLF whose CR ended the last chunk: no line
                    ends[0] = False
                    carry -= 1
                at = np.flatnonzero(ends)
                after_cr = bool(cr[-1])
                if len(at) == 0:
                    carry += len(data)
                    continue
                lengths = np.diff(at, prepend=-1) - 1
                lengths[0] += carry
                lengths -= (lf & np.r_[False, cr[:-1]])[at]  # the CR of a CRLF is no part of the line
                longer = np.flatnonzero(lengths > limit)
                if len(longer):
                    return line + int(longer[0]), int(lengths[longer[0]])
                line += len(at)
                carry = len(data) - 1 - int(at[-1])
        return (line, carry) if carry > limit else None


class _Column:
    """One column, fed block by block. Integer and timestamp columns are kept as numbers. Strings
    are dictionary-encoded a group of blocks at a time (one pyarrow hash table per group, so the
    raw strings held at once stay bounded) and the group dictionaries unified at the end."""

    GROUP_ROWS = 4_000_000

    def __init__(self) -> None:
        # the distinct (stripped) text values of every row of the file, in order of appearance,
        # where a shard keeps only some rows (`stream_columns(keep=...)`): how times are read is
        # decided on the file's values, as one process reading it all decides
        self.file_values: dict[str, None] | None = None
        self._parts: list = []  # numpy arrays (int, time) or (int32 indices, dictionary) per group
        self._pending: list[pa.Array] = []
        self._pending_rows = 0
        self._rows = 0
        self._kind = ""

    def note_file_values(self, values: pa.Array) -> None:
        """Record a block's distinct text values before a shard filters its rows."""
        if not pa.types.is_string(values.type):
            return
        seen = {} if self.file_values is None else self.file_values
        for value in pc.unique(pc.utf8_trim_whitespace(values)).to_pylist():
            seen.setdefault(value, None)
        self.file_values = seen

    def add(self, values: pa.Array) -> None:
        kind = "string"
        if pa.types.is_integer(values.type):
            if values.null_count:  # an empty id: its string reading decides what it means
                raise _Retry()
            kind = "int"
            self._parts.append(values.to_numpy())
        elif pa.types.is_timestamp(values.type):
            kind = "time"
            seconds = pc.cast(values, pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64)
            self._parts.append(np.where(values.is_null().to_numpy(zero_copy_only=False), np.nan, seconds))
        else:
            self._pending.append(values)
            self._pending_rows += len(values)
            if self._pending_rows >= self.GROUP_ROWS:
                self._encode_pending()
        if self._kind and kind != self._kind:  # pragma: no cover - types are fixed per read
            raise AssertionError("mixed column types")
        self._kind = kind
        self._rows += len(values)

    def _encode_pending(self) -> None:
        if self._pending_rows:  # a rank's shard may keep no row of a block
            encoded = pa.chunked_array(self._pending, pa.string()).dictionary_encode()
            indices = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in encoded.chunks])
            self._parts.append((indices, encoded.chunk(0).dictionary))
        self._pending, self._pending_rows = [], 0

    def __len__(self) -> int:
        return self._rows

    def _take_parts(self) -> list:
        """The blocks, handed over once: a column is read once, and a 30-million-row file should
        not keep its blocks alive beside the arrays made from them."""
        self._encode_pending()
        parts, self._parts = self._parts, []
        return parts

    def factorize(self) -> tuple[np.ndarray, np.ndarray]:
        """(distinct values as str, first-appearance order; int64 id per row), whitespace stripped.
        Consumes the column."""
        if self._kind == "time":  # pragma: no cover - times are read with times()
            raise AssertionError("times are not factorized")
        parts = self._take_parts()
        if self._kind == "int":
            ids, distinct = pd.factorize(np.concatenate(parts))
            return distinct.astype(str), ids.astype(np.int64, copy=False)
        if not parts:
            return np.zeros(0, dtype=str), np.zeros(0, dtype=np.int64)
        dictionaries = [dictionary for _, dictionary in parts]
        offsets = np.cumsum([0] + [len(d) for d in dictionaries[:-1]])
        ids = np.empty(sum(len(indices) for indices, _ in parts), dtype=np.int64)
        start = 0
        for (indices, _), offset in zip(parts, offsets, strict=True):
            np.add(indices, offset, out=ids[start : start + len(indices)])
            start += len(indices)
        del parts
        values = pc.utf8_trim_whitespace(pa.concat_arrays(dictionaries))
        distinct = pc.unique(values)
        remap = pc.index_in(values, value_set=distinct).to_numpy(zero_copy_only=False).astype(np.int64)
        return np.asarray(distinct.to_numpy(zero_copy_only=False), dtype=str), remap[ids]

    def integers(self) -> np.ndarray:
        """The values of an integer column (row numbers), in row order. Consumes the column."""
        if self._kind not in ("int", ""):  # pragma: no cover - only row numbers are read so
            raise AssertionError("not an integer column")
        parts = self._take_parts()
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def times(self, source: Path | str, first_line: int) -> np.ndarray:
        """Row times as float epoch seconds (numbers count days); NaN = missing. Consumes the column."""
        if self._kind == "time":
            return np.concatenate(self._take_parts())
        if self._kind == "int":
            return np.concatenate(self._take_parts()).astype(np.float64) * SECONDS_PER_DAY
        distinct, ids = self.factorize()
        if self.file_values is None:
            return parse_times(distinct, ids, source, first_line)[ids]
        # a shard: parse the file's values (formats guessed as for the whole file), take its own
        universe = np.array(list(self.file_values), dtype=object)
        parsed = parse_times(universe, np.arange(len(universe)), source, first_line)
        return parsed[pd.Index(universe).get_indexer(distinct)][ids]


Column = _Column  # its public name: the parquet reader (hapnet.data.parquet_stream) fills it too


def stream_columns(
    csv_file: CsvFile,
    wanted: dict[str, int],
    typed: Sequence[str] = (),
    transform: Callable[[dict[str, pa.Array]], dict[str, pa.Array]] | None = None,
    keep: Callable[[dict[str, pa.Array]], np.ndarray] | None = None,
    file_values: Sequence[str] = (),
) -> dict[str, _Column]:
    """Read the wanted columns (role -> index) of a whole file; roles in `typed` may parse natively.

    With `keep` (a block's columns -> which rows to keep: a rank's patients), only those rows are
    kept, and role "row" holds each kept row's number in the file (0 = the first data row). Every
    decision about a column's reading stays the file's: an empty value in an integer column
    re-reads it as text for every rank, and the roles in `file_values` also record the file's
    distinct text values (`_Column.file_values`: times are parsed as the whole file's are)."""
    types = {role: csv_file.sniff_type(wanted[role], time=role == "time") for role in typed if role in wanted}
    for _attempt in range(5):  # at most: strings instead of types, then UTF-8 -> cp1252 -> latin-1
        columns: dict[str, _Column] = {}
        scanned = 0
        try:
            for batch in csv_file.batches(wanted, types):
                block = transform(batch) if transform else batch
                if keep is not None:
                    if any(pa.types.is_integer(v.type) and v.null_count for v in block.values()):
                        raise _Retry()  # as `_Column.add` would for the whole file
                    for role in file_values:
                        if role in block:
                            columns.setdefault(role, _Column()).note_file_values(block[role])
                    mine = keep(block)
                    block = {role: values.filter(pa.array(mine)) for role, values in block.items()}
                    block["row"] = pa.array(np.flatnonzero(mine) + scanned, pa.int64())
                scanned += len(next(iter(batch.values())))
                for role, values in block.items():
                    columns.setdefault(role, _Column()).add(values)
        except _Retry as retry:
            if retry.encoding:
                csv_file = replace(
                    csv_file, encoding=retry.encoding, encoding_name=ENCODING_NAMES[retry.encoding]
                )
            else:
                types = {}
            continue
        if scanned == 0:
            raise InputError(csv_file.path, "header only, no data rows")
        if csv_file.encoding != "utf8":
            warn_encoding(csv_file.path, csv_file.encoding_name, stacklevel=3)
        return columns
    raise AssertionError("unreachable")  # pragma: no cover


def unify_ids(*parts: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Factorized columns of different files -> one shared id space (MIMIC hadm ids)."""
    names = np.concatenate([distinct for distinct, _ in parts])
    shared, uniques = pd.factorize(names)
    result, start = [], 0
    for distinct, ids in parts:
        result.append(shared[start : start + len(distinct)][ids].astype(np.int64))
        start += len(distinct)
    return np.asarray(uniques, dtype=str), result
