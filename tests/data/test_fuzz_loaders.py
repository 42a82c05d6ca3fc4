"""Property tests of the loaders: any file ends in a correct result or a `HapnetError`, nothing else.

Ontology files (`hapnet.load_ontology`) and long-CSV visit files (`hapnet.load_visits`) are
generated as raw bytes and as near-valid text with BOMs, CRLF, quotes, blank lines, cycles and
self-loops. Bounded: a few dozen examples each, no deadline (the machine is shared);
`HAPNET_FUZZ_EXAMPLES=2000 pytest tests/test_fuzz_loaders.py` hunts longer.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import hapnet
from hapnet.data.loaders import load_visits
from hapnet.data.visits import VisitData
from hapnet.errors import HapnetError
from hapnet.ontology.graph import Ontology

FUZZ = settings(
    max_examples=int(os.environ.get("HAPNET_FUZZ_EXAMPLES", "40")),  # more for a longer hunt
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Short names from a small alphabet, so that generated edges meet, form cycles and self-loops.
NAME = st.text(alphabet="AB12 .'\",é", min_size=0, max_size=4)


@pytest.fixture(scope="module", autouse=True)
def files_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Every generated file goes to pytest's temporary folder (cleaned up like all the others)."""
    FILES["folder"] = tmp_path_factory.mktemp("fuzz")


FILES: dict[str, Path] = {}


def write_file(text_or_bytes: str | bytes, *, name: str, bom: bool = False, crlf: bool = False) -> Path:
    folder = Path(tempfile.mkdtemp(dir=FILES["folder"]))
    if isinstance(text_or_bytes, str):
        text = text_or_bytes.replace("\n", "\r\n") if crlf else text_or_bytes
        data = ("\ufeff" if bom else "").encode() + text.encode("utf-8")
    else:
        data = text_or_bytes
    if name.endswith(".gz"):
        data = gzip.compress(data)
    path = folder / name
    path.write_bytes(data)
    return path


def load_ontology_or_error(path: Path) -> Ontology | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # latin-1 fallback warns; that is a correct outcome
        try:
            return hapnet.load_ontology(path)
        except HapnetError as exc:
            assert str(exc) and "\n" not in str(exc)  # one line
            return None


def check_ontology(ontology: Ontology) -> None:
    """A leveled DAG: root at 0, every parent strictly above its child, nodes sorted by level."""
    assert ontology.levels[0] == 0 and len(ontology.ids) == len(ontology)
    parent, child = np.asarray(ontology.edge_parent), np.asarray(ontology.edge_child)
    assert (ontology.levels[parent] < ontology.levels[child]).all()
    assert (np.diff(ontology.levels) >= 0).all()
    assert len(set(ontology.ids)) == len(ontology.ids)


def csv_text(rows: list[list[str]], quoting: int) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, quoting=quoting, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- ontologies
@FUZZ
@given(data=st.binary(max_size=400), gz=st.booleans())
def test_ontology_from_arbitrary_bytes(data: bytes, gz: bool):
    ontology = load_ontology_or_error(write_file(data, name="onto.csv.gz" if gz else "onto.csv"))
    if ontology is not None:
        check_ontology(ontology)


@FUZZ
@given(
    edges=st.lists(st.tuples(NAME, NAME, st.text(max_size=6)), max_size=12),
    header=st.sampled_from(
        [["code", "parent"], ["Code", "Parent", "description"], ["child", "parent_id", "label"], ["a", "b"]]
    ),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
    bom=st.booleans(),
    crlf=st.booleans(),
    blank_lines=st.booleans(),
)
def test_ontology_from_code_parent_csv(edges, header, quoting, bom, crlf, blank_lines):
    rows = [header] + [[c, p, d][: len(header)] for c, p, d in edges]
    text = csv_text(rows, quoting)
    if blank_lines:
        text = "\n" + text.replace("\n", "\n\n", 1)
    ontology = load_ontology_or_error(write_file(text, name="onto.csv", bom=bom, crlf=crlf))
    event("loaded" if ontology is not None else "HapnetError")
    if ontology is None:
        return
    check_ontology(ontology)
    ids = set(ontology.ids)
    for code, parent, description in edges:  # every edge of an accepted file is in the ontology
        if not any(cell.strip() for cell in [code, parent, description][: len(header)]):
            continue  # a blank row is skipped
        code, parent = (
            hapnet.ontology.codes.normalize_code(code),
            hapnet.ontology.codes.normalize_code(parent),
        )
        assert code in ids
        assert not parent or parent in ids


@FUZZ
@given(
    rows=st.lists(st.lists(st.text(alphabet="12.AB '\",", max_size=4), min_size=0, max_size=10), max_size=6),
    bom=st.booleans(),
    crlf=st.booleans(),
)
def test_ontology_from_ccs_multilevel(rows, bom, crlf):
    header = "'ICD-9-CM CODE','CCS LVL 1','CCS LVL 1 LABEL','CCS LVL 2','CCS LVL 2 LABEL',"
    header += "'CCS LVL 3','CCS LVL 3 LABEL','CCS LVL 4','CCS LVL 4 LABEL'"
    body = "\n".join(",".join(f"'{field}'" for field in row) for row in rows)
    ontology = load_ontology_or_error(
        write_file(header + "\n" + body + "\n", name="ccs.csv", bom=bom, crlf=crlf)
    )
    if ontology is not None:
        check_ontology(ontology)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("code,parent\nA,B\nB,A\n", "cycle"),
        ("code,parent\nA,A\n", "self-loop"),
        ("code,parent\nA,B\nB,C\nC,A\n", "cycle"),
    ],
)
def test_cycles_and_self_loops_are_input_errors(text: str, reason: str):
    with pytest.raises(HapnetError, match=reason):
        hapnet.load_ontology(write_file(text, name="onto.csv"))


# ----------------------------------------------------------------------------- visits
@pytest.fixture(scope="module")
def tiny() -> Ontology:
    return Ontology.from_edges("tiny", [("401", "4019"), ("401", "4011"), ("250", "2500"), ("250", "2501")])


def load_visits_or_error(path: Path, ontology: Ontology, **options) -> VisitData | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return load_visits(path, ontology, **options)
        except HapnetError as exc:
            assert str(exc) and "\n" not in str(exc)
            return None


def check_visits(data: VisitData, ontology: Ontology, min_visits: int = 2) -> None:
    assert data.patient_offsets[0] == 0 and data.visit_offsets[0] == 0
    assert data.patient_offsets[-1] == len(data.visit_offsets) - 1
    assert data.visit_offsets[-1] == len(data.codes)
    assert (np.diff(data.patient_offsets) >= min_visits).all()
    assert (np.diff(data.visit_offsets) >= 1).all()
    assert ((data.codes > 0) & (data.codes < len(ontology))).all()
    assert len(data.patient_ids) == len(data.patient_offsets) - 1


CODE = st.sampled_from(["4019", "401.9", " 4011 ", "2500", "250.01", "2501", "V999", "", "'4019'", "40"])
JUNK = st.text(alphabet="1a ,\"'\\", max_size=3)
KEY = st.one_of(st.sampled_from(["1", "2", "3"]), st.sampled_from(["1", "2", "p 3", "-1"]), JUNK)
# One kind of time per file (dates, or plain numbers), sometimes with a bad or empty cell.
TIMES = st.sampled_from(
    [
        ["2020-01-01", "2020-01-02 10:00", "2019-12-31T23:59:59", "2020-03-01", "2020-01-01"],
        ["0", "1", "2.5", "3", "10"],
        ["2020-01-01", "2020-01-02", "", "2020-01-03", "not a date"],
    ]
)


@FUZZ
@given(
    rows=st.lists(st.tuples(KEY, KEY, st.integers(0, 4), CODE), min_size=1, max_size=30),
    times=TIMES,
    header=st.sampled_from(
        [
            ["patient", "visit", "time", "code"],
            ["patient", "visit", "code"],
            ["patient", "time", "code"],
            ["SUBJECT_ID", "HADM_ID", "ADMITTIME", "ICD9_CODE"],
            ["patient", "code"],
            ["x", "y"],
        ]
    ),
    quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]),
    bom=st.booleans(),
    crlf=st.booleans(),
    gz=st.booleans(),
    unknown=st.sampled_from(["ancestor", "drop", "error"]),
)
def test_visits_from_long_csv(rows, times, header, quoting, bom, crlf, gz, unknown, tiny):
    roles = {"patient": 0, "visit": 1, "time": 2, "code": 3, "subject_id": 0, "hadm_id": 1}
    roles |= {"admittime": 2, "icd9_code": 3, "x": 0, "y": 3}
    rows = [(patient, visit, times[time], code) for patient, visit, time, code in rows]
    table = [header] + [[row[roles[name.lower()]] for name in header] for row in rows]
    path = write_file(
        csv_text(table, quoting), name="visits.csv.gz" if gz else "visits.csv", bom=bom, crlf=crlf
    )
    data = load_visits_or_error(path, tiny, unknown=unknown)
    event("loaded" if data is not None else "HapnetError")
    if data is not None:
        check_visits(data, tiny)


@FUZZ
@given(text=st.text(st.characters(exclude_categories=("Cs",)), max_size=200), bom=st.booleans())
def test_both_loaders_on_arbitrary_text(text: str, bom: bool, tiny):
    for header in ("code,parent\n", "patient,visit,code\n"):
        path = write_file(header + text, name="file.csv", bom=bom)
        ontology = load_ontology_or_error(path)
        if ontology is not None:
            check_ontology(ontology)
        data = load_visits_or_error(path, tiny)
        if data is not None:
            check_visits(data, tiny)


@FUZZ
@given(data=st.binary(max_size=400), header=st.booleans())
def test_visits_from_arbitrary_bytes(data: bytes, header: bool, tiny):
    prefix = b"patient,visit,code\n" if header else b""
    result = load_visits_or_error(write_file(prefix + data, name="visits.csv"), tiny)
    if result is not None:
        check_visits(result, tiny)


def test_visits_exact_small_case(tiny):
    """The fuzzed loader still gives the hand-computed answer on a clean file."""
    text = "patient,visit,code\np1,1,4019\np1,1,401.9\np1,2,2500\np2,1,2501\np2,2,4011\np3,1,4019\n"
    data = load_visits(write_file(text, name="visits.csv", bom=True, crlf=True), tiny)
    assert list(data.patient_ids) == ["p1", "p2"]
    assert data.patient_offsets.tolist() == [0, 2, 4]
    assert [tiny.ids[c] for c in data.codes] == ["4019", "2500", "2501", "4011"]
