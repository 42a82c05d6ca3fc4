"""Reading text files the way users have them (gzip or not, BOM, CRLF, UTF-16, Windows-1252, latin-1)
and writing safely."""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import re
import shutil
import stat
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hapnet.errors import InputError, error_summary

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
# What a warning calls the 8-bit encodings a file that is not UTF-8 is read in.
ENCODING_NAMES = {"cp1252": "Windows-1252 (cp1252)", "latin-1": "latin-1"}


def os_error_reason(exc: OSError) -> str:
    """Why the system refused a path, in a few words."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a folder, expected a file"
    if isinstance(exc, NotADirectoryError):
        return "a part of the path is a file, not a folder"
    return f"cannot be read ({exc.strerror or exc})"


def entry_exists(path: str | Path) -> bool:
    """False only when nothing is at `path`: a broken link, a link loop or an entry the system will
    not show is there (`stat_input` or `check_readable_file` then says what is wrong with it)."""
    try:
        Path(path).lstat()
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        pass
    return True


def stat_input(path: str | Path) -> os.stat_result:
    """`os.stat` of an input path; InputError with the real reason when there is nothing usable there."""
    path = Path(path)
    try:
        return path.stat()
    except FileNotFoundError:
        broken = path.is_symlink()  # the link is there, its target is not
        raise InputError(path, "broken symbolic link" if broken else "file not found") from None
    except OSError as exc:
        raise InputError(path, os_error_reason(exc)) from None


def check_readable_file(path: str | Path) -> os.stat_result:
    """An input file that can be opened: not missing, a folder, a link loop or forbidden (one line each)."""
    path = Path(path)
    info = stat_input(path)
    if stat.S_ISDIR(info.st_mode):
        raise InputError(path, "is a folder, expected a file")
    if stat.S_ISREG(info.st_mode):  # opening a pipe would wait for a writer: only regular files
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise InputError(path, os_error_reason(exc)) from None
    return info


def list_folder(folder: str | Path) -> list[Path]:
    """The entries of an input folder, sorted; InputError with the reason when it cannot be listed."""
    try:
        return sorted(Path(folder).iterdir())
    except OSError as exc:
        raise InputError(folder, os_error_reason(exc)) from None


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes, decompressed when it is gzip; a clear error for a broken or fake `.gz`."""
    path = Path(path)
    check_readable_file(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(path, os_error_reason(exc)) from None
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
_C1_BYTES = re.compile(rb"[\x80-\x9f]")  # where Windows-1252 and latin-1 differ


def looks_binary(raw: bytes) -> bool:
    """A NUL byte, or more than 1% control bytes (a stray one or two allowed), in the first 64 KiB."""
    head = raw[:65536]
    if b"\x00" in head:
        return True
    controls = len(head) - len(head.translate(None, _BINARY_BYTES))
    return controls > 2 + len(head) // 100


def utf16_encoding(head: bytes) -> str | None:
    """The codec of UTF-16 text: "utf-16" after a BOM (FF FE or FE FF), "utf-16-le" / "utf-16-be"
    without one when a NUL is every other byte (text of mostly ASCII characters); else None."""
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "utf-16"
    sample = head[:4096]
    sample = sample[: len(sample) & ~1]  # whole code units
    pairs = len(sample) // 2
    if pairs < 2:
        return None
    # One half of the bytes mostly NUL (the high bytes of ASCII characters), the other (almost) never.
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    if odd >= pairs / 2 and even <= pairs // 100:
        return "utf-16-le"
    if even >= pairs / 2 and odd <= pairs // 100:
        return "utf-16-be"
    return None


def utf16_name(raw: bytes, encoding: str) -> str:
    """The name of a UTF-16 codec with its byte order, for messages: UTF-16LE or UTF-16BE."""
    if encoding == "utf-16":
        encoding = "utf-16-be" if raw[:2] == b"\xfe\xff" else "utf-16-le"
    return encoding.upper().replace("-16-", "-16")


def legacy_encoding(raw: bytes, *, complete: bool = True) -> str:
    """The 8-bit encoding of bytes that are not UTF-8: Windows-1252 where it explains the bytes
    0x80-0x9F (’ – “ ” €: Excel's and Windows' text), else latin-1 (cp1252 leaves 0x81 0x8D 0x8F
    0x90 0x9D undefined). Without such bytes the two read the same: latin-1, unless `complete` is
    False (`raw` is the start of a file): the rest may hold them, so cp1252 while nothing rules it out."""
    if _C1_BYTES.search(raw) is None:
        return "latin-1" if complete else "cp1252"
    try:
        raw.decode("cp1252")
    except UnicodeDecodeError:
        return "latin-1"
    return "cp1252"


def decode_text(raw: bytes, source: str | Path) -> str:
    """UTF-8 (BOM stripped); UTF-16 (BOM or NUL pattern), else Windows-1252 or latin-1, with a
    warning naming the encoding; binary data is an error."""
    utf16 = utf16_encoding(raw)
    if utf16 is not None:
        name = utf16_name(raw, utf16)
        try:
            text = raw.decode(utf16)  # "utf-16" drops the BOM
        except UnicodeDecodeError as exc:
            raise InputError(source, f"not valid {name} text ({exc.reason} at byte {exc.start})") from None
        if looks_binary(text[:65536].encode("utf-8", errors="replace")):
            raise InputError(source, "binary data, expected a text (CSV) file")
        warn_encoding(source, name)
        return text
    if looks_binary(raw):
        raise InputError(source, "binary data, expected a text (CSV) file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    encoding = legacy_encoding(raw)
    warn_encoding(source, ENCODING_NAMES[encoding])
    return raw.removeprefix(UTF8_BOM).decode(encoding)  # a BOM, then 8-bit bytes: the BOM is no text


def warn_encoding(source: str | Path, name: str, stacklevel: int = 2) -> None:
    """The one warning for a file read in an encoding other than UTF-8 (`stacklevel` as for
    `warnings.warn`, counted from the caller of this function)."""
    warnings.warn(f"{source}: not valid UTF-8, read as {name}", stacklevel=stacklevel + 1)


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


def read_json_object(path: Path, what: str, hint: str = "") -> dict[str, Any]:
    """A JSON object file hapnet wrote (a run's config.json or metrics.json, a sweep's or a study's
    manifest); anything else is refused in one line, `not WHAT (why)HINT`. Errors reading the
    file itself are OSErrors (the CLI says them in one line)."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:  # invalid JSON or text
        raise InputError(path, f"not {what} ({error_summary(exc)}){hint}") from None
    if not isinstance(value, dict):
        raise InputError(path, f"not {what} (a JSON {type(value).__name__}, expected an object){hint}")
    return value
