"""Embedding tables on disk: the formats `hapnet embed -o` writes and `hapnet neighbors` reads.

The format follows the suffix of the path:
- `.parquet`, `.csv`: columns `code`, `description`, `level`, `is_leaf`, then one float32 column
  per dimension, `e0` .. `e{D-1}` (loads as is in pandas, polars, R, Spark, a spreadsheet);
- `.npy`: the float32 matrix [N, D]; the codes, one per line, in `<stem>.codes.txt` beside it;
- `.txt`, `.w2v`: word2vec text format, `N D` then `code v0 v1 ...` per line (gensim's
  `KeyedVectors.load_word2vec_format`); whitespace inside a code becomes `_`;
- `.tsv`: TensorBoard projector, the vectors (tab-separated, no header) and
  `<stem>.metadata.tsv` with a header and the columns code, description, level.

Reading refuses, in one line (`InputError`), a file that is not what its suffix says, a code with
two vectors and a vector that is not finite; a `.npy` file is never unpickled.

Every file is written under a temporary name and renamed into place when complete; a companion
file (`.codes.txt`, `.metadata.tsv`) is renamed first, so the main file appears last. Text formats
write 9 significant digits: a float32 reads back exactly.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hapnet.errors import HapnetError, InputError, error_summary
from hapnet.utils.paths import check_output_location
from hapnet.utils.textio import atomic_path, read_text

FORMATS = {
    ".parquet": "table: code, description, level, is_leaf, e0..e{D-1}",
    ".csv": "table: code, description, level, is_leaf, e0..e{D-1}",
    ".npy": "float32 matrix + <stem>.codes.txt",
    ".txt": "word2vec text format",
    ".w2v": "word2vec text format",
    ".tsv": "TensorBoard projector: vectors + <stem>.metadata.tsv",
}
META_COLUMNS = ["code", "description", "level", "is_leaf"]
_VECTOR_COLUMN = re.compile(r"^e(\d+)$")
_FLOAT = "%.9g"  # enough digits for a float32 to read back bit for bit


@dataclass
class EmbeddingTable:
    """One vector per code. `levels` and `is_leaf` are None when the format does not keep them."""

    codes: list[str]
    vectors: np.ndarray  # float32 [N, D]
    descriptions: list[str] | None = None
    levels: np.ndarray | None = None  # int64 [N]
    is_leaf: np.ndarray | None = None  # bool [N]

    def __post_init__(self) -> None:
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.codes):
            raise HapnetError(f"{len(self.codes)} codes but vectors of shape {self.vectors.shape}")
        if self.descriptions is None:
            self.descriptions = [""] * len(self.codes)

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def frame(self) -> pd.DataFrame:
        """code, description, level, is_leaf, e0..e{D-1} (float32), one row per code."""
        meta = pd.DataFrame(
            {
                "code": self.codes,
                "description": self.descriptions,
                "level": _or_missing(self.levels, "Int64", len(self)),
                "is_leaf": _or_missing(self.is_leaf, "boolean", len(self)),
            }
        )
        vectors = pd.DataFrame(self.vectors, columns=[f"e{i}" for i in range(self.dim)])
        return pd.concat([meta, vectors], axis=1)

    def index(self) -> dict[str, int]:
        return {code: i for i, code in enumerate(self.codes)}


def _or_missing(
    values: np.ndarray | None, dtype: str, size: int
) -> np.ndarray | pd.api.extensions.ExtensionArray:
    """The column, or an all-missing one of a nullable dtype (formats that do not keep it)."""
    return values if values is not None else pd.array([None] * size, dtype=dtype)


# ----------------------------------------------------------------------------- paths
def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        known = ", ".join(FORMATS)
        raise HapnetError(f"{path}: unknown embedding format {suffix or '(no suffix)'!r}; use one of {known}")
    return suffix


def companion(path: str | Path) -> Path | None:
    """The second file a format writes beside `path` (None for single-file formats)."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix == ".npy":
        return path.with_suffix(".codes.txt")
    if suffix == ".tsv":
        return path.with_suffix(".metadata.tsv")
    return None


def output_paths(path: str | Path) -> list[Path]:
    """Every file writing `path` creates (the format is checked)."""
    path = Path(path)
    side = companion(path)
    return [path] if side is None else [path, side]


def check_writable(path: str | Path, force: bool = False) -> None:
    """Fail early (before any long computation) on an unknown format, a file that would be
    overwritten, a folder in the way, or a place that cannot be written (`check_output_location`)."""
    for target in output_paths(path):
        check_output_location(target, force=force, kind="file")


# ----------------------------------------------------------------------------- writing
def write_embeddings(table: EmbeddingTable, path: str | Path, *, force: bool = False) -> list[Path]:
    """Write `table` in the format named by the suffix of `path`; returns the files written."""
    path = Path(path)
    suffix = _suffix(path)
    check_writable(path, force)
    side = companion(path)
    with atomic_path(path, overwrite=force) as tmp:
        if suffix == ".parquet":
            table.frame().to_parquet(tmp, index=False, engine="pyarrow")
        elif suffix == ".csv":
            with open(tmp, "w", encoding="utf-8", newline="") as handle:
                handle.write(",".join(META_COLUMNS + [f"e{i}" for i in range(table.dim)]) + "\n")
                _write_rows(handle, table.vectors, ",", _csv_prefixes(table))
        elif suffix == ".npy":
            with open(tmp, "wb") as handle:
                np.save(handle, table.vectors, allow_pickle=False)
            with atomic_path(side, overwrite=force) as side_tmp:
                side_tmp.write_text("".join(f"{code}\n" for code in table.codes), encoding="utf-8")
        elif suffix in (".txt", ".w2v"):
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(f"{len(table)} {table.dim}\n")
                _write_rows(handle, table.vectors, " ", word2vec_words(table.codes))
        elif suffix == ".tsv":
            with open(tmp, "w", encoding="utf-8") as handle:
                _write_rows(handle, table.vectors, "\t")
            levels = table.levels if table.levels is not None else [""] * len(table)
            with atomic_path(side, overwrite=force) as side_tmp:
                with open(side_tmp, "w", encoding="utf-8") as handle:
                    handle.write("code\tdescription\tlevel\n")
                    for code, description, level in zip(table.codes, table.descriptions, levels, strict=True):
                        handle.write(f"{_cell(code)}\t{_cell(description)}\t{level}\n")
    return output_paths(path)


def word2vec_words(codes: list[str]) -> list[str]:
    """Codes as word2vec tokens: whitespace inside a code becomes `_` (the format splits on spaces)."""
    words = [re.sub(r"\s+", "_", code.strip()) for code in codes]
    clash = _first_duplicate(words)
    if clash is not None:
        raise HapnetError(f"two codes become the same word2vec token {clash!r} once spaces are replaced by _")
    return words


def _first_duplicate(items: list[str]) -> str | None:
    """The first item seen twice, or None."""
    if len(set(items)) == len(items):
        return None
    seen: set[str] = set()
    return next(item for item in items if item in seen or seen.add(item))  # type: ignore[func-returns-value]


def _cell(text: str) -> str:
    """One TSV cell: no tab or line break inside."""
    return re.sub(r"[\t\r\n]+", " ", str(text))


def _csv_prefixes(table: EmbeddingTable) -> list[str]:
    """The code, description, level, is_leaf cells of each CSV row (quoted where CSV needs it)."""

    def quote(text: str) -> str:
        return f'"{text.replace(chr(34), chr(34) * 2)}"' if re.search(r'[",\r\n]', text) else text

    levels = table.levels if table.levels is not None else [""] * len(table)
    leaves = table.is_leaf if table.is_leaf is not None else [""] * len(table)
    return [
        f"{quote(code)},{quote(description)},{level},{leaf}"
        for code, description, level, leaf in zip(
            table.codes, table.descriptions, levels, leaves, strict=True
        )
    ]


def _write_rows(handle, vectors: np.ndarray, sep: str, words: list[str] | None = None) -> None:  # noqa: ANN001
    """Rows of `vectors` as text, 9 significant digits, each after its word (or row prefix) if given."""
    fmt = sep.join([_FLOAT] * vectors.shape[1])
    chunk = 4096
    for start in range(0, len(vectors), chunk):
        block = vectors[start : start + chunk].astype(np.float64)
        if words is None:
            lines = [fmt % tuple(row) for row in block]
        else:
            lines = [
                f"{word}{sep}{fmt % tuple(row)}"
                for word, row in zip(words[start : start + chunk], block, strict=True)
            ]
        handle.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- reading
NOT_EMBEDDINGS = "not a hapnet embeddings file"
NPY_MAGIC = b"\x93NUMPY"
# What the readers (numpy, pandas, pyarrow) raise on a file that is not what its suffix says:
# ValueError covers pandas' parser errors, pyarrow's ArrowInvalid and undecodable text.
_BAD_FILE_ERRORS = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    EOFError,
    NotImplementedError,
    zipfile.BadZipFile,
)


def read_embeddings(path: str | Path) -> EmbeddingTable:
    """Read any format `write_embeddings` writes (by suffix); bad files raise `InputError`
    ("PATH: not a hapnet embeddings file (why)"). A `.npy` file is never unpickled."""
    path = Path(path)
    suffix = _suffix(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, expected an embeddings file")
    try:
        if suffix in (".parquet", ".csv"):
            table = _read_table(path, suffix)
        elif suffix == ".npy":
            table = _read_npy(path)
        elif suffix in (".txt", ".w2v"):
            table = _read_word2vec(path)
        else:
            table = _read_projector(path)
    except HapnetError:
        raise
    except OSError as exc:
        if exc.errno is None:  # a reader's own I/O error on a malformed file (pyarrow, gzip)
            raise InputError(path, f"{NOT_EMBEDDINGS} ({error_summary(exc)})") from None
        where = exc.filename if exc.filename is not None else path
        raise InputError(where, os.strerror(exc.errno).lower()) from None
    except _BAD_FILE_ERRORS as exc:
        raise InputError(path, f"{NOT_EMBEDDINGS} ({error_summary(exc)})") from None
    return _checked(path, table)


def _checked(path: Path, table: EmbeddingTable) -> EmbeddingTable:
    """No answer from a table that would give wrong ones: every code once, every value finite."""
    twice = _first_duplicate(table.codes)
    if twice is not None:
        raise InputError(path, f"code {twice!r} has two vectors")
    finite = np.isfinite(table.vectors).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise InputError(path, f"the vector of code {table.codes[row]!r} holds NaN or infinity")
    return table


def read_matrix(path: str | Path) -> np.ndarray:
    """The float32 matrix [N, D] of a `.npy` file; anything else raises `InputError`.

    Never unpickled (allow_pickle=False); memory-mapped first, so a header that promises more
    than the file holds is refused before anything is allocated.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(len(NPY_MAGIC))
    if head != NPY_MAGIC:
        if not head:
            reason = "an empty file"
        elif head.startswith(b"\x80"):  # pickle protocol 2 and later
            reason = "a Python pickle, never loaded"
        elif head.startswith(b"PK"):
            reason = "a zip archive (.npz?), expected a .npy matrix"
        else:
            reason = "no .npy header"
        raise InputError(path, f"{NOT_EMBEDDINGS} ({reason})")
    try:
        loaded = np.load(path, mmap_mode="r", allow_pickle=False)
    except _BAD_FILE_ERRORS as exc:
        reason = error_summary(exc)
        if "mmap length" in reason:  # numpy's words for a header that promises more than the file has
            reason = "truncated: its header promises more values than the file holds"
        raise InputError(path, f"{NOT_EMBEDDINGS} ({reason})") from None
    if loaded.ndim != 2 or loaded.dtype.kind not in "fiu":
        raise InputError(
            path,
            f"{NOT_EMBEDDINGS} ({loaded.dtype} values of shape {loaded.shape}, expected a matrix of numbers)",
        )
    return np.array(loaded, dtype=np.float32)


def _read_table(path: Path, suffix: str) -> EmbeddingTable:
    if suffix == ".parquet":
        frame = pd.read_parquet(path, engine="pyarrow")
    else:
        frame = pd.read_csv(path, dtype={"code": str, "description": str}, keep_default_na=False)
    columns = sorted(
        (int(m.group(1)), name) for name in frame.columns if (m := _VECTOR_COLUMN.match(str(name)))
    )
    if "code" not in frame.columns:
        raise InputError(path, "no `code` column")
    if not columns or [i for i, _ in columns] != list(range(len(columns))):
        raise InputError(path, "expected vector columns e0, e1, ... e{D-1}")
    try:
        vectors = frame[[name for _, name in columns]].to_numpy(dtype=np.float32)
    except (ValueError, TypeError):
        raise InputError(path, "vector columns e0..e{D-1} must hold numbers only") from None
    levels, is_leaf = _complete(frame, "level"), _complete(frame, "is_leaf")
    if levels is not None:
        levels = pd.to_numeric(levels).to_numpy(dtype=np.int64)
    if is_leaf is not None:
        is_leaf = is_leaf.astype(str).str.lower().isin(["true", "1"]).to_numpy()
    descriptions = frame["description"].astype(str).tolist() if "description" in frame.columns else None
    return EmbeddingTable(frame["code"].astype(str).tolist(), vectors, descriptions, levels, is_leaf)


def _complete(frame: pd.DataFrame, column: str) -> pd.Series | None:
    """The column when every row has a value (formats written without levels leave it blank)."""
    if column not in frame.columns:
        return None
    values = frame[column]
    return None if values.isna().any() or (values.astype(str) == "").any() else values


def _read_npy(path: Path) -> EmbeddingTable:
    vectors = read_matrix(path)
    codes_path = path.with_suffix(".codes.txt")
    if not codes_path.exists():
        raise InputError(codes_path, "file not found (the codes of the .npy rows, one per line)")
    codes = read_text(codes_path).splitlines()
    if len(codes) != len(vectors):
        raise InputError(codes_path, f"{len(codes)} codes for a matrix of shape {vectors.shape}")
    return EmbeddingTable(codes, vectors)


def _read_word2vec(path: Path) -> EmbeddingTable:
    lines = read_text(path).splitlines()
    header = lines[0].split() if lines else []
    if len(header) != 2 or not all(x.isdigit() for x in header):
        raise InputError(path, "first line must be `N D` (word2vec text format)", 1)
    count, dim = int(header[0]), int(header[1])
    rows = [line for line in lines[1:] if line.strip()]
    if len(rows) != count:
        raise InputError(path, f"header says {count} vectors, found {len(rows)}")
    codes, vectors = [], []  # rows are checked before use: the header's D allocates nothing
    for number, line in enumerate(rows, start=2):
        fields = line.rstrip().split(" ")
        if len(fields) != dim + 1:
            raise InputError(path, f"expected a word and {dim} numbers, found {len(fields)} fields", number)
        codes.append(fields[0])
        try:
            vectors.append(np.asarray(fields[1:], dtype=np.float32))
        except ValueError:
            raise InputError(path, "not a number in the vector", number) from None
    return EmbeddingTable(codes, np.stack(vectors) if vectors else np.empty((0, dim), dtype=np.float32))


def _read_projector(path: Path) -> EmbeddingTable:
    try:
        vectors = np.loadtxt(path, delimiter="\t", dtype=np.float32, ndmin=2)
    except ValueError as exc:
        raise InputError(path, f"not a tab-separated matrix of numbers ({error_summary(exc)})") from None
    meta_path = path.with_suffix(".metadata.tsv")
    if not meta_path.exists():
        raise InputError(meta_path, "file not found (the projector metadata: code, description, level)")
    meta = pd.read_csv(meta_path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    if "code" not in meta.columns or len(meta) != len(vectors):
        raise InputError(meta_path, f"expected a `code` column and {len(vectors)} rows, found {len(meta)}")
    levels = None
    if "level" in meta.columns and (meta["level"] != "").all():
        levels = meta["level"].astype(np.int64).to_numpy()
    descriptions = meta["description"].tolist() if "description" in meta.columns else None
    return EmbeddingTable(meta["code"].tolist(), vectors, descriptions, levels)
