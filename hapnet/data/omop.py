"""OMOP CDM: a folder with `condition_occurrence` (+ `visit_occurrence`, `person`, `concept`), each a
CSV (`.csv`, `.csv.gz`, comma-separated), a `.parquet` file or a folder of parquet parts; file names
in any letter case.

Codes: `condition_source_value` (the ICD code as the source wrote it). Its system is the
`vocabulary_id` of its `condition_source_concept_id` in the `concept` table (ICD9CM, ICD10CM or
ICD10; conditions of another vocabulary are counted and left out), else the code's shape, else its
visit's other codes (`hapnet.data.code_systems`). Visits: `visit_occurrence_id`, timed by
`visit_start_datetime` (else `visit_start_date`) of `visit_occurrence`, else by the earliest
condition start; a condition without a visit id makes a visit with the person's other conditions
of the same `condition_start_date`. With a `person` table, conditions of persons not in it are
counted and left out.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from hapnet.data.code_systems import settle_systems
from hapnet.data.csv_stream import Column, CsvFile, stream_columns, unify_ids
from hapnet.data.parquet_stream import ParquetTable
from hapnet.data.table import LongTable, drop_empty_patient
from hapnet.data.times import SECONDS_PER_DAY
from hapnet.errors import InputError
from hapnet.ontology.codes import normalize_code
from hapnet.ontology.graph import Ontology
from hapnet.ontology.icd_systems import ICD9, ICD10, UNDECIDED
from hapnet.utils.textio import list_folder

TABLES = ("condition_occurrence", "visit_occurrence", "person", "concept")
VOCABULARIES = {"ICD9CM": ICD9, "ICD10CM": ICD10, "ICD10": ICD10}  # OMOP vocabulary_id -> system
_OTHER = -1  # a row's system when its concept is of another vocabulary (SNOMED, ICD10PCS, ...)


class _Table(Protocol):
    path: Path
    first_line: int | None

    @property
    def header(self) -> list[str]: ...
    def find(self, names: Sequence[str]) -> object | None: ...
    def require(self, role: str, names: Sequence[str], hint: str) -> object: ...
    def read(self, wanted: dict[str, object]) -> dict[str, Column]: ...


class _CsvTable:
    """A CSV table with the parquet table's interface."""

    first_line = 2  # of row 0

    def __init__(self, path: Path):
        self.csv = CsvFile.open(path)
        self.path = path
        if len(self.csv.header) == 1 and "\t" in self.csv.header[0]:
            raise InputError(path, "tab-separated: OMOP tables are read comma-separated (or as parquet)", 1)

    @property
    def header(self) -> list[str]:
        return self.csv.header

    def find(self, names: Sequence[str]) -> int | None:
        return self.csv.find(names)

    def require(self, role: str, names: Sequence[str], hint: str) -> int:
        return self.csv.require(role, names, hint)

    def read(self, wanted: dict[str, int]) -> dict[str, Column]:
        ids = tuple(role for role in wanted if role in ("patient", "visit", "concept"))
        return stream_columns(self.csv, wanted, typed=ids)


def find_omop(folder: Path, entries: list[Path] | None = None) -> dict[str, Path] | None:
    """The OMOP tables of a folder by name, or None when it has no `condition_occurrence`."""
    found: dict[str, Path] = {}
    for entry in entries if entries is not None else list_folder(folder):
        name = entry.name.lower()
        for table in TABLES:
            if table not in found and name in (f"{table}.csv", f"{table}.csv.gz", f"{table}.parquet", table):
                found[table] = entry
    return found if "condition_occurrence" in found else None


def _open(path: Path) -> _Table:
    if path.is_dir() or path.name.lower().endswith(".parquet"):
        return ParquetTable.open(path)
    return _CsvTable(path)


def _read_times(columns: dict[str, Column], table: _Table, roles: Sequence[str]) -> dict[str, np.ndarray]:
    """Epoch seconds of the date and time columns among `roles` (each read once: reading consumes
    them). Parquet rows have no lines: a bad date there is named by its row, counted from 1."""
    first = table.first_line or 1
    return {role: columns.pop(role).times(table.path, first) for role in roles if role in columns}


def _first_of(times: dict[str, np.ndarray], *roles: str) -> np.ndarray | None:
    """Per row, the first of `roles` that is not missing (NaN when none is there)."""
    found = [times[role] for role in roles if role in times]
    if not found:
        return None
    result = found[0].copy()
    for more in found[1:]:
        result = np.where(np.isnan(result), more, result)
    return result


def _line(table: _Table, row: int) -> int | None:
    return None if table.first_line is None else table.first_line + row


def read_omop(tables: dict[str, Path], ontology: Ontology) -> LongTable:
    """Conditions of an OMOP CDM folder as a LongTable: persons, visits, times and ICD codes."""
    conditions = _open(tables["condition_occurrence"])
    hint = " (an OMOP condition_occurrence table)"
    wanted = {
        "patient": conditions.require("person", ["person_id"], hint),
        "code": conditions.require("code", ["condition_source_value"], hint),
    }
    for role, name in (
        ("visit", "visit_occurrence_id"),
        ("datetime", "condition_start_datetime"),
        ("date", "condition_start_date"),
        ("concept", "condition_source_concept_id"),
    ):
        found = conditions.find([name])
        if found is not None:
            wanted[role] = found
    if "date" not in wanted and "datetime" not in wanted:
        raise InputError(
            conditions.path,
            f"no condition_start_date or condition_start_datetime column: found columns "
            f"{', '.join(conditions.header)}{hint}",
            1 if conditions.first_line else None,
        )
    data = conditions.read(wanted)
    source = str(tables["condition_occurrence"].parent)
    notes: list[str] = []

    patient_names, row_patient = data["patient"].factorize()
    patient_names, row_patient, _ = drop_empty_patient(patient_names, row_patient)  # orphans: -1
    if "person" in tables:
        patient_names, row_patient, unknown = _persons_only(tables["person"], patient_names, row_patient)
        if unknown:
            message = f"{source}: {unknown:,} conditions of persons not in the person table left out"
            warnings.warn(message, stacklevel=3)
            notes.append(message)

    raw_names, row_code = data["code"].factorize()
    names = [normalize_code(name) for name in raw_names.tolist()]
    row_system = _row_systems(data.pop("concept", None), tables.get("concept"), len(row_code))
    other_vocabulary = row_system == _OTHER

    times = _read_times(data, conditions, ("datetime", "date"))
    row_time = _first_of(times, "datetime", "date")
    start_day = np.floor(_first_of(times, "date", "datetime") / SECONDS_PER_DAY)
    if "visit" in data:
        visit_names, row_visit_id = data["visit"].factorize()
    else:
        visit_names, row_visit_id = np.array([""]), np.zeros(len(row_code), dtype=np.int64)
    visits_without_conditions = 0
    if "visit_occurrence" in tables and "visit" in data:
        visit_names, row_visit_id, visit_time, visits_without_conditions = _visit_table(
            tables["visit_occurrence"], visit_names, row_visit_id, patient_names, row_patient, conditions
        )
        known = ~np.isnan(visit_time[row_visit_id])
        row_time[known] = visit_time[row_visit_id[known]]
    has_id = (visit_names != "")[row_visit_id]
    row_visit = np.full(len(row_code), -1, dtype=np.int64)
    row_visit[has_id] = row_visit_id[has_id]
    by_day = ~has_id & ~np.isnan(start_day)
    row_visit[by_day] = len(visit_names) + np.unique(start_day[by_day], return_inverse=True)[1]
    no_visit = (row_visit < 0) & (row_patient >= 0)
    if no_visit.any():
        message = (
            f"{source}: {int(no_visit.sum()):,} conditions have neither a visit_occurrence_id nor a "
            "condition start: they belong to no visit and were left out"
        )
        warnings.warn(message, stacklevel=3)
        notes.append(message)

    # (patient, visit) as one number for the systems' vote; -1: no visit, no patient or no ICD code
    num_visits = int(row_visit.max(initial=-1)) + 2
    icd = ~other_vocabulary
    voting = icd & (row_visit >= 0) & (row_patient >= 0)
    visit_key = np.where(voting, row_patient * num_visits + row_visit, -1)
    row_system = np.where(icd, row_system, UNDECIDED).astype(np.int8)
    settled = settle_systems(names, row_code, row_system, visit_key, ontology, source)
    notes += settled.notes
    keep = icd & ~no_visit
    if settled.keep is not None:
        keep &= settled.keep
    if other_vocabulary.any():
        notes.append(
            f"{int(other_vocabulary.sum()):,} conditions whose condition_source_concept_id is of another "
            "vocabulary than ICD9CM / ICD10CM left out"
        )
    every_row = bool(keep.all())
    return LongTable(
        source=source,
        kind="omop",
        patient_names=patient_names,
        patient=row_patient if every_row else row_patient[keep],
        visit=row_visit if every_row else row_visit[keep],
        time=row_time if every_row else row_time[keep],
        code_names=settled.code_names,
        code=settled.row_code if every_row else settled.row_code[keep],
        first_line=conditions.first_line if every_row else None,  # lines only while rows are the file's
        orphan_rows=int(np.count_nonzero((row_patient < 0) & keep)),
        admissions_without_diagnoses=visits_without_conditions,
        other_events=int(other_vocabulary.sum()),
        notes=notes,
    )


def _persons_only(path: Path, names: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Patients that are in the person table; rows of the others become orphans (-1)."""
    table = _open(path)
    column = table.require("person", ["person_id"], " (an OMOP person table)")
    persons = set(table.read({"patient": column})["patient"].factorize()[0].tolist())
    known = np.array([name in persons for name in names.tolist()], dtype=bool)
    remap = np.where(known, np.cumsum(known) - 1, -1)
    row_known = (ids >= 0) & known[np.maximum(ids, 0)]
    new_ids = np.where(row_known, remap[np.maximum(ids, 0)], -1)
    return names[known], new_ids, int(np.count_nonzero((ids >= 0) & ~row_known))


def _row_systems(concepts: Column | None, concept_path: Path | None, num_rows: int) -> np.ndarray:
    """Each row's system from its source concept's vocabulary: ICD9, ICD10, _OTHER or UNDECIDED."""
    if concepts is None or concept_path is None:
        return np.full(num_rows, UNDECIDED, dtype=np.int8)
    names, row_concept = concepts.factorize()
    table = _open(concept_path)
    hint = " (an OMOP concept table)"
    columns = table.read(
        {
            "concept": table.require("concept id", ["concept_id"], hint),
            "vocabulary": table.require("vocabulary", ["vocabulary_id"], hint),
        }
    )
    ids, id_of_row = columns["concept"].factorize()
    vocabularies, vocabulary_of_row = columns["vocabulary"].factorize()
    vocabulary = pd.Series(vocabularies[vocabulary_of_row], index=ids[id_of_row])
    vocabulary = vocabulary[~vocabulary.index.duplicated()].reindex(names).fillna("")
    system = np.array(
        [VOCABULARIES.get(v.upper(), _OTHER if v else UNDECIDED) for v in vocabulary.tolist()], dtype=np.int8
    )
    system[names == "0"] = UNDECIDED  # concept 0: no concept, the code's shape decides
    return system[row_concept]


def _visit_table(
    path: Path,
    names: np.ndarray,
    ids: np.ndarray,
    patient_names: np.ndarray,
    row_patient: np.ndarray,
    conditions: _Table,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Visit ids of conditions and visit_occurrence in one id space, each id's start time (NaN: not
    in the table or no start), and the visits of the table without a condition.

    A visit_occurrence_id on two rows with another person or start, or a condition whose person is
    not its visit's, is refused: keeping either would move a visit to another patient or day.
    """
    table = _open(path)
    hint = " (an OMOP visit_occurrence table)"
    wanted = {"visit": table.require("visit", ["visit_occurrence_id"], hint)}
    optional = {"patient": "person_id", "datetime": "visit_start_datetime", "date": "visit_start_date"}
    for role, column in optional.items():
        found = table.find([column])
        if found is not None:
            wanted[role] = found
    columns = table.read(wanted)
    shared, (row_id, table_id) = unify_ids((names, ids), columns["visit"].factorize())
    start = _first_of(_read_times(columns, table, ("datetime", "date")), "datetime", "date")
    visit_start = np.full(len(shared), np.nan)
    if start is not None:
        _refuse_conflict(table, table_id, start, shared, "visit start", lambda i: _time_text(start[i]))
        visit_start[table_id[::-1]] = start[::-1]  # the first row of an id
        visit_start[shared == ""] = np.nan  # an empty id is no visit
    if "patient" in columns:
        person_names, person_ids = columns["patient"].factorize()
        _refuse_conflict(
            table, table_id, person_ids, shared, "person_id", lambda i: person_names[person_ids[i]]
        )
        person_of_visit = np.full(len(shared), "", dtype=object)
        person_of_visit[table_id[::-1]] = person_names[person_ids[::-1]]
        condition_person = np.where(row_patient >= 0, patient_names[np.maximum(row_patient, 0)], "")
        visit_person = person_of_visit[row_id]
        both = (condition_person != "") & (visit_person != "") & (shared[row_id] != "")
        wrong = np.flatnonzero(both & (condition_person != visit_person))
        if len(wrong):
            row = int(wrong[0])
            raise InputError(
                conditions.path,
                f"person_id {condition_person[row]} but its visit_occurrence_id {shared[row_id[row]]} is of "
                f"person_id {visit_person[row]} in {path.name} ({len(wrong):,} such rows)",
                _line(conditions, row),
            )
    used = np.zeros(len(shared), dtype=bool)
    used[row_id] = True
    listed = np.unique(table_id[shared[table_id] != ""])
    return shared, row_id, visit_start, int(np.count_nonzero(~used[listed]))


def _refuse_conflict(
    table: _Table,
    ids: np.ndarray,
    values: np.ndarray,
    names: np.ndarray,
    what: str,
    show: Callable[[int], str],
) -> None:
    """InputError naming both rows when an id (not empty) comes with two different values."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    first = order[np.searchsorted(sorted_ids, sorted_ids)]  # the first row of each row's id
    a, b = values[first], values[order]
    differ = (a != b) & ~(pd.isna(a) & pd.isna(b)) & (names[sorted_ids] != "")
    if differ.any():
        k = int(np.argmin(np.where(differ, order, len(order))))
        row, other = int(order[k]), int(first[k])
        line = _line(table, other)
        where = f" also on line {line}" if line is not None else " also on another row"
        values = f"{show(other)} vs {show(row)}"
        reason = f"visit_occurrence_id {names[ids[row]]}{where} with another {what} ({values})"
        raise InputError(table.path, reason, _line(table, row))


def _time_text(seconds: float) -> str:
    return "empty" if np.isnan(seconds) else str(pd.Timestamp(seconds, unit="s"))
