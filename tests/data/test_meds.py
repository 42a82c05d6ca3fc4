"""MEDS datasets (issue #21): the MIMIC-IV demo written as MEDS gives exactly the MIMIC-IV loader's
visits; the visit rule, --code-pattern, --split meds, `meds:DIR` ontologies and one-line errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import meds
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from testdata import MIMIC4
from typer.testing import CliRunner

import hapnet
from hapnet.data.loaders import load_visits
from hapnet.data.splits import dataset_split, split_patients
from hapnet.data.visits import VisitData
from hapnet.errors import HapnetError, InputError
from hapnet.ontology import meds_codes
from hapnet.ontology.builtins import load_ontology
from hapnet.ontology.graph import Ontology
from hapnet.ontology.icd_systems import ICD9, ICD10, UNDECIDED, system_by_shape
from hapnet.ontology.meds_codes import MedsCodes

SCHEMA = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string())])
VISIT_SCHEMA = SCHEMA.append(pa.field("hadm_id", pa.int64()))


@pytest.fixture(scope="module")
def icd9_icd10() -> Ontology:
    return hapnet.load_ontology("icd9-icd10")


@pytest.fixture(scope="module")
def tiny() -> Ontology:
    """ROOT(0); 401(1), 250(2); 4019(3), 4011(4), 2500(5), 2501(6)."""
    return Ontology.from_edges("tiny", [("401", "4019"), ("401", "4011"), ("250", "2500"), ("250", "2501")])


@pytest.fixture(scope="module")
def demo() -> tuple[pd.DataFrame, pd.DataFrame]:
    admissions = pd.read_csv(MIMIC4 / "hosp" / "admissions.csv.gz", dtype=str)
    diagnoses = pd.read_csv(MIMIC4 / "hosp" / "diagnoses_icd.csv.gz", dtype=str)
    return admissions, diagnoses


def write_meds(
    root: Path, events: pd.DataFrame, schema: pa.Schema = SCHEMA, splits: dict[int, str] | None = None
) -> Path:
    """A MEDS folder: the events sorted by subject and time in two shards, and the split labels."""
    (root / "data" / "train").mkdir(parents=True)
    (root / "metadata").mkdir()
    events = events.sort_values(["subject_id", "time"], kind="stable")
    table = pa.Table.from_pandas(events[schema.names], preserve_index=False).cast(schema)
    half = len(table) // 2
    pq.write_table(table.slice(0, half), root / "data" / "0.parquet")  # read first: files in path order
    pq.write_table(table.slice(half), root / "data" / "train" / "1.parquet")
    if splits is not None:
        frame = pa.table({"subject_id": pa.array(list(splits), pa.int64()), "split": list(splits.values())})
        pq.write_table(frame, root / meds_codes.SPLITS_FILE)
    return root


def demo_splits(admissions: pd.DataFrame) -> dict[int, str]:
    """train / tuning / held_out by the subjects' order: 7 / 1 / 2 of every 10."""
    subjects = sorted(admissions.subject_id.astype(np.int64).unique())
    names = ["train"] * 7 + ["tuning"] + ["held_out"] * 2
    return {int(s): names[i % 10] for i, s in enumerate(subjects)}


def extract_form(root: Path, demo, splits: bool = True) -> Path:
    """As MIMIC-IV MEDS-Extract writes it: DIAGNOSIS//ICD//9//4280 at the discharge time with the
    hadm_id, HOSPITAL_ADMISSION//... at the admission time, and other events (a lab per admission)."""
    admissions, diagnoses = demo
    rows = diagnoses.merge(admissions[["hadm_id", "dischtime"]], on="hadm_id")
    frames = [
        pd.DataFrame(
            {
                "subject_id": admissions.subject_id.astype(np.int64),
                "time": pd.to_datetime(admissions.admittime),
                "code": "HOSPITAL_ADMISSION//"
                + admissions.admission_type
                + "//"
                + admissions.admission_location,
                "hadm_id": admissions.hadm_id.astype(np.int64),
            }
        ),
        pd.DataFrame(
            {
                "subject_id": rows.subject_id.astype(np.int64),
                "time": pd.to_datetime(rows.dischtime),
                "code": "DIAGNOSIS//ICD//" + rows.icd_version + "//" + rows.icd_code,
                "hadm_id": rows.hadm_id.astype(np.int64),
            }
        ),
        pd.DataFrame(
            {
                "subject_id": admissions.subject_id.astype(np.int64),
                "time": pd.to_datetime(admissions.admittime) + pd.Timedelta(hours=1),
                "code": "LAB//50912//mg/dL",
                "hadm_id": admissions.hadm_id.astype(np.int64),
            }
        ),
    ]
    return write_meds(root, pd.concat(frames), VISIT_SCHEMA, demo_splits(admissions) if splits else None)


def dotted(code: str) -> str:
    return code[:3] + "." + code[3:] if len(code) > 3 else code


def cm_form(root: Path, demo) -> Path:
    """ICD9CM//428.0 / ICD10CM//I50.9 at the admission time, no visit ids: visits are timestamps."""
    admissions, diagnoses = demo
    rows = diagnoses.merge(admissions[["hadm_id", "admittime"]], on="hadm_id")
    events = pd.DataFrame(
        {
            "subject_id": rows.subject_id.astype(np.int64),
            "time": pd.to_datetime(rows.admittime),
            "code": [f"ICD{v}CM//{dotted(c)}" for v, c in zip(rows.icd_version, rows.icd_code, strict=True)],
        }
    )
    return write_meds(root, events, SCHEMA, demo_splits(admissions))


def by_patient_id(data: VisitData) -> VisitData:
    return data.subset(np.argsort(data.patient_ids, kind="stable"))


def assert_same_visits(a: VisitData, b: VisitData) -> None:
    """The same patients, visits (in time order), codes and visit times, whatever the patient order."""
    a, b = by_patient_id(a), by_patient_id(b)
    assert list(a.patient_ids) == list(b.patient_ids)
    np.testing.assert_array_equal(a.patient_offsets, b.patient_offsets)
    np.testing.assert_array_equal(a.visit_offsets, b.visit_offsets)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.visit_times, b.visit_times)


# ----------------------------------------------------------------------------- the MIMIC-IV demo
@pytest.mark.parametrize("form", [extract_form, cm_form])
def test_meds_of_the_mimic4_demo_gives_the_mimic4_loaders_visits(form, demo, icd9_icd10, tmp_path, recwarn):
    folder = form(tmp_path / "meds", demo)
    data = load_visits(folder, icd9_icd10)
    mimic = load_visits(MIMIC4, icd9_icd10)
    assert_same_visits(data, mimic)
    assert not [w for w in recwarn if "ICD-10" in str(w.message)]
    report = data.report
    assert (report.kind, report.patients, report.input_rows) == ("meds", 48, 4506)
    assert (report.exact_codes, report.mapped_codes, report.unknown_codes) == (1469, 5, 0)
    if form is extract_form:  # 275 admission and 275 lab events, counted and left out
        assert report.other_events == 550
        assert report.other_kinds == {"HOSPITAL_ADMISSION": 275, "LAB": 275}
        assert (
            dict(report.as_rows())["other events (not diagnoses)"] == "550 (HOSPITAL_ADMISSION 275, LAB 275)"
        )
    else:
        assert report.other_events == 0


def test_meds_with_a_single_system_ontology_warns_once(demo, tmp_path):
    folder = extract_form(tmp_path / "meds", demo)
    with pytest.warns(
        UserWarning, match="mix ICD-9 and ICD-10.*ICD-9: 2,193 rows, ICD-10: 2,313 rows"
    ) as caught:
        data = load_visits(folder, load_ontology("icd9-ccs"))
    assert len([w for w in caught if "mix ICD-9" in str(w.message)]) == 1
    assert data.report.unknown_rows > 2000  # the ICD-10 rows
    assert any("icd9-icd10" in note for note in data.report.notes)


# ----------------------------------------------------------------------------- the visit rule
def t(text: str) -> pd.Timestamp:
    return pd.Timestamp(text)


def test_visits_by_admission_id_timestamp_and_what_is_left_out(tiny, tmp_path):
    """Subject 1: hadm 20 (admitted Jan 5, diagnosed Jan 9) comes after hadm 10 (admitted Jan 1,
    diagnosed Jan 20): visits follow the admission events. Subject 2: no visit ids, visits are the
    diagnoses of one time; a diagnosis without time or visit id belongs to no visit."""
    events = pd.DataFrame(
        [
            (1, t("2100-01-01"), "HOSPITAL_ADMISSION//URGENT//ER", 10),
            (1, t("2100-01-05"), "HOSPITAL_ADMISSION//ELECTIVE//X", 20),
            (1, t("2100-01-09"), "ICD9CM//250.0", 20),
            (1, t("2100-01-09"), "ICD9CM//401.9", 20),
            (1, t("2100-01-20"), "ICD9CM//401.1", 10),
            (1, t("2100-01-20"), "LAB//1//mg", 10),
            (1, t("2100-01-30"), "HOSPITAL_ADMISSION//ELECTIVE//X", 30),  # no diagnosis
            (2, t("2100-02-01"), "ICD9CM//250.1", None),
            (2, t("2100-02-01"), "ICD9CM//401.9", None),
            (2, t("2100-03-01"), "ICD9CM//401.1", None),
            (2, None, "ICD9CM//250.0", None),
            (2, None, "MEDS_BIRTH", None),
        ],
        columns=["subject_id", "time", "code", "hadm_id"],
    )
    with pytest.warns(UserWarning, match="1 diagnosis events have neither a time nor a visit id"):
        data = by_patient_id(load_visits(write_meds(tmp_path / "m", events, VISIT_SCHEMA), tiny))
    assert list(data.patient_ids) == ["1", "2"]
    assert [list(v) for v in data.visits_of(0)] == [[4], [3, 5]]  # hadm 10 (4011), hadm 20 (4019, 2500)
    assert [list(v) for v in data.visits_of(1)] == [[3, 6], [4]]
    day = 86_400.0
    start = pd.Timestamp("2100-01-01").value / 1e9
    np.testing.assert_array_equal(data.visit_times, start + day * np.array([0, 4, 31, 59]))
    report = data.report  # 3 admissions, a lab, a birth; 7 diagnoses, one of no visit
    assert (report.other_events, report.admissions_without_diagnoses, report.input_rows) == (5, 1, 6)
    assert any("1 diagnosis events have neither a time nor a visit id" in note for note in report.notes)
    assert data.patient_splits is None  # no metadata/subject_splits.parquet


def test_visit_ids_written_as_strings_or_floats_read_alike(tiny, tmp_path):
    events = pd.DataFrame(
        [
            (1, t("2100-01-01"), "ICD9CM//401.9", "a"),
            (1, t("2100-01-01"), "ICD9CM//250.0", "b"),
            (1, t("2100-01-01"), "ICD9CM//401.1", "a"),
        ],
        columns=["subject_id", "time", "code", "hadm_id"],
    )
    as_text = load_visits(
        write_meds(tmp_path / "s", events, SCHEMA.append(pa.field("hadm_id", pa.string()))), tiny
    )
    events["hadm_id"] = [1.0, 2.0, 1.0]
    as_float = load_visits(
        write_meds(tmp_path / "f", events, SCHEMA.append(pa.field("hadm_id", pa.float64()))), tiny
    )
    for data in (as_text, as_float):  # two visits of one time, told apart by their ids
        assert [list(v) for v in data.visits_of(0)] == [[3, 4], [5]]


# ----------------------------------------------------------------------------- code forms
@pytest.mark.parametrize(
    "raw, expected",
    [
        ("ICD9CM//428.0", (ICD9, "4280")),
        ("ICD10CM//I50.9", (ICD10, "I509")),
        ("DIAGNOSIS//ICD//9//4280", (ICD9, "4280")),
        ("DIAGNOSIS//ICD//10//I509", (ICD10, "I509")),
        ("ICD9CM/428.0", (ICD9, "4280")),  # OMOP-style parent_codes
        ("ICD10PCS//0210093", None),
        ("PROCEDURE//ICD//9//3961", None),
        ("LAB//50912//mg/dL", None),
        ("MEDS_BIRTH", None),
    ],
)
def test_known_diagnosis_forms(raw, expected):
    assert MedsCodes().diagnosis(raw) == expected


def test_code_pattern_reads_other_forms(tiny, icd9_icd10, tmp_path):
    events = pd.DataFrame(
        [
            (1, t("2100-01-01"), "DX/9/401.9"),
            (1, t("2100-01-02"), "DX/9/250.00"),
            (1, t("2100-01-02"), "ICD9CM//401.1"),  # a known form, but not the pattern's: left out
        ],
        columns=["subject_id", "time", "code"],
    )
    folder = write_meds(tmp_path / "m", events)
    data = load_visits(folder, tiny, code_pattern=r"DX/\d+/(\S+)")
    assert [list(v) for v in data.visits_of(0)] == [[3], [5]] and data.report.other_events == 1
    # a `version` group gives the system, which the combined ontology needs
    combined = load_visits(folder, icd9_icd10, code_pattern=r"DX/(?P<version>9|10)/(?P<code>\S+)")
    ids = [icd9_icd10.ids[i] for i in combined.codes]
    assert ids == ["ICD9:4019", "ICD9:25000"]
    with pytest.raises(InputError, match="no diagnosis event among its 3 events.*--code-pattern 'Z//"):
        load_visits(folder, tiny, code_pattern="Z//(.+)")


@pytest.mark.parametrize(
    "pattern, message",
    [("DX//(", "not a regular expression"), ("DX//.+", "no group; group 1")],
)
def test_bad_code_patterns_are_refused(pattern, message, tiny, tmp_path):
    with pytest.raises(HapnetError, match=message):
        load_visits(MIMIC4, tiny, code_pattern=pattern)


def test_code_pattern_is_refused_for_other_sources(tiny):
    with pytest.raises(InputError, match="--code-pattern applies to MEDS datasets"):
        load_visits(MIMIC4, tiny, code_pattern="DX//(.+)")


@pytest.mark.parametrize(
    "code, system",
    [
        ("4019", ICD9),
        ("25000", ICD9),
        ("E9320", ICD9),
        ("E119", ICD10),
        ("E11", ICD10),
        ("I509", ICD10),
        ("T814XXA", ICD10),
        ("V0001XA", ICD10),
        ("V707", UNDECIDED),
        ("E8798", UNDECIDED),
        ("E871", UNDECIDED),
        ("E030", UNDECIDED),
        ("E039", ICD10),
    ],
)
def test_system_by_shape(code, system):
    assert system_by_shape(code) == system


def test_file_and_split_names_are_the_meds_packages():
    assert meds_codes.DATA_FOLDER == meds.data_subdirectory
    assert meds_codes.CODES_FILE == meds.code_metadata_filepath
    assert meds_codes.SPLITS_FILE == meds.subject_splits_filepath
    assert meds_codes.DATASET_FILE == meds.dataset_metadata_filepath
    assert (meds_codes.TRAIN, meds_codes.TUNING, meds_codes.HELD_OUT) == (
        meds.train_split,
        meds.tuning_split,
        meds.held_out_split,
    )


# ----------------------------------------------------------------------------- --split meds
def test_split_meds_follows_subject_splits(demo, icd9_icd10, tmp_path):
    folder = extract_form(tmp_path / "meds", demo)
    data = load_visits(folder, icd9_icd10)
    labels = demo_splits(demo[0])
    split = dataset_split(data, "meds", seed=0)
    for ours, theirs in (("train", "train"), ("valid", "tuning"), ("test", "held_out")):
        chosen = getattr(split, ours)
        assert list(chosen) == sorted(chosen) and len(chosen) > 0
        assert {labels[int(p)] for p in data.patient_ids[chosen]} == {theirs}
    assert len(split.train) + len(split.valid) + len(split.test) == data.num_patients
    # the labels follow the patients through subset
    part = data.subset(split.test[::-1])
    assert set(part.patient_splits) == {"held_out"} and len(part.patient_splits) == len(split.test)
    random = dataset_split(data, "random", seed=3)
    expected = split_patients(data.num_patients, 3)
    assert all(np.array_equal(getattr(random, s), getattr(expected, s)) for s in ("train", "valid", "test"))


def test_split_meds_refusals_and_unlabelled_patients(demo, icd9_icd10, tmp_path):
    with pytest.raises(HapnetError, match="--split meds: .* has no split labels"):
        dataset_split(load_visits(MIMIC4, icd9_icd10), "meds", seed=0)
    admissions = demo[0]
    no_tuning = {s: ("train" if label == "tuning" else label) for s, label in demo_splits(admissions).items()}
    folder = extract_form(tmp_path / "a", demo, splits=False)
    frame = pa.table({"subject_id": pa.array(list(no_tuning), pa.int64()), "split": list(no_tuning.values())})
    pq.write_table(frame, folder / meds_codes.SPLITS_FILE)
    with pytest.raises(HapnetError, match="is in split tuning; their split labels: train"):
        dataset_split(load_visits(folder, icd9_icd10), "meds", seed=0)
    # a subject without a label, another with an unknown one: warned, left out of every split
    some = demo_splits(admissions)
    data = load_visits(extract_form(tmp_path / "b", demo), icd9_icd10)
    first, second = data.patient_ids[:2]
    del some[int(first)]
    some[int(second)] = "extra"
    pq.write_table(
        pa.table({"subject_id": pa.array(list(some), pa.int64()), "split": list(some.values())}),
        tmp_path / "b" / meds_codes.SPLITS_FILE,
    )
    data = load_visits(tmp_path / "b", icd9_icd10)
    with pytest.warns(UserWarning, match=r"2 patients .* take no part \(.*extra: 1"):
        split = dataset_split(data, "meds", seed=0)
    assert len(split.train) + len(split.valid) + len(split.test) == data.num_patients - 2


def test_a_subject_in_two_splits_is_refused(tiny, tmp_path):
    events = pd.DataFrame([(1, t("2100-01-01"), "ICD9CM//401.9")], columns=["subject_id", "time", "code"])
    folder = write_meds(tmp_path / "m", events, splits={1: "train"})
    pq.write_table(
        pa.table({"subject_id": pa.array([1, 1], pa.int64()), "split": ["train", "held_out"]}),
        folder / meds_codes.SPLITS_FILE,
    )
    with pytest.raises(InputError, match="subject_splits.parquet: subject_id 1 is in two splits"):
        load_visits(folder, tiny)


# ----------------------------------------------------------------------------- meds:DIR ontologies
def write_codes(folder: Path, rows: list[tuple[str, str | None, list[str] | None]]) -> Path:
    codes, descriptions, parents = zip(*rows, strict=True)
    table = pa.table(
        {
            "code": list(codes),
            "description": list(descriptions),
            "parent_codes": pa.array(list(parents), pa.list_(pa.string())),
        }
    )
    folder.joinpath("metadata").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / meds_codes.CODES_FILE)
    return folder


CODES = [
    ("DIAGNOSIS//ICD//9//4019", "Hypertension NOS", ["ICD9CM/401.9", "ICD9CM//401"]),
    ("DIAGNOSIS//ICD//9//4011", "Benign hypertension", ["ICD9CM//401"]),
    ("ICD9CM//401", "Essential hypertension", None),
    ("DIAGNOSIS//ICD//10//I10", "Essential (primary) hypertension", ["ICD10CM/I10", "SNOMED/59621000"]),
    ("SNOMED/59621000", "Essential hypertension (SNOMED)", None),
    ("LAB//50912//mg/dL", "Creatinine", ["LOINC/2160-0"]),
    ("MEDS_BIRTH", None, None),
]


def test_meds_ontology_from_codes_parquet(tmp_path):
    folder = write_codes(tmp_path / "m", CODES)
    onto = load_ontology(f"meds:{folder}")
    assert onto.name == "meds:m" and onto.source == f"meds:{folder}"
    # labs, birth and LOINC are no diagnosis and no ancestor of one; ICD9CM/401.9 reads as the code
    # (ICD10:I10 hangs under its SNOMED parent: no ICD-10 code is left for a node ICD10)
    assert sorted(onto.ids) == sorted(
        ["<ROOT>", "ICD9", "ICD9:401", "ICD9:4019", "ICD9:4011", "ICD10:I10", "SNOMED/59621000"]
    )
    parent = {onto.ids[c]: onto.ids[p] for p, c in zip(onto.edge_parent, onto.edge_child, strict=True)}
    assert parent["ICD9:4019"] == parent["ICD9:4011"] == "ICD9:401" and parent["ICD9:401"] == "ICD9"
    assert parent["ICD10:I10"] == "SNOMED/59621000" and parent["SNOMED/59621000"] == "<ROOT>"
    assert onto.descriptions[onto.index("ICD9:401.1")] == "Benign hypertension"
    assert onto.descriptions[onto.index("ICD9")] == "ICD-9-CM"
    # cached by content: the second load reads the cache, a changed file is read again
    assert load_ontology(f"meds:{folder}").fingerprint() == onto.fingerprint()
    write_codes(folder, CODES[1:])
    assert "ICD9:4019" not in load_ontology(f"meds:{folder}")


def test_meds_data_on_its_own_ontology_are_exact(demo, tmp_path):
    admissions, diagnoses = demo
    folder = extract_form(tmp_path / "meds", demo)
    pairs = diagnoses[["icd_version", "icd_code"]].drop_duplicates()
    rows = [
        (f"DIAGNOSIS//ICD//{v}//{c}", f"code {c}", [f"ICD{v}CM/{dotted(c)}", f"ICD{v}CM//{c[:3]}"])
        for v, c in zip(pairs.icd_version, pairs.icd_code, strict=True)
    ]
    write_codes(folder, rows + [("LAB//50912//mg/dL", "Creatinine", None)])
    onto = load_ontology(f"meds:{folder}")
    data = load_visits(folder, onto)
    assert (data.report.exact_rows, data.report.mapped_rows, data.report.unknown_rows) == (4506, 0, 0)
    mimic = load_visits(MIMIC4, hapnet.load_ontology("icd9-icd10"))
    a, b = by_patient_id(data), by_patient_id(mimic)
    assert list(a.patient_ids) == list(b.patient_ids)
    np.testing.assert_array_equal(a.visit_offsets, b.visit_offsets)
    codes = {(v, c) for v, c in pairs.itertuples(index=False)}
    assert len(onto) == 3 + len(
        codes | {(v, c[:3]) for v, c in codes}
    )  # root, ICD9, ICD10, codes, categories


def test_meds_ontology_with_a_code_pattern(tmp_path):
    folder = write_codes(
        tmp_path / "m", [("DX/401.9", "x", ["DX/401"]), ("DX/401", "y", None), ("LAB/1", "z", None)]
    )
    with pytest.raises(InputError, match="codes.parquet: no diagnosis code among its 3 codes"):
        load_ontology(f"meds:{folder}")
    onto = load_ontology(f"meds:{folder}", code_pattern=r"DX/(\S+)")
    assert sorted(onto.ids) == ["<ROOT>", "ICD9", "ICD9:401", "ICD9:4019"]  # digits only: ICD-9 by shape


def codes_file(folder: Path, content: bytes | pa.Table) -> Path:
    (folder / "metadata").mkdir(parents=True)
    if isinstance(content, bytes):
        (folder / meds_codes.CODES_FILE).write_bytes(content)
    else:
        pq.write_table(content, folder / meds_codes.CODES_FILE)
    return folder


BAD_ONTOLOGIES = {
    "no folder": (lambda f: f, "no such folder \\(expected a MEDS dataset folder"),
    "no codes.parquet": (lambda f: f.mkdir() or f, "metadata/codes.parquet: file not found"),
    "cycle": (
        lambda f: write_codes(
            f, [("ICD9CM//401", "a", ["ICD9CM//4011"]), ("ICD9CM//4011", "b", ["ICD9CM//401"])]
        ),
        "cycle",
    ),
    "garbage": (lambda f: codes_file(f, b"PAR1 junk"), "codes.parquet: not a parquet file"),
    "parents as text": (
        lambda f: codes_file(f, pa.table({"code": ["ICD9CM//401"], "parent_codes": ["ICD9CM//40"]})),
        "column 'parent_codes' is string, MEDS needs list<string>",
    ),
    "no code column": (lambda f: codes_file(f, pa.table({"name": ["x"]})), "no column 'code'"),
}


@pytest.mark.parametrize("case", list(BAD_ONTOLOGIES))
def test_bad_meds_ontologies_are_one_line(case, tmp_path):
    make, message = BAD_ONTOLOGIES[case]
    folder = make(tmp_path / "m")
    with pytest.raises(InputError, match=message) as caught:
        load_ontology(f"meds:{folder}")
    assert "\n" not in str(caught.value)


# ----------------------------------------------------------------------------- bad MEDS data
def events_table(**columns: pa.Array) -> pa.Table:
    base = {
        "subject_id": pa.array([1, 1], pa.int64()),
        "time": pa.array([t("2100-01-01"), t("2100-01-02")], pa.timestamp("us")),
        "code": pa.array(["ICD9CM//401.9", "ICD9CM//250.0"]),
    }
    base.update(columns)
    return pa.table({k: v for k, v in base.items() if v is not None})


def meds_folder(root: Path, table: pa.Table | bytes | None) -> Path:
    (root / "data").mkdir(parents=True)
    (root / "metadata").mkdir()
    if isinstance(table, bytes):
        (root / "data" / "0.parquet").write_bytes(table)
    elif table is not None:
        pq.write_table(table, root / "data" / "0.parquet")
    return root


BAD_DATA = {
    "missing code": (events_table(code=None), "0.parquet: not a MEDS data file: no column 'code'"),
    "subject_id as text": (
        events_table(subject_id=pa.array(["1", "1"])),
        "column 'subject_id' is string, MEDS",
    ),
    "time as text": (events_table(time=pa.array(["2100-01-01", "x"])), "column 'time' is string, MEDS needs"),
    "code as numbers": (
        events_table(code=pa.array([4019, 2500])),
        "column 'code' is int64, MEDS needs string",
    ),
    "hadm_id as a list": (
        events_table(hadm_id=pa.array([[1], [2]])),
        "column 'hadm_id' is list<.*int64>: expected integer or string visit ids",
    ),
    "no diagnosis": (
        events_table(code=pa.array(["LAB//1", "LAB//2"])),
        "no diagnosis event among its 2 events \\(most frequent kinds: 'LAB'\\)",
    ),
    "empty data folder": (None, "data: no .parquet files: an empty MEDS dataset"),
    "garbage parquet": (bytes(range(256)) * 4, "0.parquet: not a parquet file"),
    "empty parquet": (b"", "0.parquet: not a parquet file"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_meds_data_are_one_line(case, tiny, tmp_path):
    table, message = BAD_DATA[case]
    folder = meds_folder(tmp_path / "m", table)
    with pytest.raises(InputError, match=message) as caught:
        load_visits(folder, tiny)
    assert "\n" not in str(caught.value)


def test_bad_subject_splits_are_one_line(tiny, tmp_path):
    folder = meds_folder(tmp_path / "m", events_table())
    pq.write_table(pa.table({"subject_id": ["1"], "split": ["train"]}), folder / meds_codes.SPLITS_FILE)
    with pytest.raises(
        InputError, match="subject_splits.parquet: column 'subject_id' is string, MEDS needs int64"
    ):
        load_visits(folder, tiny)


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_train_on_a_meds_folder_with_its_split(demo, tmp_path):
    from hapnet.cli.main import app

    folder = extract_form(tmp_path / "meds", demo)
    out = tmp_path / "run"
    args = ["train", "--data", str(folder), "--ontology", "icd9-icd10", "--split", "meds", "--epochs", "1"]
    args += ["--dim", "8", "--hidden", "8", "--attention-dim", "4", "--pretrain", "none", "--device", "cpu"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small validation split: said, known
        result = CliRunner().invoke(app, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["split"] == "meds" and config["data"] == str(folder)
    assert (out / "split.csv").is_file()


def test_train_with_split_meds_uses_the_datasets_split(demo, tmp_path):
    from hapnet.training.config import make_config
    from hapnet.training.trainer import train

    folder = extract_form(tmp_path / "meds", demo)
    tiny_settings = dict(
        epochs=1, dim=8, hidden=8, attention_dim=4, pretrain="none", device="cpu", model="rnn"
    )
    config = make_config(data=str(folder), ontology="icd9-icd10", split="meds", **tiny_settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(config, out=tmp_path / "run", quiet=True)
    saved = pd.read_csv(tmp_path / "run" / "split.csv", dtype=str)
    labels = demo_splits(demo[0])
    names = {"train": "train", "valid": "tuning", "test": "held_out"}
    assert all(labels[int(p)] == names[s] for p, s in zip(saved.patient_id, saved.split, strict=True))
