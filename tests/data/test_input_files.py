"""Visit files as users have them and as they break (issue #22): UTF-16 and Windows-1252 text,
input paths that are folders, link loops or forbidden, a HADM_ID on two ADMISSIONS rows, a line
longer than the reader's block and an unclosed quote. Each is read right or refused in one line."""

from __future__ import annotations

import builtins
import gzip
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testdata import MIMIC3, MIMIC4

from hapnet.data import csv_stream
from hapnet.data.loaders import load_visits
from hapnet.data.visits import VisitData
from hapnet.errors import HapnetError, InputError
from hapnet.ontology.builtins import load_ontology
from hapnet.ontology.graph import Ontology
from hapnet.utils import textio

# ROOT(0); 401(1), 250(2); 4019(3), 4011(4), 2500(5), 2501(6), as in test_loaders.py
TINY = Ontology.from_edges("tiny", [("401", "4019"), ("401", "4011"), ("250", "2500"), ("250", "2501")])
LONG = "patient,visit,code\nJosé,1,4019\nJosé,2,4011\nAnn’s “B”,1,2500\nAnn’s “B”,2,2501\n"


def visits(data: VisitData) -> list[list[list[int]]]:
    return [[v.tolist() for v in data.visits_of(p)] for p in range(data.num_patients)]


def demo_icd9() -> Ontology:
    """Every code of the MIMIC demos' ICD-9 rows under its 3-character category."""
    codes = set()
    for path, column in (
        (MIMIC3 / "DIAGNOSES_ICD.csv.gz", "icd9_code"),
        (MIMIC4 / "hosp/diagnoses_icd.csv.gz", "icd_code"),
    ):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        codes.update(frame[column].str.strip())
    codes.discard("")
    return Ontology.from_edges("demo", [(c[:3], c) for c in sorted(codes) if len(c) > 3])


DEMO = demo_icd9()


# ----------------------------------------------------------------------------- encodings
@pytest.mark.parametrize(
    "raw, name",
    [
        (LONG.encode("utf-16"), "UTF-16LE"),
        (b"\xfe\xff" + LONG.encode("utf-16-be"), "UTF-16BE"),
        (LONG.encode("utf-16-le"), "UTF-16LE"),  # no BOM
        (LONG.encode("utf-16-be"), "UTF-16BE"),
        (gzip.compress(LONG.encode("utf-16")), "UTF-16LE"),
    ],
)
def test_a_utf16_long_csv_loads(raw: bytes, name: str, tmp_path: Path) -> None:
    path = tmp_path / "v.csv"
    path.write_bytes(raw)
    with pytest.warns(UserWarning, match=f"v.csv: not valid UTF-8, read as {name}$"):
        data = load_visits(path, TINY)
    assert list(data.patient_ids) == ["José", "Ann’s “B”"]
    assert visits(data) == [[[3], [4]], [[5], [6]]]


def test_a_windows_1252_long_csv_keeps_its_quotes(tmp_path: Path) -> None:
    path = tmp_path / "v.csv"
    path.write_bytes(LONG.encode("cp1252"))
    with pytest.warns(UserWarning, match=r"read as Windows-1252 \(cp1252\)$"):
        data = load_visits(path, TINY)
    assert list(data.patient_ids) == ["José", "Ann’s “B”"]  # not "Ann\x92s \x93B\x94"


def test_latin_1_where_windows_1252_has_no_character(tmp_path: Path) -> None:
    path = tmp_path / "v.csv"
    path.write_bytes(LONG.encode("cp1252").replace(b"Jos\xe9", b"Jos\x81"))
    with pytest.warns(UserWarning, match="read as latin-1$"):
        data = load_visits(path, TINY)
    assert list(data.patient_ids) == ["Jos\x81", "Ann\x92s \x93B\x94"]


def test_encodings_decided_after_the_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first bytes are plain ASCII; a ’ comes later (cp1252), then a byte cp1252 lacks (latin-1)."""
    monkeypatch.setattr(csv_stream, "_SNIFF_BYTES", 64)
    monkeypatch.setattr(csv_stream, "BLOCK_SIZE", 64)
    body = "".join(f"p{i},{v},4019\n" for i in range(10) for v in (1, 2))
    path = tmp_path / "v.csv"
    path.write_bytes(("patient,visit,code\n" + body + "Ann’s,1,2500\nAnn’s,2,2501\n").encode("cp1252"))
    with pytest.warns(UserWarning, match=r"read as Windows-1252 \(cp1252\)$"):
        assert load_visits(path, TINY).patient_ids[-1] == "Ann’s"
    path.write_bytes(path.read_bytes() + b"Zo\x81,1,2500\nZo\x81,2,2501\n")
    with pytest.warns(UserWarning, match="read as latin-1$"):
        assert list(load_visits(path, TINY).patient_ids[-2:]) == ["Ann\x92s", "Zo\x81"]


def test_broken_utf16_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "v.csv"
    path.write_bytes(LONG.encode("utf-16") + b"x")  # an odd byte count
    with pytest.raises(InputError, match=r"v.csv: not valid UTF-16LE text \(truncated data\)$"):
        load_visits(path, TINY)


# ----------------------------------------------------------------------------- input paths
def mimic3_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "mimic"
    shutil.copytree(MIMIC3, folder)
    return folder


@pytest.mark.parametrize("table", ["DIAGNOSES_ICD", "ADMISSIONS"])
def test_a_mimic_table_that_is_a_folder_a_link_loop_or_a_broken_link(table: str, tmp_path: Path) -> None:
    folder = mimic3_copy(tmp_path)
    (folder / f"{table}.csv.gz").unlink()
    target = folder / f"{table}.csv"
    target.mkdir()
    with pytest.raises(InputError) as caught:
        load_visits(folder, DEMO)
    assert str(caught.value) == f"{target}: is a folder, expected a file"  # not "without DIAGNOSES_ICD"
    target.rmdir()
    os.symlink(target.name, target)  # a link to itself
    with pytest.raises(InputError) as caught:
        load_visits(folder, DEMO)
    assert str(caught.value) == f"{target}: symbolic link loop"
    target.unlink()
    os.symlink("elsewhere.csv", target)
    with pytest.raises(InputError) as caught:
        load_visits(folder, DEMO)
    assert str(caught.value) == f"{target}: broken symbolic link"


def test_a_file_beside_a_folder_of_the_same_name_is_read(tmp_path: Path) -> None:
    folder = mimic3_copy(tmp_path)
    (folder / "DIAGNOSES_ICD.csv").mkdir()  # DIAGNOSES_ICD.csv.gz is still there: it is the table
    assert visits(load_visits(folder, DEMO)) == visits(load_visits(MIMIC3, DEMO))


def test_mimic4_table_that_is_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "mimic4"
    shutil.copytree(MIMIC4, folder)
    (folder / "hosp" / "admissions.csv.gz").unlink()
    (folder / "hosp" / "admissions.csv.gz").mkdir()
    with pytest.raises(InputError, match=r"hosp/admissions.csv.gz: is a folder, expected a file$"):
        load_visits(folder, DEMO)


def test_a_long_csv_that_is_a_link_loop_or_a_broken_link(tmp_path: Path) -> None:
    os.symlink("loop.csv", tmp_path / "loop.csv")
    with pytest.raises(InputError) as caught:
        load_visits(tmp_path / "loop.csv", TINY)
    assert str(caught.value) == f"{tmp_path / 'loop.csv'}: symbolic link loop"
    os.symlink("missing.csv", tmp_path / "broken.csv")
    with pytest.raises(InputError, match="broken.csv: broken symbolic link$"):
        load_visits(tmp_path / "broken.csv", TINY)
    with pytest.raises(InputError, match="missing.csv: not found"):
        load_visits(tmp_path / "missing.csv", TINY)


def test_an_unreadable_mimic_table_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`chmod 000` does not stop root, who may run the tests: the system's refusal is simulated."""
    folder = mimic3_copy(tmp_path)
    forbidden = folder / "DIAGNOSES_ICD.csv.gz"

    def fake_open(file, *args, **kwargs):
        if Path(file) == forbidden:
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(textio, "open", fake_open, raising=False)
    with pytest.raises(InputError) as caught:
        load_visits(folder, DEMO)
    assert str(caught.value) == f"{forbidden}: permission denied"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_mimic_table_and_folder(tmp_path: Path) -> None:
    folder = mimic3_copy(tmp_path)
    forbidden = folder / "DIAGNOSES_ICD.csv.gz"
    forbidden.chmod(0)
    try:
        with pytest.raises(InputError, match="DIAGNOSES_ICD.csv.gz: permission denied$"):
            load_visits(folder, DEMO)
    finally:
        forbidden.chmod(0o644)
    folder.chmod(0)
    try:
        with pytest.raises(InputError, match="permission denied$"):
            load_visits(folder, DEMO)
    finally:
        folder.chmod(0o755)


# ----------------------------------------------------------------------------- repeated HADM_ID
def admissions_frame(mimic4: bool) -> pd.DataFrame:
    path = MIMIC4 / "hosp/admissions.csv.gz" if mimic4 else MIMIC3 / "ADMISSIONS.csv.gz"
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def mimic_folder(tmp_path: Path, mimic4: bool, admissions: pd.DataFrame) -> tuple[Path, Path]:
    """The demo with these admissions; MIMIC-III as the full database has it (upper-case columns)."""
    folder = tmp_path / ("mimic4" if mimic4 else "mimic3")
    if mimic4:
        shutil.copytree(MIMIC4, folder)
        path = folder / "hosp" / "admissions.csv"
        (folder / "hosp" / "admissions.csv.gz").unlink()
    else:
        shutil.copytree(MIMIC3, folder)
        path = folder / "ADMISSIONS.csv"
        (folder / "ADMISSIONS.csv.gz").unlink()
        diagnoses = pd.read_csv(folder / "DIAGNOSES_ICD.csv.gz", dtype=str, keep_default_na=False)
        diagnoses.columns = [c.upper() for c in diagnoses.columns]
        diagnoses.to_csv(folder / "DIAGNOSES_ICD.csv.gz", index=False)
        admissions = admissions.set_axis([c.upper() for c in admissions.columns], axis=1)
    admissions.to_csv(path, index=False)
    return folder, path


def with_row(frame: pd.DataFrame, row: pd.Series, at: int) -> pd.DataFrame:
    return pd.concat([frame.iloc[:at], row.to_frame().T, frame.iloc[at:]], ignore_index=True)


@pytest.mark.parametrize("mimic4", [False, True])
def test_a_hadm_id_of_two_subjects_is_refused(mimic4: bool, tmp_path: Path) -> None:
    frame = admissions_frame(mimic4)
    copy = frame.iloc[20].copy()
    copy["subject_id"] = frame.subject_id.iloc[0]  # row 20's admission, given to the first patient
    folder, path = mimic_folder(tmp_path, mimic4, with_row(frame, copy, 5))  # file line 7
    hadm, subject = ("hadm_id", "subject_id") if mimic4 else ("HADM_ID", "SUBJECT_ID")
    with pytest.raises(InputError) as caught:
        load_visits(folder, DEMO)
    assert str(caught.value) == (
        f"{path}, line 23: {hadm} {frame.hadm_id.iloc[20]} also on line 7 with another {subject} "
        f"({frame.subject_id.iloc[0]} vs {frame.subject_id.iloc[20]})"
    )


@pytest.mark.parametrize("mimic4", [False, True])
def test_a_hadm_id_at_two_times_is_refused(mimic4: bool, tmp_path: Path) -> None:
    frame = admissions_frame(mimic4)
    copy = frame.iloc[3].copy()
    copy["admittime"] = "2199-01-02 03:04:05"
    folder, path = mimic_folder(tmp_path, mimic4, with_row(frame, copy, len(frame)))
    hadm, time = ("hadm_id", "admittime") if mimic4 else ("HADM_ID", "ADMITTIME")
    with pytest.raises(InputError) as caught:
        load_visits(folder, DEMO)
    assert str(caught.value) == (
        f"{path}, line {len(frame) + 2}: {hadm} {frame.hadm_id.iloc[3]} also on line 5 with another "
        f"{time} ({frame.admittime.iloc[3]} vs 2199-01-02 03:04:05)"
    )


@pytest.mark.filterwarnings("ignore:MIMIC-IV mixes ICD-9 and ICD-10")
@pytest.mark.parametrize("mimic4", [False, True])
def test_a_diagnosis_of_another_subject_than_its_admission_is_refused(mimic4: bool, tmp_path: Path) -> None:
    folder, _ = mimic_folder(tmp_path, mimic4, admissions_frame(mimic4))
    path = folder / ("hosp/diagnoses_icd.csv.gz" if mimic4 else "DIAGNOSES_ICD.csv.gz")
    diagnoses = pd.read_csv(path, dtype=str, keep_default_na=False)
    subject = diagnoses.columns[list(map(str.lower, diagnoses.columns)).index("subject_id")]
    hadm = diagnoses.columns[list(map(str.lower, diagnoses.columns)).index("hadm_id")]
    other = next(s for s in diagnoses[subject] if s != diagnoses[subject].iloc[9])
    original = diagnoses[subject].iloc[9]
    diagnoses.loc[9, subject] = other  # file line 11
    diagnoses.to_csv(path, index=False)
    with pytest.raises(InputError) as caught:
        load_visits(folder, DEMO)
    admissions = "admissions.csv" if mimic4 else "ADMISSIONS.csv"
    assert str(caught.value) == (
        f"{path}, line 11: {subject} {other} but its admission {diagnoses[hadm].iloc[9]} is of {subject} "
        f"{original} in {admissions} (1 such row)"
    )


@pytest.mark.filterwarnings("ignore:MIMIC-IV mixes ICD-9 and ICD-10")
@pytest.mark.parametrize("mimic4", [False, True])
def test_an_exactly_repeated_admission_is_counted_once(mimic4: bool, tmp_path: Path) -> None:
    frame = admissions_frame(mimic4)
    copies = frame.iloc[[3, 7]].copy()
    copies.iloc[:, -1] = "other text"  # a column hapnet does not read may differ
    folder, _ = mimic_folder(tmp_path, mimic4, pd.concat([frame, copies], ignore_index=True))
    with pytest.warns(UserWarning, match=r"2 repeated admission rows \(same (hadm_id|HADM_ID), subject"):
        data = load_visits(folder, DEMO)
    reference = load_visits(MIMIC4 if mimic4 else MIMIC3, DEMO)
    assert list(data.patient_ids) == list(reference.patient_ids)
    np.testing.assert_array_equal(data.visit_offsets, reference.visit_offsets)
    np.testing.assert_array_equal(data.codes, reference.codes)
    assert any("repeated admission rows" in note for note in data.report.notes)


def test_empty_hadm_ids_are_never_compared(tmp_path: Path) -> None:
    (tmp_path / "ADMISSIONS.csv").write_text(
        "SUBJECT_ID,HADM_ID,ADMITTIME\n1,10,2100-01-01\n1,11,2100-02-01\n2,,2100-01-01\n3,,2100-03-01\n"
    )
    (tmp_path / "DIAGNOSES_ICD.csv").write_text("HADM_ID,ICD9_CODE\n10,4019\n11,2500\n")
    assert visits(load_visits(tmp_path, TINY)) == [[[3], [5]]]


# ----------------------------------------------------------------------------- long lines, quotes
def long_csv(lines: list[str], newline: str = "\n") -> bytes:
    return newline.join(["patient,visit,code", *lines, ""]).encode()


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("scan", [1 << 22, 7, 4096])
def test_a_line_longer_than_the_block_is_named(
    newline: str, scan: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyarrow's "straddling object" error becomes the line and its size (the scan read in chunks of
    `scan` bytes, so that a CR and its LF may fall in two chunks)."""
    monkeypatch.setattr(csv_stream, "BLOCK_SIZE", 4096)
    monkeypatch.setattr(csv_stream, "_SCAN_BYTES", scan)
    lines = [f"p{i},{i % 3},4019" for i in range(300)]
    lines.insert(200, "p1,9," + "x" * 10_000)  # file line 202, 10,005 bytes
    path = tmp_path / "v.csv"
    path.write_bytes(long_csv(lines, newline))
    with pytest.raises(InputError) as caught:
        load_visits(path, TINY)
    assert str(caught.value) == (
        f"{path}, line 202: this line of 10,005 bytes is longer than the reader's block of 4,096 bytes: "
        "the file is probably malformed (line breaks missing?)"
    )


def test_the_line_is_found_through_gzip_and_another_encoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(csv_stream, "BLOCK_SIZE", 4096)
    lines = [f"p{i},{i % 3},4019" for i in range(300)] + ["p1,9," + "é" * 3000]  # 6,005 bytes in UTF-8
    path = tmp_path / "v.csv.gz"
    path.write_bytes(gzip.compress("\n".join(["patient,visit,code", *lines, ""]).encode("utf-16")))
    with pytest.raises(InputError, match=r"v.csv.gz, line 302: this line of 6,005 bytes is longer"):
        load_visits(path, TINY)


def test_no_line_break_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_stream, "_SNIFF_BYTES", 1024)
    path = tmp_path / "v.csv"
    path.write_bytes(b"patient,visit,code," + b"x" * 5000)
    with pytest.raises(InputError) as caught:
        load_visits(path, TINY)
    assert str(caught.value) == f"{path}, line 1: no line break in the first 1,024 bytes: not a CSV file?"


@pytest.mark.parametrize(
    "text",
    [
        'patient,visit,code\n1,1,4019\n1,2,"2500\n2,1,4019\n2,2,4011\n',
        # in a column hapnet does not read
        'patient,visit,code,note\n1,1,4019,a\n1,2,2500,"b\n2,1,4019,c\n2,2,4011,d\n',
        'patient,visit,code,note\r\n1,1,4019,a\r\n1,2,2500,"b\r\n2,1,4019,c\r\n2,2,4011,d\r\n',
    ],
)
def test_an_unclosed_quote_at_the_end_is_refused(text: str, tmp_path: Path) -> None:
    """Inside one block pyarrow runs the quote to the end of the file: lines 4-5 would vanish."""
    path = tmp_path / "v.csv"
    path.write_bytes(text.encode())
    with pytest.raises(InputError) as caught:
        load_visits(path, TINY)
    assert str(caught.value) == f"{path}, line 3: a quoted value runs over several lines (an unclosed quote?)"


def test_an_unclosed_quote_in_a_big_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_stream, "BLOCK_SIZE", 1024)
    lines = [f"p{i},{i % 3},4019" for i in range(600)]
    lines[400] = 'p1,9,"4019'  # file line 402
    path = tmp_path / "v.csv"
    path.write_bytes(long_csv(lines))
    with pytest.raises(InputError) as caught:
        load_visits(path, TINY)
    message = str(caught.value)
    assert "\n" not in message
    assert message.endswith(
        ": a quoted value runs over several lines (an unclosed quote?) at or after this line"
    )
    assert 2 <= caught.value.line <= 402


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.binary(max_size=300),
    prefix=st.sampled_from([b"\xff\xfe", b"\xfe\xff", "patient,visit,code\n".encode("utf-16-le")]),
)
def test_bytes_that_look_like_utf16_end_in_data_or_one_line(
    body: bytes, prefix: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "v.csv"
    path.write_bytes(prefix + body)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for load in (lambda: load_visits(path, TINY), lambda: load_ontology(path)):
            try:
                load()
            except HapnetError as exc:
                assert str(exc) and "\n" not in str(exc)
