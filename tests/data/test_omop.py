"""OMOP CDM folders (issue #21): the MIMIC-IV demo written as OMOP tables (CSV or parquet) gives
exactly the MIMIC-IV loader's visits; systems from the concept table or the codes; one-line errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from testdata import MIMIC4

import hapnet
from hapnet.data.loaders import load_visits
from hapnet.data.visits import VisitData
from hapnet.errors import InputError
from hapnet.ontology.graph import Ontology


@pytest.fixture(scope="module")
def icd9_icd10() -> Ontology:
    return hapnet.load_ontology("icd9-icd10")


@pytest.fixture(scope="module")
def mimic(icd9_icd10) -> VisitData:
    return load_visits(MIMIC4, icd9_icd10)


@pytest.fixture(scope="module")
def demo() -> tuple[pd.DataFrame, pd.DataFrame]:
    admissions = pd.read_csv(MIMIC4 / "hosp" / "admissions.csv.gz", dtype=str)
    diagnoses = pd.read_csv(MIMIC4 / "hosp" / "diagnoses_icd.csv.gz", dtype=str)
    return admissions, diagnoses


def omop_tables(demo) -> dict[str, pd.DataFrame]:
    """The demo as OMOP tables: persons = subjects, visits = admissions, conditions = diagnoses with
    their source concept (one per ICD code) in a concept table of vocabularies ICD9CM / ICD10CM."""
    admissions, diagnoses = demo
    concepts = diagnoses[["icd_version", "icd_code"]].drop_duplicates().reset_index(drop=True)
    concepts["concept_id"] = (np.arange(len(concepts)) + 45_000_000).astype(str)
    rows = diagnoses.merge(concepts, on=["icd_version", "icd_code"]).merge(
        admissions[["hadm_id", "admittime"]], on="hadm_id"
    )
    rows = rows.set_index(diagnoses.index)  # merge keeps the left rows' order
    return {
        "person": pd.DataFrame(
            {"person_id": admissions.subject_id.drop_duplicates(), "gender_concept_id": 0}
        ),
        "visit_occurrence": pd.DataFrame(
            {
                "visit_occurrence_id": admissions.hadm_id,
                "person_id": admissions.subject_id,
                "visit_concept_id": 9201,
                "visit_start_date": admissions.admittime.str.slice(0, 10),
                "visit_start_datetime": admissions.admittime,
            }
        ),
        "condition_occurrence": pd.DataFrame(
            {
                "condition_occurrence_id": np.arange(len(rows)) + 1,
                "person_id": rows.subject_id,
                "condition_concept_id": 0,
                "condition_start_date": rows.admittime.str.slice(0, 10),
                "visit_occurrence_id": rows.hadm_id,
                "condition_source_value": rows.icd_code,
                "condition_source_concept_id": rows.concept_id,
            }
        ),
        "concept": pd.DataFrame(
            {
                "concept_id": concepts.concept_id,
                "concept_name": "a name, with a comma",
                "vocabulary_id": np.where(concepts.icd_version == "9", "ICD9CM", "ICD10CM"),
                "concept_code": concepts.icd_code,
            }
        ),
    }


def write_omop(root: Path, tables: dict[str, pd.DataFrame], kind: str = "csv") -> Path:
    """CSV (upper-case names, person gzipped) or parquet (conditions as a folder of two parts)."""
    root.mkdir(parents=True)
    for name, frame in tables.items():
        if kind == "csv":
            path = root / (f"{name}.csv.gz" if name == "person" else f"{name.upper()}.csv")
            frame.to_csv(path, index=False)
        elif name == "condition_occurrence":
            (root / name).mkdir()
            half = len(frame) // 2
            frame.iloc[:half].to_parquet(root / name / "part-0.parquet", index=False)
            frame.iloc[half:].to_parquet(root / name / "part-1.parquet", index=False)
        else:
            frame.to_parquet(root / f"{name}.parquet", index=False)
    return root


def by_patient_id(data: VisitData) -> VisitData:
    return data.subset(np.argsort(data.patient_ids, kind="stable"))


def assert_same_visits(a: VisitData, b: VisitData, times: bool = True) -> None:
    a, b = by_patient_id(a), by_patient_id(b)
    assert list(a.patient_ids) == list(b.patient_ids)
    np.testing.assert_array_equal(a.patient_offsets, b.patient_offsets)
    np.testing.assert_array_equal(a.visit_offsets, b.visit_offsets)
    np.testing.assert_array_equal(a.codes, b.codes)
    if times:
        np.testing.assert_array_equal(a.visit_times, b.visit_times)


# ----------------------------------------------------------------------------- the MIMIC-IV demo
@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_omop_of_the_mimic4_demo_gives_the_mimic4_loaders_visits(
    kind, demo, icd9_icd10, mimic, tmp_path, recwarn
):
    tables = omop_tables(demo)
    data = load_visits(write_omop(tmp_path / "omop", tables, kind), icd9_icd10)
    assert_same_visits(data, mimic)
    assert not recwarn.list, [str(w.message) for w in recwarn]
    report = data.report
    assert (report.kind, report.patients, report.input_rows) == ("omop", 48, 4506)
    assert (report.exact_codes, report.mapped_codes, report.unknown_codes) == (1469, 5, 0)
    assert (report.other_events, report.admissions_without_diagnoses) == (0, 0)


def test_without_a_concept_table_codes_and_visits_tell_the_system(demo, icd9_icd10, mimic, tmp_path):
    tables = omop_tables(demo)
    del tables["concept"]
    data = load_visits(write_omop(tmp_path / "omop", tables), icd9_icd10)
    assert_same_visits(data, mimic)
    # E and V codes of ICD-9 (V707, E8497) are also ICD-10's shape: their visits decided
    assert any("497 diagnosis rows have codes that could be ICD-9 or ICD-10" in n for n in data.report.notes)
    assert any(
        "497 took the system of the other codes of their visit, 0 were left out" in n
        for n in data.report.notes
    )


def visits_by_day(data: VisitData, merge: bool) -> dict[str, list[tuple[float, tuple[int, ...]]]]:
    """Each patient's visits as (day, codes), sorted; with `merge`, the visits of one day as one."""
    result = {}
    data = by_patient_id(data)
    for p, patient in enumerate(data.patient_ids):
        first = data.patient_offsets[p]
        visits: dict = {}
        for i, codes in enumerate(data.visits_of(p)):
            day = float(np.floor(data.visit_times[first + i] / 86_400))
            key = day if merge else (day, i)
            visits[key] = visits.get(key, set()) | set(codes.tolist())
        result[str(patient)] = sorted(
            (k if merge else k[0], tuple(sorted(codes))) for k, codes in visits.items()
        )
    return result


def test_without_visit_occurrence_or_visit_ids_visits_are_condition_dates(demo, icd9_icd10, mimic, tmp_path):
    """Without visit_occurrence, visits are timed by their conditions' start date; without visit
    ids, a visit is the person's conditions of one date: patient 10002930's two admissions of
    2193-08-05 become one visit."""
    tables = omop_tables(demo)
    del tables["visit_occurrence"]
    by_id = load_visits(write_omop(tmp_path / "ids", tables), icd9_icd10)
    assert visits_by_day(by_id, merge=False) == visits_by_day(mimic, merge=False)
    tables["condition_occurrence"] = tables["condition_occurrence"].drop(columns="visit_occurrence_id")
    by_date = load_visits(write_omop(tmp_path / "dates", tables), icd9_icd10)
    assert by_date.num_visits == mimic.num_visits - 1
    assert visits_by_day(by_date, merge=True) == visits_by_day(mimic, merge=True)


def test_a_visit_of_undecidable_codes_only_is_left_out_with_a_warning(icd9_icd10, tmp_path):
    conditions = pd.DataFrame(
        {
            "person_id": [1, 1, 1, 1],
            "visit_occurrence_id": [10, 10, 20, 30],
            "condition_start_date": ["2100-01-01", "2100-01-01", "2100-02-01", "2100-03-01"],
            "condition_source_value": ["401.9", "V70.7", "V70.7", "I10"],
        }
    )
    write_omop(tmp_path / "omop", {"condition_occurrence": conditions})
    with pytest.warns(UserWarning, match="2 diagnosis rows .* 1 took the system .* 1 were left out"):
        data = load_visits(tmp_path / "omop", icd9_icd10)
    ids = [{icd9_icd10.ids[c] for c in visit} for visit in data.visits_of(0)]
    assert ids == [{"ICD9:4019", "ICD9:V707"}, {"ICD10:I10"}]
    assert data.report.input_rows == 3


def test_other_vocabularies_and_unknown_persons_are_counted(demo, icd9_icd10, mimic, tmp_path):
    tables = omop_tables(demo)
    extra = tables["condition_occurrence"].iloc[:3].copy()
    extra.loc[extra.index[:2], "condition_source_concept_id"] = "4229881"  # SNOMED: no ICD code
    extra.loc[extra.index[2], "person_id"] = "99999999"  # a person of no person row
    tables["condition_occurrence"] = pd.concat([tables["condition_occurrence"], extra], ignore_index=True)
    snomed = pd.DataFrame({"concept_id": ["4229881"], "concept_name": "x", "vocabulary_id": "SNOMED"})
    tables["concept"] = pd.concat([tables["concept"], snomed], ignore_index=True)
    with pytest.warns(UserWarning, match="1 conditions of persons not in the person table left out"):
        data = load_visits(write_omop(tmp_path / "omop", tables), icd9_icd10)
    assert_same_visits(data, mimic)
    report = data.report
    assert (report.other_events, report.orphan_rows) == (2, 1)
    assert dict(report.as_rows())["conditions of other vocabularies"] == "2"
    assert "no person (empty person_id or not in person)" in dict(report.as_rows())["dropped rows"]


def test_omop_with_a_single_system_ontology_warns_once(demo, tmp_path):
    folder = write_omop(tmp_path / "omop", omop_tables(demo))
    with pytest.warns(UserWarning, match="mix ICD-9 and ICD-10 .*use --ontology icd9-icd10") as caught:
        load_visits(folder, hapnet.load_ontology("icd9-ccs"))
    assert len([w for w in caught if "mix ICD-9" in str(w.message)]) == 1


def test_options_of_other_sources_are_refused(demo, icd9_icd10, tmp_path):
    folder = write_omop(tmp_path / "omop", omop_tables(demo))
    with pytest.raises(InputError, match="--columns applies to long CSV files, not to OMOP folders"):
        load_visits(folder, icd9_icd10, columns={"code": "x"})
    with pytest.raises(InputError, match="--code-pattern applies to MEDS datasets"):
        load_visits(folder, icd9_icd10, code_pattern="(.+)")


# ----------------------------------------------------------------------------- bad input
CONDITIONS = "person_id,visit_occurrence_id,condition_start_date,condition_source_value\n"


def bad(root: Path, files: dict[str, str | bytes]) -> Path:
    root.mkdir()
    for name, content in files.items():
        (root / name).write_bytes(content.encode() if isinstance(content, str) else content)
    return root


BAD = {
    "no source value": (
        {"condition_occurrence.csv": "person_id,condition_start_date,condition_concept_id\n1,2100-01-01,3\n"},
        "condition_occurrence.csv, line 1: no code column: .*expected condition_source_value",
    ),
    "no start date": (
        {"condition_occurrence.csv": "person_id,condition_source_value\n1,4019\n"},
        "line 1: no condition_start_date or condition_start_datetime column",
    ),
    "tab-separated": (
        {"condition_occurrence.csv": CONDITIONS.replace(",", "\t") + "1\t10\t2100-01-01\t4019\n"},
        "line 1: tab-separated",
    ),
    "bad date": (
        {"condition_occurrence.csv": CONDITIONS + "1,10,2100-01-01,4019\n1,11,2100-31-31,4011\n"},
        "line 3: unparsable date '2100-31-31'",
    ),
    "header only": ({"condition_occurrence.csv": CONDITIONS}, "header only, no data rows"),
    "visit on two persons": (
        {
            "condition_occurrence.csv": CONDITIONS + "1,10,2100-01-01,4019\n1,11,2100-02-01,4011\n",
            "visit_occurrence.csv": "visit_occurrence_id,person_id,visit_start_date\n10,1,2100-01-01\n"
            "11,1,2100-02-01\n10,2,2100-01-01\n",
        },
        "visit_occurrence.csv, line 4: visit_occurrence_id 10 also on line 2 with another person_id \\(1 vs",
    ),
    "condition of another person than its visit": (
        {
            "condition_occurrence.csv": CONDITIONS + "1,10,2100-01-01,4019\n2,11,2100-02-01,4011\n",
            "visit_occurrence.csv": "visit_occurrence_id,person_id,visit_start_date\n10,1,2100-01-01\n"
            "11,1,2100-02-01\n",
        },
        "condition_occurrence.csv, line 3: person_id 2 but its visit_occurrence_id 11 is of person_id 1",
    ),
    "garbage parquet": ({"condition_occurrence.parquet": bytes(range(256)) * 4}, "not a parquet file"),
    "fake gzip": ({"condition_occurrence.csv.gz": CONDITIONS}, "not gzip-compressed"),
    "concept without vocabulary": (
        {
            "condition_occurrence.csv": "person_id,condition_start_date,condition_source_value,"
            "condition_source_concept_id\n1,2100-01-01,4019,5\n1,2100-02-01,4011,6\n",
            "CONCEPT.csv": "concept_id,concept_name\n5,x\n",
        },
        "CONCEPT.csv, line 1: no vocabulary column",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_omop_input_is_one_line(case, icd9_icd10, tmp_path):
    files, message = BAD[case]
    folder = bad(tmp_path / "omop", files)
    with pytest.raises(InputError, match=message) as caught:
        load_visits(folder, icd9_icd10)
    assert "\n" not in str(caught.value)


def test_gzipped_tables_read_like_plain_ones(icd9_icd10, tmp_path):
    text = CONDITIONS + "1,10,2100-01-01,401.9\n1,11,2100-02-01,I10\n"
    plain = load_visits(bad(tmp_path / "a", {"condition_occurrence.csv": text}), icd9_icd10)
    packed = load_visits(
        bad(tmp_path / "b", {"Condition_Occurrence.csv.gz": gzip.compress(text.encode())}), icd9_icd10
    )
    assert [icd9_icd10.ids[c] for c in plain.codes] == ["ICD9:4019", "ICD10:I10"]
    np.testing.assert_array_equal(plain.codes, packed.codes)
