"""`load_visits`: visit data from any source the product reads, auto-detected from the path.

- a MIMIC-III folder (`ADMISSIONS` + `DIAGNOSES_ICD`, `.csv` or `.csv.gz`, upper or lower case),
- a MIMIC-IV `hosp` folder or its parent (`admissions` + `diagnoses_icd` with `icd_version`),
- a MEDS dataset folder (`data/**/*.parquet` events, `metadata/`),
- an OMOP CDM folder (`condition_occurrence` + optional `visit_occurrence`, `person`, `concept`),
- a long CSV, one row per (patient, visit, code) with an optional visit time,
- a folder written by `hapnet synth` (its `synth.json` names the long CSV).

Every source becomes the same long table of integers (`hapnet.data.table`), assembled into
`VisitData` with numpy only: ten million rows load in seconds within about 1.5 GB.
"""

from __future__ import annotations

import json
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hapnet.data import synth
from hapnet.data.long_csv import read_long_csv, rows_from_frame
from hapnet.data.meds import is_meds_folder, read_meds
from hapnet.data.mimic import find_mimic, read_mimic
from hapnet.data.omop import find_omop, read_omop
from hapnet.data.sharding import PatientShard
from hapnet.data.table import DEFAULT_UNKNOWN, UNKNOWN_POLICIES, LongTable, assemble
from hapnet.data.visits import VisitData
from hapnet.errors import HapnetError, InputError
from hapnet.ontology.graph import Ontology
from hapnet.ontology.meds_codes import MedsCodes
from hapnet.utils.textio import entry_exists, list_folder, os_error_reason, stat_input


def load_visits(
    path: str | Path | None,
    ontology: Ontology,
    *,
    columns: dict[str, str] | None = None,
    unknown: str = DEFAULT_UNKNOWN,
    min_visits: int = 2,
    code_pattern: str | None = None,
) -> VisitData:
    """Load visits from a MIMIC-III/IV folder, a MEDS or OMOP folder, a long CSV or a `hapnet synth` folder.

    `path=None` generates the default synthetic data set (`hapnet.data.synth`) for `ontology`.
    `columns` names the long-CSV columns by role (`patient`, `visit`, `time`, `code`).
    `unknown`: "ancestor" maps codes missing from the ontology to their nearest ancestor by
    prefix (else drops them), "drop" keeps exact matches only, "error" rejects any other code.
    `code_pattern` (MEDS only): a regular expression whose group 1 is the diagnosis code, for codes
    of other forms than ICD9CM//428.0, ICD10CM//I50.9 or DIAGNOSIS//ICD//9//4280.
    """
    rows = _read(path, ontology, columns, unknown, min_visits, code_pattern, None)
    return assemble(rows, ontology, unknown, min_visits)


def load_shard(
    path: str | Path | None,
    ontology: Ontology,
    shard: PatientShard,
    *,
    columns: dict[str, str] | None = None,
    unknown: str = DEFAULT_UNKNOWN,
    min_visits: int = 2,
    code_pattern: str | None = None,
) -> tuple[VisitData, np.ndarray]:
    """The patients of one shard (a rank of a distributed run, `hapnet.data.sharding`) as
    `load_visits` would load them, possibly none, and their order keys: where a one-process load
    meets each patient (increasing; sorting every shard's keys together gives the one-process
    order). Long CSV, synth folders and MEDS are filtered block by block (memory of the shard);
    the other sources are read whole, then filtered."""
    rows = _read(path, ontology, columns, unknown, min_visits, code_pattern, shard)
    if rows.patient_order is None:  # read at once: the shard is selected from the whole table
        rows = shard.select(rows)
    data = assemble(rows, ontology, unknown, min_visits, partial=True)
    assert rows.patient_order is not None
    kept = pd.Index(rows.patient_names).get_indexer(data.patient_ids)
    return data, rows.patient_order[kept]


def _read(
    path: str | Path | None,
    ontology: Ontology,
    columns: dict[str, str] | None,
    unknown: str,
    min_visits: int,
    code_pattern: str | None,
    shard: PatientShard | None,
) -> LongTable:
    """The source's long table (a shard's rows, where the reader filters blocks)."""
    _check_options(unknown, min_visits)
    codes = MedsCodes.from_option(code_pattern)  # a bad pattern is refused before any reading
    if path is None:
        _no_code_pattern(code_pattern, "the built-in synthetic data")
        frame = synth.generate(ontology, synth.DEFAULT_PATIENTS, seed=0)
        return rows_from_frame(frame, None, "synthetic (generated in memory)", "synth")
    path = Path(path)
    if not entry_exists(path):
        raise InputError(
            path,
            "not found (expected a MIMIC-III/IV, MEDS or OMOP folder, a long CSV or a `hapnet synth` folder)",
        )
    is_folder = stat.S_ISDIR(stat_input(path).st_mode)  # a broken link, a link loop: one line
    if not is_folder and path.name == synth.MANIFEST:
        path, is_folder = path.parent, True
    if not is_folder:
        _no_code_pattern(code_pattern, path)
        return read_long_csv(path, columns, kind="long-csv", shard=shard)
    entries = list_folder(path)
    if any(p.name == synth.MANIFEST for p in entries):
        _no_code_pattern(code_pattern, path)
        rows = _read_synth_folder(path, ontology, columns, shard)
    elif is_meds_folder(path):
        _no_columns(columns, path, "MEDS datasets")
        rows = read_meds(path, ontology, codes, shard)
    elif (omop := find_omop(path, entries)) is not None:
        _no_columns(columns, path, "OMOP folders")
        _no_code_pattern(code_pattern, path)
        rows = read_omop(omop, ontology)
    else:
        mimic = find_mimic(path, entries)
        _no_columns(columns, path, "MIMIC folders")
        _no_code_pattern(code_pattern, path)
        rows = read_mimic(*mimic, ontology)
    return rows


def _no_columns(columns: dict[str, str] | None, path: Path, what: str) -> None:
    if columns:
        raise InputError(path, f"--columns applies to long CSV files, not to {what}")


def _no_code_pattern(code_pattern: str | None, path: Path | str) -> None:
    if code_pattern:
        raise InputError(path, "--code-pattern applies to MEDS datasets (their `code` column) only")


def visits_from_lists(
    patients: Sequence[Sequence[Sequence[str]]],
    ontology: Ontology,
    *,
    unknown: str = DEFAULT_UNKNOWN,
    min_visits: int = 2,
    patient_ids: Sequence[str] | None = None,
) -> VisitData:
    """Visits from nested lists: patients -> visits (in time order) -> raw codes."""
    _check_options(unknown, min_visits)
    names = [str(i) for i in range(len(patients))] if patient_ids is None else [str(p) for p in patient_ids]
    row_patient, row_visit, raw = [], [], []
    visit = 0
    for p, visits in enumerate(patients):
        for codes in visits:
            for code in codes:
                row_patient.append(p)
                row_visit.append(visit)
                raw.append(str(code).strip())
            visit += 1
    row_code, code_index = pd.factorize(pd.Series(raw, dtype=object))
    rows = LongTable(
        source="lists",
        kind="lists",
        patient_names=np.array(names, dtype=str),
        patient=np.asarray(row_patient, dtype=np.int64),
        visit=np.asarray(row_visit, dtype=np.int64),
        time=None,
        code_names=[str(c) for c in code_index],
        code=np.asarray(row_code, dtype=np.int64),
    )
    return assemble(rows, ontology, unknown, min_visits)


def visits_from_frame(
    frame: pd.DataFrame,
    ontology: Ontology,
    *,
    columns: dict[str, str] | None = None,
    unknown: str = DEFAULT_UNKNOWN,
    min_visits: int = 2,
) -> VisitData:
    """Visits from a long pandas DataFrame (same columns and rules as a long CSV)."""
    _check_options(unknown, min_visits)
    return assemble(rows_from_frame(frame, columns, "data frame", "frame"), ontology, unknown, min_visits)


def _check_options(unknown: str, min_visits: int) -> None:
    if unknown not in UNKNOWN_POLICIES:
        raise HapnetError(f"unknown={unknown!r}: expected one of {', '.join(UNKNOWN_POLICIES)}")
    if min_visits < 1:
        raise HapnetError(f"min_visits must be at least 1, got {min_visits}")


def _read_synth_folder(
    folder: Path, ontology: Ontology, columns: dict[str, str] | None, shard: PatientShard | None
) -> LongTable:
    manifest_path = folder / synth.MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        data_file = folder / manifest.get("file", "visits.csv.gz")
    except OSError as exc:
        raise InputError(manifest_path, f"unreadable synth manifest ({os_error_reason(exc)})") from None
    except (ValueError, AttributeError) as exc:
        raise InputError(manifest_path, f"unreadable synth manifest ({exc})") from None
    made_for = manifest.get("ontology")
    if made_for and made_for != ontology.name:
        warnings.warn(
            f"{folder}: synthetic data generated for ontology {made_for}, loaded with {ontology.name}",
            stacklevel=3,
        )
    return read_long_csv(data_file, columns, kind="synth", source=str(folder), shard=shard)
