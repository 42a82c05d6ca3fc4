"""Reading text files the way users have them (gzip or not, BOM, CRLF, latin-1) and writing safely."""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

from hapnet.errors import InputError

GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes, decompressed when it is gzip; a clear error for a broken or fake `.gz`."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a file")
    raw = path.read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(path, f"corrupt or truncated gzip data ({exc})") from None
    if path.suffix == ".gz":
        raise InputError(path, "has a .gz suffix but is not gzip-compressed")
    return raw


# Control bytes that never occur in a text file (tab, LF, CR, FF and ESC excepted).
_BINARY_BYTES = bytes(b for b in range(32) if b not in (9, 10, 12, 13, 27)) + b"\x7f"


def looks_binary(raw: bytes) -> bool:
    """A NUL byte, or more than 1% control bytes (a stray one or two allowed), in the first 64 KiB."""
    head = raw[:65536]
    if b"\x00" in head:
        return True
    controls = len(head) - len(head.translate(None, _BINARY_BYTES))
    return controls > 2 + len(head) // 100


def decode_text(raw: bytes, source: str | Path) -> str:
    """UTF-8 (BOM stripped), else latin-1 with a warning; binary data is an error."""
    if looks_binary(raw):
        raise InputError(source, "binary data, expected a text (CSV) file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        warnings.warn(f"{source}: not valid UTF-8, read as latin-1", stacklevel=2)
        text = raw.decode("latin-1")
    return text


def read_text(path: str | Path) -> str:
    """The whole text of a (possibly gzipped) file, decoded as `decode_text` does."""
    return decode_text(read_bytes(path), path)


@contextlib.contextmanager
def atomic_path(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it into place only if the block succeeds.

    A killed or failed run never leaves a file (or folder) that looks finished.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise InputError(target, "already exists (use --force to overwrite)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    os.unlink(tmp_name)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if target.is_dir() and overwrite:
            _remove(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
