"""Reading text as users have it (hapnet.utils.textio): UTF-16, Windows-1252 and latin-1 decoded
with a warning naming the encoding, and input paths that are folders, link loops or forbidden
reported as such, in one line."""

from __future__ import annotations

import builtins
import gzip
import os
from pathlib import Path

import pytest

from hapnet.errors import InputError
from hapnet.utils import textio
from hapnet.utils.textio import (
    check_readable_file,
    decode_text,
    entry_exists,
    legacy_encoding,
    read_bytes,
    read_json_object,
    read_text,
    utf16_encoding,
)

TEXT = "code,parent,description\n4019,401,Hypertension – “benign”, 5 €\n401,,Café’s\n"


# ----------------------------------------------------------------------------- UTF-16
@pytest.mark.parametrize(
    "raw, name",
    [
        (b"\xff\xfe" + TEXT.encode("utf-16-le"), "UTF-16LE"),
        (b"\xfe\xff" + TEXT.encode("utf-16-be"), "UTF-16BE"),
        (TEXT.encode("utf-16-le"), "UTF-16LE"),  # no BOM: the NUL of every other byte tells
        (TEXT.encode("utf-16-be"), "UTF-16BE"),
        (TEXT.encode("utf-16"), "UTF-16LE"),  # Python's own: BOM, native order
    ],
)
def test_utf16_is_text_not_binary(raw: bytes, name: str) -> None:
    with pytest.warns(UserWarning, match=f"f.csv: not valid UTF-8, read as {name}$"):
        assert decode_text(raw, "f.csv") == TEXT  # the BOM is not part of the text


def test_utf16_detection_by_hand() -> None:
    assert utf16_encoding(b"\xff\xfe") == "utf-16" and utf16_encoding(b"\xfe\xffx") == "utf-16"
    assert utf16_encoding("ab".encode("utf-16-le")) == "utf-16-le"
    assert utf16_encoding("ab".encode("utf-16-be")) == "utf-16-be"
    assert utf16_encoding(b"a\x00") is None  # one character proves nothing
    assert utf16_encoding(b"plain ascii") is None
    # NULs, but not every other byte: binary data, as before
    assert utf16_encoding(bytes(range(256)) * 50) is None
    assert utf16_encoding(b"\x00" * 64) is None


def test_broken_utf16_and_binary_are_errors() -> None:
    with pytest.raises(InputError, match=r"^f.csv: not valid UTF-16LE text \(truncated data at byte \d+\)$"):
        decode_text(b"\xff\xfe" + "ab".encode("utf-16-le") + b"c", "f.csv")  # an odd byte count
    with pytest.raises(InputError, match="binary data"):
        decode_text(bytes(range(256)) * 50, "f.csv")
    with pytest.raises(InputError, match="binary data"):  # UTF-16 of control characters is no text
        decode_text("\x01\x02\x03\x04\x05\x06".encode("utf-16"), "f.csv")


# ----------------------------------------------------------------------------- 8-bit
def test_windows_1252_before_latin_1() -> None:
    raw = TEXT.encode("cp1252")
    assert b"\x96" in raw and b"\x93" in raw and b"\x92" in raw and b"\x80" in raw  # – “ ’ €
    with pytest.warns(UserWarning, match=r"not valid UTF-8, read as Windows-1252 \(cp1252\)$"):
        assert decode_text(raw, "f.csv") == TEXT


def test_latin_1_where_windows_1252_has_no_character() -> None:
    raw = "Café’s".encode("cp1252") + b" \x81"  # 0x81 is undefined in cp1252
    with pytest.warns(UserWarning, match="not valid UTF-8, read as latin-1$"):
        assert decode_text(raw, "f.csv") == "Caf\xe9\x92s \x81"
    plain = "Café".encode("latin-1")  # no byte 0x80-0x9F: the two read the same, called latin-1
    with pytest.warns(UserWarning, match="not valid UTF-8, read as latin-1$"):
        assert decode_text(plain, "f.csv") == "Café"


def test_legacy_encoding_by_hand() -> None:
    assert legacy_encoding(b"caf\xe9") == "latin-1"
    assert legacy_encoding(b"caf\xe9", complete=False) == "cp1252"  # the rest may hold ’ or €
    assert legacy_encoding(b"it\x92s") == "cp1252"
    for undefined in (0x81, 0x8D, 0x8F, 0x90, 0x9D):
        assert legacy_encoding(b"it\x92s " + bytes([undefined]), complete=False) == "latin-1"


def test_utf8_bom_before_8_bit_bytes_is_dropped() -> None:
    with pytest.warns(UserWarning, match="latin-1"):
        assert decode_text(b"\xef\xbb\xbfcode,parent\ncaf\xe9,\n", "f.csv") == "code,parent\ncafé,\n"


def test_utf8_never_warns(recwarn: pytest.WarningsRecorder) -> None:
    assert decode_text(b"\xef\xbb\xbf" + TEXT.encode(), "f.csv") == TEXT
    assert not recwarn.list


# ----------------------------------------------------------------------------- paths
def test_read_text_of_gzipped_utf16(tmp_path: Path) -> None:
    path = tmp_path / "f.csv.gz"
    path.write_bytes(gzip.compress(TEXT.encode("utf-16")))
    with pytest.warns(UserWarning, match="UTF-16LE"):
        assert read_text(path) == TEXT


def test_a_folder_a_link_loop_a_broken_link_and_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "folder.csv").mkdir()
    os.symlink("loop.csv", tmp_path / "loop.csv")  # points to itself
    os.symlink("nowhere.csv", tmp_path / "broken.csv")
    cases = {
        "folder.csv": "is a folder, expected a file",
        "loop.csv": "symbolic link loop",
        "broken.csv": "broken symbolic link",
        "missing.csv": "file not found",
    }
    for name, reason in cases.items():
        for check in (check_readable_file, read_bytes):
            with pytest.raises(InputError) as caught:
                check(tmp_path / name)
            assert str(caught.value) == f"{tmp_path / name}: {reason}"
    assert entry_exists(tmp_path / "loop.csv") and entry_exists(tmp_path / "broken.csv")
    assert not entry_exists(tmp_path / "missing.csv")
    assert not entry_exists(tmp_path / "folder.csv" / "x" / "y")


def refuse_to_open(monkeypatch: pytest.MonkeyPatch, forbidden: Path) -> None:
    """The file cannot be opened, as after `chmod 000` for anyone but root (tests may run as root)."""

    def fake_open(file, *args, **kwargs):
        if Path(file) == forbidden:
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(textio, "open", fake_open, raising=False)


def test_permission_denied_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.csv"
    path.write_text(TEXT)
    refuse_to_open(monkeypatch, path)
    with pytest.raises(InputError) as caught:
        read_text(path)
    assert str(caught.value) == f"{path}: permission denied"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_permission_denied_for_real(tmp_path: Path) -> None:
    path = tmp_path / "secret.csv"
    path.write_text(TEXT)
    path.chmod(0)
    try:
        with pytest.raises(InputError, match="secret.csv: permission denied$"):
            read_text(path)
    finally:
        path.chmod(0o600)


def test_read_json_object_gives_the_object_or_one_line_naming_the_file(tmp_path: Path):
    path = tmp_path / "x.json"
    path.write_text('{"a": 1}')
    assert read_json_object(path, "a thing") == {"a": 1}
    for text, why in (("{oops", "Expecting property name"), ("[1]", "a JSON list, expected an object")):
        path.write_text(text)
        with pytest.raises(InputError) as caught:
            read_json_object(path, "a thing", "; hint")
        assert str(caught.value).startswith(f"{path}: not a thing (") and why in str(caught.value)
        assert str(caught.value).endswith("; hint")
