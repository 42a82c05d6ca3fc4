"""MIMIC-III and MIMIC-IV: visits = admissions (HADM_ID) ordered by ADMITTIME within SUBJECT_ID,
codes = DIAGNOSES_ICD. MIMIC-IV mixes ICD-9 and ICD-10; with the combined ontology `icd9-icd10`
its codes are namespaced `ICD9:4019` / `ICD10:I10`."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hapnet.data.csv_stream import CsvFile, stream_columns, unify_ids
from hapnet.data.table import LongTable, drop_empty_patient
from hapnet.errors import InputError
from hapnet.ontology.codes import SYSTEMS
from hapnet.ontology.graph import Ontology


def _find_file(folder: Path, stem: str) -> Path | None:
    """`stem.csv` or `stem.csv.gz` in any letter case."""
    if not folder.is_dir():
        return None
    wanted = {f"{stem}.csv", f"{stem}.csv.gz"}
    matches = sorted(p for p in folder.iterdir() if p.name.lower() in wanted and p.is_file())
    return matches[0] if matches else None


def find_mimic(path: Path) -> tuple[Path, Path]:
    for folder in (path, path / "hosp", path / "HOSP"):
        admissions, diagnoses = _find_file(folder, "admissions"), _find_file(folder, "diagnoses_icd")
        if admissions and diagnoses:
            return admissions, diagnoses
        if admissions or diagnoses:
            missing = "DIAGNOSES_ICD.csv[.gz]" if admissions else "ADMISSIONS.csv[.gz]"
            raise InputError(folder, f"MIMIC folder without {missing}")
    found = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "nothing"
    raise InputError(
        path,
        "not a visit data folder: expected ADMISSIONS + DIAGNOSES_ICD (MIMIC-III), hosp/admissions + "
        f"hosp/diagnoses_icd (MIMIC-IV) or synth.json (hapnet synth); found {found}",
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

    systems = all(s in ontology for s in SYSTEMS)  # MIMIC-IV's two systems as nodes

    def namespaced(batch: dict[str, pa.Array]) -> dict[str, pa.Array]:
        """`ICD9:4019` / `ICD10:I10`: the combined ontology's ids, built per block by pyarrow."""
        code = pc.utf8_trim_whitespace(batch["code"])
        version = pc.utf8_trim_whitespace(batch["version"]) if "version" in batch else "9"
        joined = pc.binary_join_element_wise("ICD", version, ":", code, "")
        return {**batch, "code": pc.if_else(pc.equal(code, ""), code, joined)}

    adm = stream_columns(admissions, adm_cols, typed=("patient", "visit", "time"))
    diag = stream_columns(diagnoses, diag_cols, typed=("visit",), transform=namespaced if systems else None)
    # hadm ids of both tables in one id space
    hadm_names, (adm_hadm, row_hadm) = unify_ids(adm["visit"].factorize(), diag["visit"].factorize())
    num_hadm = int(max(adm_hadm.max(initial=-1), row_hadm.max(initial=-1))) + 1
    code_names, row_code = diag["code"].factorize()

    # Admission facts per hadm id (the first row wins if an id repeats). An empty subject_id is
    # no patient, and an empty hadm_id no admission: their diagnoses are orphans, never a
    # pseudo-patient "" or one visit merged from unrelated rows.
    patient_names, adm_patient = adm["patient"].factorize()
    patient_names, adm_patient, _ = drop_empty_patient(patient_names, adm_patient)
    adm_time = adm["time"].times(admissions.path, first_line=2)
    patient_of_hadm = np.full(num_hadm, -1, dtype=np.int64)
    time_of_hadm = np.full(num_hadm, np.nan)
    patient_of_hadm[adm_hadm[::-1]] = adm_patient[::-1]
    time_of_hadm[adm_hadm[::-1]] = adm_time[::-1]
    patient_of_hadm[np.flatnonzero(hadm_names == "")] = -1
    row_patient = patient_of_hadm[row_hadm]
    if not (row_patient >= 0).any():  # else "no known code" would blame the ontology
        raise InputError(
            diagnoses.path,
            f"no diagnosis row belongs to an admission: none of their {len(np.unique(row_hadm)):,} "
            f"hadm_id values is an admission of {admissions.path.name} with a subject_id "
            f"(first: {str(hadm_names[row_hadm[0]])!r})",
        )
    with_diagnoses = np.zeros(num_hadm, dtype=bool)
    with_diagnoses[row_hadm] = True

    notes: list[str] = []
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
