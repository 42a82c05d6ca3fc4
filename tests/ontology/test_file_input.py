"""Ontology files as users have them (issue #22): UTF-16 and Windows-1252 files load as their
UTF-8 twins, and a path that is a folder, a link loop or forbidden is refused in one line."""

from __future__ import annotations

import builtins
import gzip
import os
from pathlib import Path

import pytest
from testdata import ONTOLOGY_FILES

from hapnet.errors import InputError
from hapnet.ontology.builtins import load_ontology
from hapnet.ontology.graph import Ontology
from hapnet.utils import textio

TEXT = "code,parent,description\n401,,Hypertension – “essential”\n4019,401,Unspecified’s\n4011,401,Benign\n"


def same(a: Ontology, b: Ontology) -> None:
    assert a.ids == b.ids and a.descriptions[1:] == b.descriptions[1:]
    assert a.edge_parent.tolist() == b.edge_parent.tolist()
    assert a.edge_child.tolist() == b.edge_child.tolist()


def write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "encode, name",
    [
        (lambda text: text.encode("utf-16"), "UTF-16LE"),
        (lambda text: b"\xfe\xff" + text.encode("utf-16-be"), "UTF-16BE"),
        (lambda text: text.encode("utf-16-le"), "UTF-16LE"),
        (lambda text: gzip.compress(text.encode("utf-16-be")), "UTF-16BE"),
    ],
)
def test_utf16_files_load_like_utf8(encode, name: str, tmp_path: Path) -> None:
    utf8 = load_ontology(write(tmp_path, "onto.csv", TEXT.encode()))
    assert utf8.descriptions[utf8.index("401")] == "Hypertension – “essential”"
    (tmp_path / "16").mkdir()
    with pytest.warns(UserWarning, match=f"not valid UTF-8, read as {name}$"):
        same(load_ontology(write(tmp_path / "16", "onto.csv", encode(TEXT))), utf8)
    ccs = (ONTOLOGY_FILES / "ccs_small.csv").read_text()
    with pytest.warns(UserWarning, match=name):
        utf16 = load_ontology(write(tmp_path / "16", "ccs_small.csv", encode(ccs)))
    same(utf16, load_ontology(ONTOLOGY_FILES / "ccs_small.csv"))


def test_windows_1252_descriptions_keep_their_characters(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match=r"read as Windows-1252 \(cp1252\)$"):
        onto = load_ontology(write(tmp_path, "onto.csv", TEXT.encode("cp1252")))
    assert onto.descriptions[onto.index("401")] == "Hypertension – “essential”"
    assert onto.descriptions[onto.index("4019")] == "Unspecified’s"


def test_a_folder_a_link_loop_and_a_forbidden_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "folder.csv").mkdir()
    os.symlink("loop.csv", tmp_path / "loop.csv")
    for name, reason in (("folder.csv", "is a folder, expected a file"), ("loop.csv", "symbolic link loop")):
        with pytest.raises(InputError) as caught:
            load_ontology(tmp_path / name)
        assert str(caught.value) == f"{tmp_path / name}: {reason}"
    forbidden = write(tmp_path, "secret.csv", TEXT.encode())

    def fake_open(file, *args, **kwargs):  # chmod 000 as root would not stop the read
        if Path(file) == forbidden:
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(textio, "open", fake_open, raising=False)
    with pytest.raises(InputError) as caught:
        load_ontology(forbidden)
    assert str(caught.value) == f"{forbidden}: permission denied"
    with pytest.raises(InputError, match="no such file, and not a built-in ontology"):
        load_ontology(tmp_path / "missing.csv")


def test_a_wrong_header_with_a_line_break_is_still_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "onto.csv", b'"ab\ncd",x\n1,2\n')
    with pytest.raises(InputError) as caught:
        load_ontology(path)
    assert str(caught.value).startswith(f"{path}, line 2: wrong columns 'ab cd,x': expected a header")
