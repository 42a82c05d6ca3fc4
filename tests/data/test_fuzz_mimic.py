"""Property tests of the MIMIC loaders: any MIMIC-III / MIMIC-IV folder ends in the right data or a
one-line `HapnetError` naming the file, never another exception.

Folders are generated from small valid tables (shuffled rows, codes with dots, spaces, lower case
and unknown codes), written the ways users have them (gzip or not, BOM, CRLF, quoting, upper-case
headers, latin-1, reordered columns) and then broken one file at a time. A folder that only looks
different must give exactly the data of a reference computed here with plain Python; a broken one
must give a one-line error or data that passes the invariants. Bounded like `test_fuzz_loaders.py`:
`HAPNET_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz_mimic.py` hunts longer.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from testdata import DATA
from typer.testing import CliRunner

from hapnet.cli.main import app
from hapnet.data.loaders import load_visits
from hapnet.data.visits import VisitData
from hapnet.errors import HapnetError, InputError
from hapnet.ontology.graph import Ontology

FUZZ = settings(
    max_examples=int(os.environ.get("HAPNET_FUZZ_EXAMPLES", "40")),  # more for a longer hunt
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# ROOT; 401, 250; 4019, 4011, 2500, 2501 (as in test_loaders.py)
TINY = Ontology.from_edges("tiny", [("401", "4019"), ("401", "4011"), ("250", "2500"), ("250", "2501")])
# The shape of the built-in `icd9-icd10`: two system nodes, namespaced codes below them.
COMBINED = Ontology.from_edges(
    "tiny-icd9-icd10",
    [
        ("ICD9", "ICD9:401"),
        ("ICD9:401", "ICD9:4019"),
        ("ICD9:401", "ICD9:4011"),
        ("ICD9", "ICD9:250"),
        ("ICD9:250", "ICD9:2500"),
        ("ICD10", "ICD10:I10"),
        ("ICD10", "ICD10:E11"),
        ("ICD10:E11", "ICD10:E119"),
    ],
)
ICD9_CODES = ["4019", "401.9", " 4011 ", "4011", "2500", "25001", "250", "2501", "v999", "'4019'", "", "40"]
ICD10_CODES = ["I10", "i10", "E119", "E11.9", " e11 ", "E1190", "Z999", "I10X"]
SUBJECTS = ["10006", "10011", "10013", "7", "42", "00042", "p9"]
TEXT = ["SEPSIS", 'CHEST PAIN, "ACUTE"', "CAFÉ AU LAIT", "", "FEVER;RASH"]


@pytest.fixture(scope="module", autouse=True)
def files_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every generated folder goes to pytest's temporary folder."""
    FILES["folder"] = tmp_path_factory.mktemp("fuzz-mimic")


FILES: dict[str, Path] = {}


# ----------------------------------------------------------------------------- tables
@dataclass
class Tables:
    """A MIMIC folder as rows of strings: what the files mean, before any formatting."""

    mimic4: bool
    admissions: list[dict[str, str]]  # subject_id, hadm_id, admittime, text
    diagnoses: list[dict[str, str]]  # subject_id, hadm_id, seq_num, code, version
    extra: dict[str, str] = field(default_factory=dict)


@st.composite
def tables(draw: st.DrawFn, mimic4: bool) -> Tables:
    """1-5 patients, 1-3 admissions each on distinct days, 0-3 diagnoses each; rows shuffled."""
    subjects = draw(st.lists(st.sampled_from(SUBJECTS), min_size=1, max_size=5, unique=True))
    admissions, diagnoses = [], []
    hadm = 100000
    for subject in subjects:
        days = draw(st.lists(st.integers(0, 3000), min_size=1, max_size=3, unique=True))
        for day in days:
            hadm += draw(st.integers(1, 50))
            minute = draw(st.integers(0, 24 * 60 - 1))
            time = np.datetime64("2130-01-01T00:00") + np.timedelta64(day, "D") + np.timedelta64(minute, "m")
            admissions.append(
                {
                    "subject_id": subject,
                    "hadm_id": str(hadm),
                    "admittime": str(time).replace("T", " ") + ":00",
                    "text": draw(st.sampled_from(TEXT)),
                }
            )
            for seq in range(draw(st.integers(0, 3))):
                if mimic4 and draw(st.booleans()):
                    code, version = draw(st.sampled_from(ICD10_CODES)), "10"
                else:
                    code, version = draw(st.sampled_from(ICD9_CODES)), "9"
                row = {"subject_id": subject, "hadm_id": str(hadm), "seq_num": str(seq + 1)}
                diagnoses.append({**row, "code": code, "version": version})
    return Tables(
        mimic4,
        draw(st.permutations(admissions)),
        draw(st.permutations(diagnoses)) if diagnoses else diagnoses,
    )


def reference(t: Tables, ontology: Ontology) -> tuple[list[str], list[list[list[int]]]]:
    """The MIMIC rules as plain Python: visits = admissions by time, codes = resolved diagnoses."""
    admission: dict[str, tuple[str, str]] = {}
    for row in t.admissions:  # the first row of a hadm_id wins
        admission.setdefault(row["hadm_id"].strip(), (row["subject_id"].strip(), row["admittime"]))
    systems = "ICD9" in ontology and "ICD10" in ontology
    nodes: dict[str, set[int]] = {}
    for row in t.diagnoses:
        hadm, code = row["hadm_id"].strip(), row["code"].strip()
        if not hadm or hadm not in admission or not admission[hadm][0] or not code:
            continue
        if systems:
            code = f"ICD{row['version'].strip() if t.mimic4 else '9'}:{code}"
        node = ontology.resolve(code).index
        if node >= 0:
            nodes.setdefault(hadm, set()).add(node)
    # time order; equal times in order of the hadm_id's first diagnosis row (the file order)
    first_row = {}
    for i, row in enumerate(t.diagnoses):
        first_row.setdefault(row["hadm_id"].strip(), i)
    patients, result = [], []
    for subject in dict.fromkeys(s for s, _ in admission.values() if s):
        hadms = sorted(
            (np.datetime64(time.strip().replace(" ", "T")), first_row.get(h, -1), h)
            for h, (s, time) in admission.items()
            if s == subject and h
        )
        visits = [sorted(nodes[h]) for _, _, h in hadms if nodes.get(h)]
        if len(visits) >= 2:
            patients.append(subject)
            result.append(visits)
    return patients, result


# ----------------------------------------------------------------------------- files
COLUMNS = {
    # file -> (our column, header name in MIMIC-III, header name in MIMIC-IV)
    "admissions": [
        ("row_id", "row_id", None),
        ("subject_id", "subject_id", "subject_id"),
        ("hadm_id", "hadm_id", "hadm_id"),
        ("admittime", "admittime", "admittime"),
        ("text", "diagnosis", "race"),
    ],
    "diagnoses": [
        ("row_id", "row_id", None),
        ("subject_id", "subject_id", "subject_id"),
        ("hadm_id", "hadm_id", "hadm_id"),
        ("seq_num", "seq_num", "seq_num"),
        ("code", "icd9_code", "icd_code"),
        ("version", None, "icd_version"),
    ],
}


@dataclass
class Style:
    """How a folder is written: none of it changes what the files mean."""

    gz: bool = False
    bom: bool = False
    crlf: bool = False
    upper: bool = False
    quote_all: bool = False
    latin1: bool = False
    reverse_columns: bool = False
    hosp: bool = True  # MIMIC-IV: pass the parent folder (else the hosp folder itself)


STYLES = st.builds(
    Style,
    gz=st.booleans(),
    bom=st.booleans(),
    crlf=st.booleans(),
    upper=st.booleans(),
    quote_all=st.booleans(),
    latin1=st.booleans(),
    reverse_columns=st.booleans(),
    hosp=st.booleans(),
)


def table_text(t: Tables, which: str, style: Style, drop: str | None = None) -> str:
    columns = [(ours, m4 if t.mimic4 else m3) for ours, m3, m4 in COLUMNS[which]]
    columns = [(ours, name) for ours, name in columns if name and name != drop]
    if style.reverse_columns:
        columns.reverse()
    rows = t.admissions if which == "admissions" else t.diagnoses
    header = [name.upper() if style.upper else name for _, name in columns]
    body = [[row.get(ours, str(i + 1)) for ours, _ in columns] for i, row in enumerate(rows)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL if style.quote_all else csv.QUOTE_MINIMAL)
    writer.writerows([header, *body])
    text = buffer.getvalue().replace("\r\n", "\r\n" if style.crlf else "\n")
    return ("\ufeff" if style.bom else "") + text


def file_path(folder: Path, t: Tables, which: str, style: Style) -> Path:
    if t.mimic4:
        name = "admissions" if which == "admissions" else "diagnoses_icd"
        return folder / "hosp" / f"{name}.csv{'.gz' if style.gz else ''}"
    name = "ADMISSIONS" if which == "admissions" else "DIAGNOSES_ICD"
    return folder / f"{name if style.upper else name.lower()}.csv{'.gz' if style.gz else ''}"


def write_folder(t: Tables, style: Style, replace: dict[str, bytes | str] | None = None) -> Path:
    """Both files of `t` in a new folder; `replace` gives one file's raw content instead."""
    folder = Path(tempfile.mkdtemp(dir=FILES["folder"]))
    for which in ("admissions", "diagnoses"):
        path = file_path(folder, t, which, style)
        path.parent.mkdir(exist_ok=True)
        content = (replace or {}).get(which)
        if content is None:
            content = table_text(t, which, style)
        if isinstance(content, str) and style.latin1:  # a UTF-8 BOM stays a UTF-8 BOM
            bom = content.startswith("\ufeff")
            content = b"\xef\xbb\xbf"[: 3 * bom] + content[bom:].encode("latin-1", errors="replace")
        elif isinstance(content, str):
            content = content.encode("utf-8")
        if style.gz:
            content = gzip.compress(content)
        path.write_bytes(content)
    if t.mimic4 and not style.hosp:
        return folder / "hosp"
    return folder


def data_path(folder: Path, t: Tables, which: str, style: Style) -> Path:
    return file_path(folder.parent if folder.name == "hosp" else folder, t, which, style)


# ----------------------------------------------------------------------------- checks
def load_or_error(folder: Path, ontology: Ontology, **options) -> VisitData | str:
    """The data, or the error's message after checking that it is one line naming the folder."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # latin-1 and single-system MIMIC-IV warn; both are correct
        try:
            return load_visits(folder, ontology, **options)
        except HapnetError as exc:
            message = str(exc)
            assert message and len(message.splitlines()) == 1, message
            root = folder.parent if folder.name == "hosp" else folder
            assert message.startswith(str(root)), message
            return message


def check_invariants(data: VisitData, ontology: Ontology, input_rows: int) -> None:
    """What any loaded data set must satisfy, whatever the source looked like."""
    po, vo, codes = data.patient_offsets, data.visit_offsets, data.codes
    assert po[0] == 0 and vo[0] == 0 and po[-1] == len(vo) - 1 and vo[-1] == len(codes)
    assert (np.diff(po) >= 2).all()  # every patient has 2+ visits
    assert (np.diff(vo) >= 1).all()
    assert ((codes > 0) & (codes < len(ontology))).all()
    for v in range(data.num_visits):  # sorted, no code twice in a visit
        assert (np.diff(codes[vo[v] : vo[v + 1]]) > 0).all()
    ids = [str(p) for p in data.patient_ids]
    assert len(set(ids)) == len(ids) and all(ids)
    r = data.report
    assert r.kind in ("mimic3", "mimic4") and r.input_rows == input_rows
    assert (r.patients, r.visits, r.codes) == (data.num_patients, data.num_visits, len(codes))
    considered = r.input_rows - r.orphan_rows  # rows with an admission of a patient
    assert r.exact_rows + r.mapped_rows + r.unknown_rows + r.empty_code_rows == considered
    dropped = r.duplicate_rows + r.not_kept_rows + r.empty_code_rows + r.orphan_rows
    assert r.codes + dropped + r.dropped_patient_rows == r.input_rows
    assert min(r.exact_rows, r.mapped_rows, r.unknown_rows, r.not_kept_rows, r.duplicate_rows) >= 0


def note(what: str) -> None:
    """`hypothesis.event` inside a property test; nothing in a plain example test."""
    try:
        event(what)
    except InvalidArgument:
        pass


def check_against_reference(result: VisitData | str, t: Tables, ontology: Ontology) -> None:
    patients, visits = reference(t, ontology)
    if not patients:  # no patient with 2+ visits holding a known code
        assert isinstance(result, str), "expected an error"
        note("HapnetError (reference has no patient)")
        return
    assert not isinstance(result, str), result
    note("loaded")
    check_invariants(result, ontology, len(t.diagnoses))
    assert [str(p) for p in result.patient_ids] == patients
    assert [[v.tolist() for v in result.visits_of(p)] for p in range(result.num_patients)] == visits
    r = result.report
    assert r.kind == ("mimic4" if t.mimic4 else "mimic3")
    admitted = {row["hadm_id"].strip() for row in t.admissions}
    diagnosed = {row["hadm_id"].strip() for row in t.diagnoses}
    assert r.admissions_without_diagnoses == len(admitted - diagnosed)
    first: dict[str, str] = {}
    for row in t.admissions:
        first.setdefault(row["hadm_id"].strip(), row["subject_id"].strip())
    named = {hadm for hadm, subject in first.items() if hadm and subject}
    assert r.orphan_rows == sum(1 for row in t.diagnoses if row["hadm_id"].strip() not in named)


def ontology_for(t: Tables, combined: bool) -> Ontology:
    return COMBINED if t.mimic4 and combined else TINY


# ----------------------------------------------------------------------------- properties
KIND = st.booleans()  # MIMIC-IV or MIMIC-III


@FUZZ
@given(data=st.data(), mimic4=KIND, style=STYLES, combined=st.booleans())
def test_formatting_never_changes_the_data(data, mimic4: bool, style: Style, combined: bool):
    """gzip, BOM, CRLF, quoting, header case, latin-1, column order, hosp or parent: same data."""
    t = data.draw(tables(mimic4))
    ontology = ontology_for(t, combined)
    check_against_reference(load_or_error(write_folder(t, style), ontology), t, ontology)


@FUZZ
@given(
    data=st.data(),
    mimic4=KIND,
    style=STYLES,
    duplicates=st.integers(0, 3),
    orphans=st.lists(st.sampled_from(["999", "100000", " 5 ", ""]), max_size=3),
    lonely=st.integers(0, 2),
    no_subject=st.booleans(),
    long_cell=st.booleans(),
)
def test_extra_rows_are_counted_and_never_change_the_visits(
    data, mimic4, style, duplicates, orphans, lonely, no_subject, long_cell
):
    """Duplicate rows, diagnoses of no admission, admissions without diagnoses, admissions with an
    empty subject_id and a 300 kB cell: the reference's visits, and the report counts them."""
    t = data.draw(tables(mimic4))
    for i in range(duplicates):
        if t.diagnoses:
            t.diagnoses.append(dict(t.diagnoses[i % len(t.diagnoses)]))
        t.admissions.append(dict(t.admissions[i % len(t.admissions)]))
    for hadm in orphans:  # hadm ids that no admission has (hadm ids are 100001 + at least 1)
        t.diagnoses.append(
            {"subject_id": "1", "hadm_id": hadm, "seq_num": "1", "code": "4019", "version": "9"}
        )
    for i in range(lonely):
        t.admissions.append(
            {"subject_id": t.admissions[0]["subject_id"], "hadm_id": f"9{i}", "admittime": "2131-01-01"}
        )
    if no_subject:  # an admission of nobody: its diagnoses are orphans, not patient ""
        t.admissions.insert(0, {"subject_id": "", "hadm_id": "777", "admittime": "2130-05-05 00:00:00"})
        t.diagnoses.append(
            {"subject_id": "", "hadm_id": "777", "seq_num": "1", "code": "2500", "version": "9"}
        )
        t.admissions.append({"subject_id": "", "hadm_id": "778", "admittime": "2130-05-06 00:00:00"})
        t.diagnoses.append(
            {"subject_id": "", "hadm_id": "778", "seq_num": "1", "code": "2501", "version": "9"}
        )
    if long_cell:
        t.admissions[-1]["text"] = "X, " * 100_000
    ontology = ontology_for(t, True)
    check_against_reference(load_or_error(write_folder(t, style), ontology), t, ontology)


def break_column(t: Tables, which: str, column: str, value: str, index: int) -> int:
    """Put `value` into one row's column; the file line of that row."""
    rows = t.admissions if which == "admissions" else t.diagnoses
    rows[index % len(rows)][column] = value
    return index % len(rows) + 2


@FUZZ
@given(
    data=st.data(),
    mimic4=KIND,
    style=STYLES,
    bad=st.sampled_from(["2130-13-45", "today", "now", "n/a", "01/02/2130 x", "2130-01-01 25:00", "0x1"]),
    index=st.integers(0, 20),
)
def test_an_unparsable_admittime_names_the_file_and_line(data, mimic4, style, bad, index):
    t = data.draw(tables(mimic4))
    if not t.diagnoses:  # a header-only diagnoses file is the first error found
        return
    line = break_column(t, "admissions", "admittime", bad, index)
    folder = write_folder(t, style)
    result = load_or_error(folder, ontology_for(t, True))
    assert isinstance(result, str)
    where = f"{data_path(folder, t, 'admissions', style)}, line {line}: unparsable date"
    assert result.startswith(where) and repr(bad) in result, result


@FUZZ
@given(data=st.data(), mimic4=KIND, style=STYLES, offset=st.sampled_from(["Z", "+01:00", "-05:30"]))
def test_admittimes_with_a_utc_offset_order_as_instants(data, mimic4, style, offset):
    """Naive times count as UTC; `2130-01-01 00:00:00+01:00` is the hour before midnight UTC."""
    t = data.draw(tables(mimic4))
    written = Tables(t.mimic4, [dict(row) for row in t.admissions], t.diagnoses)
    hours = {"Z": 0, "+01:00": -1, "-05:30": 5.5}[offset]
    for row in written.admissions[::2]:
        row["admittime"] = row["admittime"].replace(" ", "T") + offset
    for row in t.admissions[::2]:  # the reference's naive UTC time of the same instant
        instant = np.datetime64(row["admittime"].replace(" ", "T")) + np.timedelta64(int(hours * 60), "m")
        row["admittime"] = str(instant).replace("T", " ")
    ontology = ontology_for(t, True)
    check_against_reference(load_or_error(write_folder(written, style), ontology), t, ontology)


REQUIRED = {
    ("admissions", False): ["subject_id", "hadm_id", "admittime"],
    ("admissions", True): ["subject_id", "hadm_id", "admittime"],
    ("diagnoses", False): ["hadm_id", "icd9_code"],
    ("diagnoses", True): ["hadm_id", "icd_code"],
}


@FUZZ
@given(
    data=st.data(),
    mimic4=KIND,
    style=STYLES,
    which=st.sampled_from(["admissions", "diagnoses"]),
    what=st.sampled_from(["empty", "header only", "fake gz", "no column", "blank header"]),
    column=st.integers(0, 2),
)
def test_a_broken_file_is_an_error_naming_it(data, mimic4, style, which, what, column):
    t = data.draw(tables(mimic4))
    if what == "fake gz":
        style.gz = False
    folder = write_folder(t, style)
    path = data_path(folder, t, which, style)
    text = table_text(t, which, style)
    if what == "empty":
        content = b""
    elif what == "header only":
        content = text.splitlines(keepends=True)[0].encode()
    elif what == "blank header":
        content = ("\n" + text).encode()
    elif what == "no column":
        names = REQUIRED[which, mimic4]
        drop = names[column % len(names)]
        content = table_text(t, which, style, drop=drop).encode()
    else:  # a plain CSV named .csv.gz
        content = text.encode()
        path.unlink()
        path = path.with_name(path.name + ".gz")
    path.write_bytes(gzip.compress(content) if style.gz else content)
    result = load_or_error(folder, ontology_for(t, True))
    event(what)
    assert isinstance(result, str), f"{what} {which} loaded"
    assert result.startswith(str(path)), result
    if what == "no column":
        assert result.startswith(f"{path}, line 1: no ") and "found columns" in result


@FUZZ
@given(
    data=st.data(),
    mimic4=KIND,
    style=STYLES,
    which=st.sampled_from(["admissions", "diagnoses"]),
    raw=st.binary(max_size=300),
    keep_header=st.booleans(),
)
def test_arbitrary_bytes_in_one_file(data, mimic4, style, which, raw, keep_header):
    t = data.draw(tables(mimic4))
    header = table_text(t, which, Style()).splitlines(keepends=True)[0].encode() if keep_header else b""
    folder = write_folder(t, style, replace={which: header + raw})
    ontology = ontology_for(t, True)
    result = load_or_error(folder, ontology)
    event("loaded" if not isinstance(result, str) else "HapnetError")
    if not isinstance(result, str):
        check_invariants(result, ontology, result.report.input_rows)


CELL = st.text(alphabet="19,\" '\r\n\\é\x00x-:", max_size=6)


@FUZZ
@given(
    data=st.data(),
    mimic4=KIND,
    style=STYLES,
    which=st.sampled_from(["admissions", "diagnoses"]),
    column=st.sampled_from(["subject_id", "hadm_id", "admittime", "code", "version", "text"]),
    values=st.lists(st.tuples(st.integers(0, 20), CELL), min_size=1, max_size=4),
    combined=st.booleans(),
)
def test_messy_cells_load_or_fail_cleanly(data, mimic4, style, which, column, values, combined):
    """Quotes, commas, line breaks, NULs, empty ids and odd icd_version values in any column."""
    t = data.draw(tables(mimic4))
    rows = t.admissions if which == "admissions" else t.diagnoses
    for index, value in values:
        if rows:
            rows[index % len(rows)][column] = value
    ontology = ontology_for(t, combined)
    result = load_or_error(write_folder(t, style), ontology)
    event("loaded" if not isinstance(result, str) else "HapnetError")
    if not isinstance(result, str):
        check_invariants(result, ontology, result.report.input_rows)


@FUZZ
@given(
    data=st.data(),
    style=STYLES,
    versions=st.lists(st.sampled_from(["11", "", "9.0", "ICD10", " 10 ", "x"]), min_size=1, max_size=3),
    drop_version=st.booleans(),
)
def test_mimic4_icd_versions_other_than_9_and_10(data, style, versions, drop_version):
    """Odd versions make their codes unknown (counted); no icd_version column reads as MIMIC-III."""
    t = data.draw(tables(True))
    if not t.diagnoses:
        return
    for i, version in enumerate(versions):
        t.diagnoses[i % len(t.diagnoses)]["version"] = version
    folder = write_folder(t, style)
    if drop_version:
        path = data_path(folder, t, "diagnoses", style)
        text = table_text(t, "diagnoses", style, drop="icd_version")
        path.write_bytes(gzip.compress(text.encode()) if style.gz else text.encode("utf-8"))
    result = load_or_error(folder, COMBINED)
    if drop_version:  # every code is read as ICD-9
        t = Tables(False, t.admissions, t.diagnoses)
    check_against_reference(result, t, COMBINED)


# ----------------------------------------------------------------------------- examples
def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


ADMISSIONS = "SUBJECT_ID,HADM_ID,ADMITTIME\n"
DIAGNOSES = "HADM_ID,ICD9_CODE\n"


def test_diagnoses_of_no_admission_are_named_not_blamed_on_the_ontology(tmp_path):
    """Found by the fuzzer: every hadm_id unknown read as 'no known code ... right --ontology?'."""
    write(tmp_path / "ADMISSIONS.csv", ADMISSIONS + "1,10,2100-01-01\n1,11,2100-01-02\n")
    write(tmp_path / "DIAGNOSES_ICD.csv", DIAGNOSES + "99,4019\n98,2500\n")
    with pytest.raises(InputError, match="DIAGNOSES_ICD.csv: no diagnosis row belongs to an admission.*'99'"):
        load_visits(tmp_path, TINY)


def test_an_empty_subject_id_is_no_patient(tmp_path):
    """Found by the fuzzer: admissions without a subject_id made a patient named ''."""
    write(
        tmp_path / "ADMISSIONS.csv",
        ADMISSIONS + ",10,2100-01-01\n,11,2100-01-02\n2,12,2100-01-01\n2,13,2100-01-03\n",
    )
    write(tmp_path / "DIAGNOSES_ICD.csv", DIAGNOSES + "10,4019\n11,2500\n12,4011\n13,2501\n")
    data = load_visits(tmp_path, TINY)
    assert list(data.patient_ids) == ["2"] and data.codes.tolist() == [4, 6]
    assert data.report.orphan_rows == 2


def test_an_empty_hadm_id_joins_nothing(tmp_path):
    """Found by the fuzzer: diagnoses with an empty hadm_id joined admissions with an empty one."""
    write(tmp_path / "ADMISSIONS.csv", ADMISSIONS + "1,,2100-01-01\n1,5,2100-01-02\n1,6,2100-01-03\n")
    write(tmp_path / "DIAGNOSES_ICD.csv", DIAGNOSES + ",4019\n5,2500\n6,2501\n")
    data = load_visits(tmp_path, TINY)
    assert [v.tolist() for v in data.visits_of(0)] == [[5], [6]]
    assert data.report.orphan_rows == 1


def test_mixed_utc_offsets_and_the_words_today_and_now(tmp_path):
    """Found by the fuzzer: a ValueError from pandas on mixed offsets; 'today' read as the clock."""
    write(tmp_path / "ADMISSIONS.csv", ADMISSIONS + "1,10,2100-01-01 00:30\n1,11,2100-01-01T01:00:00+01:00\n")
    write(tmp_path / "DIAGNOSES_ICD.csv", DIAGNOSES + "10,4019\n11,2500\n")
    data = load_visits(tmp_path, TINY)
    assert [v.tolist() for v in data.visits_of(0)] == [[5], [3]]  # 11 is at 00:00 UTC, before 10
    for word in ("today", " Now"):
        write(tmp_path / "ADMISSIONS.csv", ADMISSIONS + f"1,10,2100-01-01\n1,11,{word}\n")
        with pytest.raises(InputError, match=f"ADMISSIONS.csv, line 3: unparsable date '{word.strip()}'"):
            load_visits(tmp_path, TINY)


def test_a_long_free_text_cell_and_a_bom_before_latin1_bytes(tmp_path):
    """Found by the fuzzer: a 300 kB cell broke the header sample (csv's 128 kB field limit), and a
    UTF-8 BOM before latin-1 bytes hid the first column's name."""
    long_text = '"' + "SEPSIS, " * 40_000 + '"'
    write(
        tmp_path / "ADMISSIONS.csv", f"SUBJECT_ID,HADM_ID,ADMITTIME,DIAGNOSIS\n1,10,2100-01-01,{long_text}\n"
    )
    with open(tmp_path / "ADMISSIONS.csv", "a") as handle:
        handle.write("1,11,2100-01-02,x\n")
    (tmp_path / "DIAGNOSES_ICD.csv").write_bytes(
        b"\xef\xbb\xbfHADM_ID,ICD9_CODE,NOTE\n10,4019,caf\xe9\n11,2500,\n"
    )
    with pytest.warns(UserWarning, match="latin-1"):
        data = load_visits(tmp_path, TINY)
    assert [v.tolist() for v in data.visits_of(0)] == [[3], [5]]


def demo_ontology(codes: list[str], systems: bool) -> Ontology:
    """Every 3-character category of the demo's codes, and every other full code below it: the
    rest maps to its category, so the demo has exact and mapped rows."""
    edges = []
    for i, code in enumerate(sorted(set(codes))):
        system, body = code.split(":") if systems else ("", code)
        prefix = f"{system}:" if systems else ""
        edges.append((system, prefix + body[:3]))
        if len(body) > 3 and i % 2:
            edges.append((prefix + body[:3], prefix + body))
    return Ontology.from_edges("demo", edges)


def test_demo_folders_match_the_reference():
    """The shipped demo tables through the same reference as the generated ones."""
    import pandas as pd

    for folder, mimic4 in ((DATA / "mimic3-demo", False), (DATA / "mimic4-demo", True)):
        base = folder / "hosp" if mimic4 else folder
        adm = pd.read_csv(next(base.glob("[aA][dD]*.csv.gz")), dtype=str, keep_default_na=False)
        diag = pd.read_csv(next(base.glob("[dD][iI]*.csv.gz")), dtype=str, keep_default_na=False)
        adm.columns, diag.columns = adm.columns.str.lower(), diag.columns.str.lower()
        if mimic4:
            raw = [f"ICD{v}:{c}" for c, v in zip(diag.icd_code, diag.icd_version, strict=True) if c]
        else:
            raw = [c for c in diag.icd9_code if c]
        ontology = demo_ontology(raw, mimic4)
        t = Tables(
            mimic4,
            [
                {"subject_id": s, "hadm_id": h, "admittime": a}
                for s, h, a in zip(adm.subject_id, adm.hadm_id, adm.admittime, strict=True)
            ],
            [
                {"hadm_id": h, "code": c, "version": v}
                for h, c, v in zip(
                    diag.hadm_id,
                    diag.icd_code if mimic4 else diag.icd9_code,
                    diag.icd_version if mimic4 else ["9"] * len(diag),
                    strict=True,
                )
            ],
        )
        result = load_or_error(folder, ontology)
        check_against_reference(result, t, ontology)
        assert result.report.exact_rows and result.report.mapped_rows and result.num_patients >= 14


# ----------------------------------------------------------------------------- CLI
runner = CliRunner()


@pytest.fixture(scope="module")
def onto_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write(
        tmp_path_factory.mktemp("onto") / "onto.csv",
        "code,parent\n401,\n4019,401\n4011,401\n250,\n2500,250\n",
    )


def good_mimic3(folder: Path) -> Path:
    write(
        folder / "ADMISSIONS.csv",
        ADMISSIONS + "".join(f"{p},{p}{v},2100-01-0{v + 1}\n" for p in range(1, 20) for v in range(2)),
    )
    write(
        folder / "DIAGNOSES_ICD.csv",
        DIAGNOSES + "".join(f"{p}{v},4019\n{p}{v},2500\n" for p in range(1, 20) for v in range(2)),
    )
    return folder


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("fake gz", "DIAGNOSES_ICD.csv.gz: has a .gz suffix but is not gzip-compressed"),
        ("no admittime", "ADMISSIONS.csv, line 1: no time column"),
        ("bad date", "ADMISSIONS.csv, line 5: unparsable date '2100-02-30'"),
    ],
)
def test_cli_train_on_a_broken_mimic_folder_is_one_line_exit_2(tmp_path, onto_csv, breakage, message):
    folder = good_mimic3(tmp_path / "mimic")
    if breakage == "fake gz":
        (folder / "DIAGNOSES_ICD.csv").rename(folder / "DIAGNOSES_ICD.csv.gz")
    elif breakage == "no admittime":
        write(folder / "ADMISSIONS.csv", "SUBJECT_ID,HADM_ID\n1,10\n1,11\n")
    else:
        lines = (folder / "ADMISSIONS.csv").read_text().splitlines()
        lines[4] = lines[4].rsplit(",", 1)[0] + ",2100-02-30"
        write(folder / "ADMISSIONS.csv", "\n".join(lines) + "\n")
    out = tmp_path / "run"
    args = ["train", "--data", folder, "--ontology", onto_csv, "--epochs", "1", "--dim", "8", "--hidden", "8"]
    result = runner.invoke(app, [str(a) for a in [*args, "--device", "cpu", "--out", out]])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert message in result.output.replace("\n", "")
    assert not out.exists() and not (tmp_path / ".run.partial").exists()
