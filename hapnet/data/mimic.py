"""MIMIC-III and MIMIC-IV: visits = admissions (HADM_ID) ordered by ADMITTIME within SUBJECT_ID,
codes = DIAGNOSES_ICD. MIMIC-IV mixes ICD-9 and ICD-10; with the combined ontology `icd9-icd10`
its codes are namespaced `ICD9:4019` / `ICD10:I10`."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hapnet.data.csv_stream import CsvFile, stream_columns, unify_ids
from hapnet.data.table import LongTable, drop_empty_patient
from hapnet.errors import InputError
from hapnet.ontology.codes import SYSTEMS
from hapnet.ontology.graph import Ontology
from hapnet.utils.textio import list_folder


def _quiet(test: Callable[[], bool]) -> bool:
    """`path.is_dir()` or `path.is_file()`, False where the system will not say (reading it says why)."""
    try:
        return test()
    except OSError:
        return False


def _find_file(entries: list[Path], stem: str) -> Path | None:
    """`stem.csv` or `stem.csv.gz` in any letter case: a file first, else whatever bears the name (a
    folder, a link loop, an unreadable entry), so that reading it says what is wrong with it."""
    wanted = {f"{stem}.csv", f"{stem}.csv.gz"}
    matches = [p for p in entries if p.name.lower() in wanted]
    files = [p for p in matches if _quiet(p.is_file)]
    return (files or matches or [None])[0]


def find_mimic(path: Path, entries: list[Path]) -> tuple[Path, Path]:
    """MIMIC's two tables in folder `path` (its `entries`) or its `hosp/`; the last of the kinds
    the loader tries, so a folder of no known kind is refused here, naming every kind."""
    for folder in (path, path / "hosp", path / "HOSP"):
        if folder is not path and not _quiet(folder.is_dir):
            continue
        inside = entries if folder is path else list_folder(folder)
        admissions, diagnoses = _find_file(inside, "admissions"), _find_file(inside, "diagnoses_icd")
        if admissions and diagnoses:
            return admissions, diagnoses
        if admissions or diagnoses:
            missing = "DIAGNOSES_ICD.csv[.gz]" if admissions else "ADMISSIONS.csv[.gz]"
            raise InputError(folder, f"MIMIC folder without {missing}")
    found = ", ".join(p.name for p in entries[:10]) or "nothing"
    raise InputError(
        path,
        "not a visit data folder: expected ADMISSIONS + DIAGNOSES_ICD (MIMIC-III), hosp/admissions + "
        "hosp/diagnoses_icd (MIMIC-IV), data/*.parquet + metadata/ (MEDS), condition_occurrence "
        f"(OMOP) or synth.json (hapnet synth); found {found}",
    )


def read_mimic(admissions_path: Path, diagnoses_path: Path, ontology: Ontology) -> LongTable:
    """Visits = admissions (HADM_ID) ordered by ADMITTIME within SUBJECT_ID; codes = DIAGNOSES_ICD."""
    admissions = CsvFile.open(admissions_path)
    diagnoses = CsvFile.open(diagnoses_path)
    version_col = diagnoses.find(["icd_version"])
    kind = "mimic4" if version_col is not None else "mimic3"
    code_names_expected = ["icd_code"] if kind == "mimic4" else ["icd9_code", "icd_code"]
    adm_cols = {
        "patient": admissions.require("patient", ["subject_id"], " (a MIMIC ADMISSIONS table)"),
        "visit": admissions.require("admission", ["hadm_id"], " (a MIMIC ADMISSIONS table)"),
        "time": admissions.require("time", ["admittime"], " (a MIMIC ADMISSIONS table)"),
    }
    diag_cols = {
        "visit": diagnoses.require("admission", ["hadm_id"], " (a MIMIC DIAGNOSES_ICD table)"),
        "code": diagnoses.require("code", code_names_expected, " (a MIMIC DIAGNOSES_ICD table)"),
    }
    if version_col is not None:
        diag_cols["version"] = version_col
    diag_subject = diagnoses.find(["subject_id"])  # checked against the admission's, when present
    if diag_subject is not None:
        diag_cols["patient"] = diag_subject

    systems = all(s in ontology for s in SYSTEMS)  # MIMIC-IV's two systems as nodes

    def namespaced(batch: dict[str, pa.Array]) -> dict[str, pa.Array]:
        """`ICD9:4019` / `ICD10:I10`: the combined ontology's ids, built per block by pyarrow."""
        code = pc.utf8_trim_whitespace(batch["code"])
        version = pc.utf8_trim_whitespace(batch["version"]) if "version" in batch else "9"
        joined = pc.binary_join_element_wise("ICD", version, ":", code, "")
        return {**batch, "code": pc.if_else(pc.equal(code, ""), code, joined)}

    adm = stream_columns(admissions, adm_cols, typed=("patient", "visit", "time"))
    diag = stream_columns(
        diagnoses, diag_cols, typed=("visit", "patient"), transform=namespaced if systems else None
    )
    # hadm ids of both tables in one id space
    hadm_names, (adm_hadm, row_hadm) = unify_ids(adm["visit"].factorize(), diag["visit"].factorize())
    num_hadm = int(max(adm_hadm.max(initial=-1), row_hadm.max(initial=-1))) + 1
    code_names, row_code = diag["code"].factorize()

    # Admission facts per hadm id (an id on two rows must be the same admission: the first row
    # is kept). An empty subject_id is no patient, and an empty hadm_id no admission: their
    # diagnoses are orphans, never a pseudo-patient "" or one visit merged from unrelated rows.
    patient_names, adm_patient = adm["patient"].factorize()
    patient_names, adm_patient, _ = drop_empty_patient(patient_names, adm_patient)
    adm_time = adm["time"].times(admissions.path, first_line=2)
    notes: list[str] = []
    repeated = _repeated_admissions(
        admissions, adm_cols, hadm_names, adm_hadm, patient_names, adm_patient, adm_time
    )
    if repeated:
        message = (
            f"{admissions.path}: {repeated:,} repeated admission rows (same "
            f"{admissions.header[adm_cols['visit']]}, subject and time) counted once"
        )
        warnings.warn(message, stacklevel=3)
        notes.append(message)
    patient_of_hadm = np.full(num_hadm, -1, dtype=np.int64)
    time_of_hadm = np.full(num_hadm, np.nan)
    patient_of_hadm[adm_hadm[::-1]] = adm_patient[::-1]
    time_of_hadm[adm_hadm[::-1]] = adm_time[::-1]
    patient_of_hadm[np.flatnonzero(hadm_names == "")] = -1
    row_patient = patient_of_hadm[row_hadm]
    if "patient" in diag:
        _check_subjects(diagnoses, admissions, diag["patient"].factorize(), patient_names, row_patient,
                        hadm_names[row_hadm])  # fmt: skip
    if not (row_patient >= 0).any():  # else "no known code" would blame the ontology
        raise InputError(
            diagnoses.path,
            f"no diagnosis row belongs to an admission: none of their {len(np.unique(row_hadm)):,} "
            f"hadm_id values is an admission of {admissions.path.name} with a subject_id "
            f"(first: {str(hadm_names[row_hadm[0]])!r})",
        )
    with_diagnoses = np.zeros(num_hadm, dtype=bool)
    with_diagnoses[row_hadm] = True

    if kind == "mimic4" and not systems:
        versions, version_ids = diag["version"].factorize()
        counts = np.bincount(version_ids, minlength=len(versions))
        ordered = sorted(
            zip(versions.tolist(), counts.tolist(), strict=True), key=lambda item: (len(item[0]), item[0])
        )
        figures = ", ".join(f"ICD-{v}: {n:,} rows" for v, n in ordered)
        message = (
            f"MIMIC-IV mixes ICD-9 and ICD-10 codes ({figures}) but ontology {ontology.name} is "
            "single-system: codes of the other system will be unknown or mapped wrongly; "
            "use --ontology icd9-icd10"
        )
        warnings.warn(message, stacklevel=3)
        notes.append(message)
    return LongTable(
        source=str(admissions_path.parent),
        kind=kind,
        patient_names=patient_names,
        patient=row_patient,
        visit=row_hadm,
        time=time_of_hadm[row_hadm],
        code_names=code_names.tolist(),
        code=row_code,
        first_line=2,
        orphan_rows=int((row_patient < 0).sum()),
        admissions_without_diagnoses=int((~with_diagnoses[np.unique(adm_hadm)]).sum()),
        notes=notes,
    )


def _check_subjects(
    diagnoses: CsvFile,
    admissions: CsvFile,
    diag_patients: tuple[np.ndarray, np.ndarray],
    patient_names: np.ndarray,
    row_patient: np.ndarray,
    row_hadm_name: np.ndarray,
) -> None:
    """A diagnosis row's SUBJECT_ID must be its admission's: else the two tables disagree on
    whose visit it is, and one patient's codes would silently move to another."""
    names, ids = diag_patients
    index = {name: i for i, name in enumerate(patient_names.tolist())}
    as_admission_patient = np.array([index.get(name, -2) for name in names.tolist()], dtype=np.int64)
    row_subject = as_admission_patient[ids]
    known = (row_patient >= 0) & (names[ids] != "")
    wrong = np.flatnonzero(known & (row_subject != row_patient))
    if len(wrong):
        row = int(wrong[0])
        subject_col = diagnoses.header[diagnoses.find(["subject_id"])]
        raise InputError(
            diagnoses.path,
            f"{subject_col} {names[ids[row]]} but its admission {row_hadm_name[row]} is of {subject_col} "
            f"{patient_names[row_patient[row]]} in {admissions.path.name} "
            f"({len(wrong):,} such row{'s' if len(wrong) != 1 else ''})",
            line=row + 2,
        )


def _repeated_admissions(
    admissions: CsvFile,
    columns: dict[str, int],
    hadm_names: np.ndarray,
    adm_hadm: np.ndarray,
    patient_names: np.ndarray,
    adm_patient: np.ndarray,
    adm_time: np.ndarray,
) -> int:
    """Rows of ADMISSIONS that repeat a hadm id of an earlier row with the same subject and time.

    Another subject or time on a repeated hadm id is an InputError naming both lines: keeping the
    first row would move a visit to another patient, or another day, without a word.
    """
    order = np.argsort(adm_hadm, kind="stable")  # the rows of one hadm id together, in file order
    ids = adm_hadm[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    repeats = np.flatnonzero(np.r_[False, ids[1:] == ids[:-1]])
    if len(repeats) == 0:
        return 0
    row = order[repeats]
    first = order[starts[np.searchsorted(starts, repeats, side="right") - 1]]
    row_time, first_time = adm_time[row], adm_time[first]
    other_subject = adm_patient[row] != adm_patient[first]
    other_time = (row_time != first_time) & ~(np.isnan(row_time) & np.isnan(first_time))
    real = hadm_names[adm_hadm[row]] != ""  # empty hadm ids are no admission: never compared
    conflict = np.flatnonzero(real & (other_subject | other_time))
    if len(conflict):
        k = conflict[np.argmin(row[conflict])]  # the first conflict in file order
        a, b = int(first[k]), int(row[k])
        if other_subject[k]:
            what = admissions.header[columns["patient"]]
            values = [str(patient_names[adm_patient[i]]) if adm_patient[i] >= 0 else "empty" for i in (a, b)]
        else:
            what = admissions.header[columns["time"]]
            values = [_time_text(adm_time[i]) for i in (a, b)]
        raise InputError(
            admissions.path,
            f"{admissions.header[columns['visit']]} {hadm_names[adm_hadm[b]]} also on line {a + 2} with "
            f"another {what} ({values[0]} vs {values[1]})",
            b + 2,
        )
    return int(real.sum())


def _time_text(seconds: float) -> str:
    return "empty" if np.isnan(seconds) else str(np.datetime64(int(seconds), "s")).replace("T", " ")
