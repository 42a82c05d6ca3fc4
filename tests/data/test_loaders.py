"""Visit loaders: MIMIC-III/IV folders, long CSVs, synth folders; exact CSR arrays and clear errors."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from testdata import MIMIC3, MIMIC4

import hapnet
from hapnet.data import csv_stream
from hapnet.data.loaders import load_visits, visits_from_frame, visits_from_lists
from hapnet.data.long_csv import parse_columns
from hapnet.data.visits import DataReport, VisitData
from hapnet.errors import HapnetError, InputError
from hapnet.ontology.graph import Ontology


@pytest.fixture(scope="module")
def icd9() -> Ontology:
    return hapnet.load_ontology("icd9-ccs")


@pytest.fixture(scope="module")
def icd9_icd10() -> Ontology:
    try:
        return hapnet.load_ontology("icd9-icd10")
    except HapnetError as exc:  # pragma: no cover - only until the combined ontology lands
        pytest.skip(f"built-in ontology icd9-icd10 not available yet ({exc})")


@pytest.fixture(scope="module")
def tiny() -> Ontology:
    """ROOT(0); 401(1), 250(2); 4019(3), 4011(4), 2500(5), 2501(6): indices fixed by from_edges."""
    ontology = Ontology.from_edges(
        "tiny", [("401", "4019"), ("401", "4011"), ("250", "2500"), ("250", "2501")]
    )
    assert ontology.ids == ["<ROOT>", "401", "250", "4019", "4011", "2500", "2501"]
    return ontology


def same_data(a: VisitData, b: VisitData) -> None:
    assert list(a.patient_ids) == list(b.patient_ids)
    np.testing.assert_array_equal(a.patient_offsets, b.patient_offsets)
    np.testing.assert_array_equal(a.visit_offsets, b.visit_offsets)
    np.testing.assert_array_equal(a.codes, b.codes)


def write(path: Path, text: str, *, gz: bool = False, encoding: str = "utf-8") -> Path:
    data = text.encode(encoding)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def reference_mimic3(folder: Path, ontology: Ontology) -> tuple[list[str], list[list[list[int]]]]:
    """The MIMIC-III rules with pandas and Python loops: an independent path to the same arrays."""
    admissions = pd.read_csv(folder / "ADMISSIONS.csv.gz", dtype=str)
    diagnoses = pd.read_csv(folder / "DIAGNOSES_ICD.csv.gz", dtype=str).dropna(subset=["icd9_code"])
    admissions["t"] = pd.to_datetime(admissions.admittime)
    rows = diagnoses.merge(admissions[["hadm_id", "subject_id", "t"]], on="hadm_id", suffixes=("_d", ""))
    patients, result = [], []
    for subject in admissions.subject_id.drop_duplicates():  # first-appearance order
        adm = admissions[admissions.subject_id == subject].sort_values("t", kind="stable")
        visits = []
        for hadm in adm.hadm_id:
            nodes = {ontology.resolve(c).index for c in rows.icd9_code[rows.hadm_id == hadm]}
            nodes.discard(-1)
            if nodes:
                visits.append(sorted(nodes))
        if len(visits) >= 2:
            patients.append(subject)
            result.append(visits)
    return patients, result


# ----------------------------------------------------------------------------- MIMIC-III
def test_mimic3_demo_matches_an_independent_reference(icd9):
    data = load_visits(MIMIC3, icd9)
    patients, visits = reference_mimic3(MIMIC3, icd9)
    assert list(data.patient_ids) == patients
    assert [[list(v) for v in data.visits_of(p)] for p in range(data.num_patients)] == visits
    report = data.report
    assert (report.kind, report.patients, report.input_rows) == ("mimic3", 14, 1761)
    assert report.dropped_patients == 86  # 100 patients, 14 with 2+ admissions
    assert report.codes == len(data.codes) and report.visits == data.num_visits == 43


def test_mimic3_upper_case_names_and_columns_give_identical_data(icd9, tmp_path):
    shipped = load_visits(MIMIC3, icd9)
    upper = tmp_path / "MIMIC"
    upper.mkdir()
    for name in ("ADMISSIONS", "DIAGNOSES_ICD"):
        frame = pd.read_csv(MIMIC3 / f"{name}.csv.gz", dtype=str, keep_default_na=False)
        frame.columns = [c.upper() for c in frame.columns]
        frame.to_csv(upper / f"{name}.csv", index=False)  # plain CSV, upper-case columns
    lower = tmp_path / "lower"
    lower.mkdir()
    for name in ("ADMISSIONS", "DIAGNOSES_ICD"):
        shutil.copy(MIMIC3 / f"{name}.csv.gz", lower / f"{name.lower()}.csv.gz")
    for folder in (upper, lower):
        data = load_visits(folder, icd9)
        same_data(shipped, data)
        assert data.report.kind == "mimic3"


def test_mimic_orphan_diagnoses_and_admissions_without_diagnoses_are_counted(tiny, tmp_path):
    write(
        tmp_path / "ADMISSIONS.csv",
        "SUBJECT_ID,HADM_ID,ADMITTIME\n1,10,2100-01-02 10:00:00\n1,11,2100-01-01 09:00:00\n1,12,2100-03-01\n",
    )
    write(
        tmp_path / "DIAGNOSES_ICD.csv",
        "ROW_ID,SUBJECT_ID,HADM_ID,SEQ_NUM,ICD9_CODE\n1,1,10,1,4019\n2,1,11,1,2500\n3,1,99,1,2501\n4,1,11,2,\n",
    )
    data = load_visits(tmp_path, tiny)
    assert [list(v) for v in data.visits_of(0)] == [[5], [3]]  # hadm 11 is earlier than hadm 10
    report = data.report
    assert (report.orphan_rows, report.admissions_without_diagnoses, report.empty_code_rows) == (1, 1, 1)
    assert report.dropped_rows == 2  # the orphan and the empty code, nothing else
    assert dict(report.as_rows())["admissions without diagnoses"] == "1"


# ----------------------------------------------------------------------------- MIMIC-IV
def test_mimic4_demo_with_icd9_icd10_has_both_systems(icd9_icd10, recwarn):
    data = load_visits(MIMIC4, icd9_icd10)
    assert not [w for w in recwarn if "MIMIC-IV" in str(w.message)]
    same_data(data, load_visits(MIMIC4 / "hosp", icd9_icd10))
    ids = [icd9_icd10.ids[i] for i in data.codes]
    assert any(i.startswith("ICD9:") for i in ids) and any(i.startswith("ICD10:") for i in ids)
    assert data.report.kind == "mimic4"
    assert data.report.patients == 48  # the demo's patients with 2+ admissions
    assert data.report.unknown_rows == 0 and data.report.mapped_codes >= 1
    # T814XXA is not in the FY2026 edition: its visit holds the nearest ancestor instead.
    diagnoses = pd.read_csv(MIMIC4 / "hosp" / "diagnoses_icd.csv.gz", dtype=str)
    hadm = diagnoses.hadm_id[diagnoses.icd_code == "T814XXA"].iloc[0]
    admissions = pd.read_csv(MIMIC4 / "hosp" / "admissions.csv.gz", dtype=str)
    subject = admissions.subject_id[admissions.hadm_id == hadm].iloc[0]
    patient = list(data.patient_ids).index(subject)
    mapped = icd9_icd10.resolve("ICD10:T814XXA")
    assert mapped.status == "mapped"
    assert any(mapped.index in visit for visit in data.visits_of(patient))


def test_mimic4_with_a_single_system_ontology_warns_once(icd9):
    with pytest.warns(UserWarning, match="mixes ICD-9 and ICD-10.*icd9-icd10") as caught:
        data = load_visits(MIMIC4, icd9)
    assert len([w for w in caught if "MIMIC-IV" in str(w.message)]) == 1
    assert data.report.unknown_rows > 2000  # the ICD-10 rows
    assert any("icd9-icd10" in note for note in data.report.notes)


# ----------------------------------------------------------------------------- long CSV
MESSY = """patient_id,Visit_ID,admit_date,ICD9_CODE
p1,v1,2020-01-05,401.9
p1,v1,2020-01-05, 4019
p1,v2,2020-01-01,250.01
p1,v2,2020-01-01,2501
p1,v2,2020-01-01,2501
p1,v2,2020-01-01,99999
P2,v1,2020-03-01,4011
p3,x,2020-02-01,4011
p3,y,2020-02-02,zz
p4,v2,2020-01-01,250
p4,v1,2019-12-31,4011
p4,v2,2020-01-01,401.1
"""


def test_messy_long_csv_exact_arrays(tiny, tmp_path):
    data = load_visits(write(tmp_path / "messy.csv.gz", MESSY, gz=True), tiny)
    assert list(data.patient_ids) == ["p1", "p4"]  # P2 and p3 have one visit with a known code
    np.testing.assert_array_equal(data.patient_offsets, [0, 2, 4])
    # p1: v2 (Jan 1: 25001 -> 2500 mapped, 2501) then v1 (Jan 5: 4019 twice); p4: v1 then v2.
    np.testing.assert_array_equal(data.visit_offsets, [0, 2, 3, 4, 6])
    np.testing.assert_array_equal(data.codes, [5, 6, 3, 4, 2, 4])
    r = data.report
    assert (r.kind, r.input_rows, r.codes) == ("long-csv", 12, 6)
    # distinct codes 4019 2500 1 2501 99999 4011 ZZ 250: exact 4019 2501 4011 250, mapped 25001.
    assert (r.exact_codes, r.mapped_codes, r.unknown_codes) == (4, 1, 2)
    assert (r.exact_rows, r.mapped_rows, r.unknown_rows) == (9, 1, 2)
    assert r.duplicate_rows == 2  # 4019 twice in p1/v1, 2501 twice in p1/v2
    assert r.dropped_visits == 1  # p3/y held only an unknown code
    assert r.dropped_patients == 2
    assert r.dropped_rows == 12 - 6


def test_lower_case_and_dotted_letter_codes(tmp_path):
    ontology = Ontology.from_edges("letters", [("V10", "V103"), ("E84", "E849")])
    assert ontology.ids == ["<ROOT>", "V10", "E84", "V103", "E849"]
    path = write(
        tmp_path / "l.csv", "patient,visit,code\nA,1,v10.3\nA,1,V103\nA,1, e849 \nA,2,v10.39\nA,2,x\n"
    )
    data = load_visits(path, ontology)
    np.testing.assert_array_equal(data.visit_offsets, [0, 2, 3])
    np.testing.assert_array_equal(data.codes, [3, 4, 3])  # v10.39 maps to V103
    assert (data.report.exact_codes, data.report.mapped_codes, data.report.unknown_codes) == (2, 1, 1)


def test_visits_without_visit_column_are_patient_and_time(tiny, tmp_path):
    path = write(
        tmp_path / "t.csv",
        "subject_id,date,dx\n1,2020-01-02,4019\n1,2020-01-02 00:00:00,4011\n1,2020-01-01,2500\n",
    )
    data = load_visits(path, tiny)
    assert [list(v) for v in data.visits_of(0)] == [[5], [3, 4]]  # equal times are one visit


def test_numeric_times_order_visits_and_file_order_breaks_ties(tiny, tmp_path):
    path = write(tmp_path / "t.csv", "pid,visit,time,code\n1,a,10,4019\n1,b,2,4011\n1,c,,2500\n1,d,2,2501\n")
    data = load_visits(path, tiny)
    # time 2 (b, then d: file order), 10 (a), missing time last (c)
    assert [list(v) for v in data.visits_of(0)] == [[4], [6], [3], [5]]


def test_no_time_column_keeps_file_order_of_visits(tiny, tmp_path):
    path = write(tmp_path / "t.csv", "member_id,encounter,diagnosis\n7,z,4019\n7,a,4011\n7,z,2500\n")
    data = load_visits(path, tiny)
    assert [list(v) for v in data.visits_of(0)] == [[3, 5], [4]]


def test_columns_override(tiny, tmp_path):
    path = write(tmp_path / "odd.csv", "who,when,what,visit\n1,2020-01-02,4019,x\n1,2020-01-01,4011,y\n")
    with pytest.raises(InputError, match="no patient column: found columns who, when, what.*--columns"):
        load_visits(path, tiny)
    columns = parse_columns("patient=WHO, time=when,code=what")
    assert columns == {"patient": "WHO", "time": "when", "code": "what"}
    data = load_visits(path, tiny, columns=columns)
    assert [list(v) for v in data.visits_of(0)] == [[4], [3]]
    with pytest.raises(InputError, match="--columns code=nope: no such column"):
        load_visits(path, tiny, columns={**columns, "code": "nope"})
    with pytest.raises(HapnetError, match="unknown role 'ward'"):
        parse_columns("ward=x")


def test_unknown_policies(tiny, tmp_path):
    path = write(tmp_path / "messy.csv", MESSY)
    dropped = load_visits(path, tiny, unknown="drop")
    assert 5 not in dropped.codes  # 25001 would map to 2500: not exact, dropped
    assert dropped.report.not_kept_rows == 3
    with pytest.raises(InputError, match=r"line 4: code '250.01' is not in ontology tiny .*3 distinct"):
        load_visits(path, tiny, unknown="error")
    with pytest.raises(HapnetError, match="unknown='maybe'"):
        load_visits(path, tiny, unknown="maybe")


def test_latin1_file_loads_with_a_warning(tiny, tmp_path):
    path = write(tmp_path / "l.csv", "patient,visit,code\nJosé,1,4019\nJosé,2,4011\n", encoding="latin-1")
    with pytest.warns(UserWarning, match="latin-1"):
        data = load_visits(path, tiny)
    assert list(data.patient_ids) == ["José"]


def naive_long_csv(frame: pd.DataFrame, ontology: Ontology) -> tuple[list[str], list[list[list[int]]]]:
    """The long-CSV rules as plain Python loops over rows (the slow, obvious way)."""
    visits: dict[tuple[str, str], dict] = {}
    for row, (patient, visit, time, code) in enumerate(frame.itertuples(index=False)):
        entry = visits.setdefault((patient.strip(), visit.strip()), {"time": [], "row": row, "codes": set()})
        entry["time"].append(pd.Timestamp(time))
        node = ontology.resolve(code).index
        if node >= 0:
            entry["codes"].add(node)
    order: dict[str, list] = {}
    for (patient, _), entry in visits.items():
        if entry["codes"]:
            order.setdefault(patient, []).append((min(entry["time"]), entry["row"], sorted(entry["codes"])))
    patients = [p for p in dict.fromkeys(frame.iloc[:, 0].str.strip()) if len(order.get(p, [])) >= 2]
    return patients, [[codes for _, _, codes in sorted(order[p])] for p in patients]


def test_vectorised_loader_matches_a_naive_loop(tiny, tmp_path, monkeypatch):
    # small CSV blocks and string groups: the per-block / per-group merging is exercised too
    monkeypatch.setattr(csv_stream, "BLOCK_SIZE", 4096)
    monkeypatch.setattr(csv_stream._Column, "GROUP_ROWS", 700)
    rng = np.random.default_rng(7)
    n = 3000
    raw_codes = np.array(["4019", "401.1", "2500", "25001", "2501", "250", "401", "9999", "V10", " 4019 "])
    frame = pd.DataFrame(
        {
            "patient": [f"p{i}" for i in rng.integers(0, 60, n)],
            "visit": [f"v{i}" for i in rng.integers(0, 8, n)],
            "code": raw_codes[rng.integers(0, len(raw_codes), n)],
        }
    )
    # a visit's rows share one date; visits of a patient may tie on the date
    day = {f"v{i}": int(d) for i, d in enumerate(rng.integers(0, 5, 8))}
    frame["time"] = [str(pd.Timestamp("2020-01-01") + pd.Timedelta(days=day[v])) for v in frame.visit]
    frame = frame[["patient", "visit", "time", "code"]]
    frame.to_csv(tmp_path / "r.csv", index=False)
    data = load_visits(tmp_path / "r.csv", tiny)
    patients, visits = naive_long_csv(frame, tiny)
    assert list(data.patient_ids) == patients
    assert [[list(v) for v in data.visits_of(p)] for p in range(data.num_patients)] == visits
    same_data(data, visits_from_frame(frame, tiny))
    # the same rows grouped by visit take the loader's no-sort path
    grouped = frame.sort_values(["patient", "visit"], kind="stable")
    grouped.to_csv(tmp_path / "g.csv", index=False)
    patients, visits = naive_long_csv(grouped, tiny)
    data = load_visits(tmp_path / "g.csv", tiny)
    assert [[list(v) for v in data.visits_of(p)] for p in range(data.num_patients)] == visits


def test_types_guessed_from_the_sample_fall_back_to_strings(tiny, tmp_path, monkeypatch):
    """The first rows look like integer ids and ISO dates; later rows do not: same data anyway."""
    monkeypatch.setattr(csv_stream, "_SNIFF_BYTES", 100)
    monkeypatch.setattr(csv_stream, "BLOCK_SIZE", 256)
    lines = [f"{p},{v},2020-01-0{v},{c}" for p in range(1, 30) for v in (1, 2) for c in ("4019", "2500")]
    lines += [
        "070,1,01/03/2020,4011",
        "070,2,01/04/2020,2501",
        "70,1,2020-01-05,4019",
        "70,2,2020-01-06,2500",
    ]
    lines += [",1,2020-01-01,4019", "x1,1,2020-01-02,4011", "x1,2,,2501"]
    path = write(tmp_path / "late.csv", "patient,visit,time,code\n" + "\n".join(lines) + "\n")
    data = load_visits(path, tiny)
    ids = list(data.patient_ids)
    assert ids[:2] == ["1", "2"] and ids[-3:] == ["070", "70", "x1"]  # "070" is not patient 70
    assert [list(v) for v in data.visits_of(ids.index("070"))] == [[4], [6]]
    assert [list(v) for v in data.visits_of(ids.index("x1"))] == [[4], [6]]  # missing time sorts last
    assert data.report.orphan_rows == 1 and dict(data.report.as_rows())["dropped rows"].endswith(
        "1 no patient id)"
    )


# ----------------------------------------------------------------------------- other sources
def test_visits_from_lists_and_subset(tiny):
    patients = [[["4019", "401.1"], ["2500"]], [["x"], ["4011"]], [["2501"], ["250"], ["4019", "4019"]]]
    data = visits_from_lists(patients, tiny, patient_ids=["a", "b", "c"])
    assert list(data.patient_ids) == ["a", "c"]
    np.testing.assert_array_equal(data.codes, [3, 4, 5, 6, 2, 3])
    sub = data.subset([1])
    same_data(sub, visits_from_lists([patients[2]], tiny, patient_ids=["c"]))
    assert (sub.report.patients, sub.report.visits, sub.report.codes, sub.report.distinct_codes) == (
        1,
        3,
        3,
        3,
    )
    assert data.report.patients == 2  # the original report is untouched
    reordered = data.subset(np.array([1, 0]))
    assert list(reordered.patient_ids) == ["c", "a"]
    np.testing.assert_array_equal(reordered.codes, [6, 2, 3, 3, 4, 5])


def test_frame_with_missing_values_counts_them(tiny):
    frame = pd.DataFrame(
        {"pid": [1, 1, 1, None], "visit": [1, 2, 2, 3], "dx": ["401.9", None, "2500", "4019"]}
    )
    data = visits_from_frame(frame, tiny)
    np.testing.assert_array_equal(data.codes, [3, 5])
    assert (data.report.empty_code_rows, data.report.orphan_rows, data.report.dropped_rows) == (1, 1, 2)


def test_synth_folder_and_default_source(icd9, tmp_path):
    from hapnet.data.synth import generate, write_synth

    folder = write_synth(tmp_path / "s", icd9, patients=200, seed=5)
    data = load_visits(folder, icd9)
    assert data.report.kind == "synth" and data.report.unknown_rows == 0
    same_data(data, visits_from_frame(generate(icd9, 200, seed=5), icd9))
    same_data(data, load_visits(folder / "synth.json", icd9))


def test_report_rows_and_dict(icd9):
    report = load_visits(MIMIC3, icd9).report
    rows = report.as_rows()
    assert all(isinstance(label, str) and isinstance(value, str) for label, value in rows)
    assert dict(rows)["patients"] == "14"
    assert json.loads(json.dumps(report.as_dict()))["codes_per_visit"] == pytest.approx(
        report.codes_per_visit, 1e-3
    )
    assert isinstance(report, DataReport)


# ----------------------------------------------------------------------------- bad input
def bad_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    header = "patient,visit,time,code\n"
    (tmp / "empty_dir").mkdir()
    (tmp / "half_mimic").mkdir()
    write(tmp / "half_mimic" / "ADMISSIONS.csv", "subject_id,hadm_id,admittime\n1,2,2100-01-01\n")
    (tmp / "no_time_mimic").mkdir()
    write(tmp / "no_time_mimic" / "ADMISSIONS.csv", "subject_id,hadm_id\n1,2\n")
    write(tmp / "no_time_mimic" / "DIAGNOSES_ICD.csv", "hadm_id,icd9_code\n2,4019\n")
    return {
        "missing file": (tmp / "nope.csv", "not found"),
        "empty folder": (tmp / "empty_dir", "not a visit data folder.*ADMISSIONS"),
        "mimic without diagnoses": (tmp / "half_mimic", "without DIAGNOSES_ICD"),
        "mimic without admittime": (
            tmp / "no_time_mimic",
            "ADMISSIONS.csv, line 1: no time column.*admittime",
        ),
        "renamed column": (
            write(tmp / "renamed.csv", "patient,visit,time,icd\n1,1,2020-01-01,4019\n"),
            "no code column: found columns patient, visit, time, icd; expected one of code.*--columns",
        ),
        "no visit or time": (write(tmp / "novisit.csv", "patient,code\n1,4019\n"), "no visit or time column"),
        "bad date": (
            write(
                tmp / "date.csv", header + "1,1,2020-01-01,4019\n1,2,2020-13-45,4011\n1,3,2020-02-01,4011\n"
            ),
            "line 3: unparsable date '2020-13-45'",
        ),
        "one visit each": (
            write(tmp / "one.csv", header + "1,1,2020-01-01,4019\n2,1,2020-01-01,4011\n"),
            "no patient with 2\\+ visits: 2 patients",
        ),
        "no known code": (
            write(tmp / "unknown.csv", header + "1,1,2020-01-01,Q1\n1,2,2020-01-02,Q2\n"),
            "no known code: none of the 2 distinct codes is in ontology tiny",
        ),
        "empty file": (write(tmp / "empty.csv", ""), "empty file"),
        "header only": (write(tmp / "header.csv.gz", header, gz=True), "header only, no data rows"),
        "fake gz": (write(tmp / "fake.csv.gz", header + "1,1,2020-01-01,4019\n"), "not gzip-compressed"),
        "binary": (tmp / "garbage.csv", "binary data"),
        "truncated gz": (tmp / "cut.csv.gz", "corrupt or truncated"),
        "ragged rows": (write(tmp / "ragged.csv", header + "1,1,2020-01-01,4019\n1,2\n"), "unreadable CSV"),
        "empty time without visit": (
            write(tmp / "notime.csv", "patient,time,code\n1,2020-01-01,4019\n1,,4011\n"),
            "line 3: empty time, and no visit column",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "empty folder",
        "mimic without diagnoses",
        "mimic without admittime",
        "renamed column",
        "no visit or time",
        "bad date",
        "one visit each",
        "no known code",
        "empty file",
        "header only",
        "fake gz",
        "binary",
        "truncated gz",
        "ragged rows",
        "empty time without visit",
    ],
)
def test_bad_input_is_a_clear_input_error(case, tiny, tmp_path):
    (tmp_path / "garbage.csv").write_bytes(bytes(range(256)) * 50)
    rows = "".join(f"{i % 997},{i % 13},{(i * 7919) % 100003}\n" for i in range(20000))
    packed = gzip.compress(("patient,visit,code\n" + rows).encode())
    (tmp_path / "cut.csv.gz").write_bytes(packed[: len(packed) // 2])
    path, message = bad_cases(tmp_path)[case]
    with pytest.raises(InputError, match=message) as caught:
        load_visits(path, tiny)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith(str(path)) or case.startswith("mimic")


def test_columns_are_refused_for_mimic_folders(icd9):
    with pytest.raises(InputError, match="--columns applies to long CSV files"):
        load_visits(MIMIC3, icd9, columns={"code": "icd9_code"})
