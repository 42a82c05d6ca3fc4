"""The long table every source becomes, and its assembly into `VisitData`.

Each source (MIMIC tables, a long CSV, a data frame, nested lists) is read into `LongTable`: one
entry of integers per input row. `assemble` resolves each distinct code once, orders visits in
time, de-duplicates codes within a visit by one sort of combined integer keys, and drops patients
with too few visits, with numpy only (no Python loop per row, visit or patient).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hapnet.data.visits import DataReport, VisitData, count_distinct
from hapnet.errors import HapnetError, InputError
from hapnet.ontology.graph import EXACT, MAPPED, Ontology
from hapnet.utils.arrays import sorted_unique

UNKNOWN_POLICIES = ("ancestor", "drop", "error")  # what a code missing from the ontology becomes
DEFAULT_UNKNOWN = "ancestor"


@dataclass
class LongTable:
    """A source as integers: one entry per input row (diagnosis), all sources alike."""

    source: str
    kind: str
    patient_names: np.ndarray  # [P] str, first-appearance order
    patient: np.ndarray  # int64 [R] index into patient_names; -1 = no patient (orphan row)
    visit: np.ndarray  # int64 [R] visit key, unique within a patient
    time: np.ndarray | None  # float64 [R] epoch seconds (numeric times: days * 86,400), NaN = missing
    code_names: list[str]  # distinct raw codes (stripped), first-appearance order
    code: np.ndarray  # int64 [R] index into code_names
    first_line: int | None = None  # file line of row 0 (rows are file order), for messages
    orphan_rows: int = 0
    admissions_without_diagnoses: int = 0
    other_events: int = 0  # source events read and left out as no diagnosis (MEDS, OMOP)
    other_kinds: dict[str, int] = field(default_factory=dict)  # MEDS: those events by code prefix
    notes: list[str] = field(default_factory=list)
    patient_splits: np.ndarray | None = None  # str [P] split label per patient_names entry ("" = none)
    # int64 [P] where a one-process read meets each patient (a shard's: hapnet.data.sharding);
    # None: patient_names is that order
    patient_order: np.ndarray | None = None

    def line(self, row: int) -> int | None:
        return None if self.first_line is None else self.first_line + int(row)


def assemble(
    rows: LongTable, ontology: Ontology, unknown: str, min_visits: int, partial: bool = False
) -> VisitData:
    """The long table -> VisitData: resolve codes, order visits, de-duplicate, drop short patients.

    `partial`: the table is one shard of a source (`hapnet.data.sharding`), which may hold no row or
    no patient; the run checks the sum over the shards."""
    num_rows = len(rows.code)
    if num_rows == 0 and not partial:
        raise InputError(rows.source, "no data rows")
    valid = rows.patient >= 0
    node_of_name, _, counts, resolved = _resolve_codes(rows, valid, ontology, unknown)
    row_node = node_of_name[rows.code]
    kept_mask = valid & (row_node >= 0)
    num_kept = int(np.count_nonzero(kept_mask))
    kept = slice(None) if num_kept == num_rows else np.flatnonzero(kept_mask)  # most files: every row
    del kept_mask
    if num_kept == 0 and not partial:
        sample = ", ".join(repr(c) for c in rows.code_names[:5] if c)
        raise InputError(
            rows.source,
            f"no known code: none of the {counts['distinct']:,} distinct codes is in ontology "
            f"{ontology.name} (first: {sample}); is it the right --ontology?",
        )

    # Visits: distinct (patient, visit key) among rows with a patient. The visit key is unique
    # within a patient, so patient * base + visit is a unique int64 key. Factorizing it numbers
    # the visits in order of first appearance in the file (the tie-break for equal times).
    all_valid = bool(valid.all())
    base = int(rows.visit.max(initial=0)) + 1
    if (int(rows.patient.max(initial=0)) + 1) * base >= 2**62:
        raise HapnetError(f"{rows.source}: too many visits to index")
    # In-place arithmetic here and below: each temporary is 8 bytes a row (270 MB at 34 M rows).
    visit_key = rows.patient * base if all_valid else rows.patient[valid] * base
    visit_key += rows.visit if all_valid else rows.visit[valid]
    visit_of_valid, visit_keys = pd.factorize(visit_key)
    del visit_key
    num_visits_all = len(visit_keys)
    visit_patient = visit_keys // base
    row_visit = visit_of_valid if all_valid else np.full(num_rows, -1, dtype=np.int64)
    if not all_valid:
        row_visit[valid] = visit_of_valid
    # Time order within a patient (missing times last), ties by first appearance in the file.
    first_seen = np.arange(num_visits_all)
    if rows.time is not None:
        visit_time = np.full(num_visits_all, np.nan)
        np.fmin.at(visit_time, visit_of_valid, rows.time if all_valid else rows.time[valid])  # earliest
        visit_order = np.lexsort((first_seen, visit_time, visit_patient))
        visit_time = visit_time[visit_order]
    else:
        visit_order = np.lexsort((first_seen, visit_patient))
        visit_time = None
    del visit_of_valid  # row_visit holds it (or a copy)
    rank = np.empty(num_visits_all, dtype=np.int64)
    rank[visit_order] = np.arange(num_visits_all)
    visit_patient = visit_patient[visit_order]

    # Codes: one sort of (visit rank, node) keys both groups by visit and removes duplicates.
    num_nodes = len(ontology)
    pair_keys = rank[row_visit[kept]]
    del row_visit
    pair_keys *= num_nodes
    pair_keys += row_node[kept]
    del row_node
    pairs = sorted_unique(pair_keys)
    del pair_keys
    pair_visit = pairs // num_nodes
    codes = pairs - pair_visit * num_nodes
    duplicate_rows = num_kept - len(pairs)
    visit_sizes = np.bincount(pair_visit, minlength=num_visits_all)

    # Patients: keep those with at least min_visits visits that still hold a code.
    has_codes = visit_sizes > 0
    num_patients_all = len(rows.patient_names)
    visits_per_patient = np.bincount(visit_patient[has_codes], minlength=num_patients_all)
    keep_patient = visits_per_patient >= min_visits
    if not keep_patient.any() and not partial:
        raise InputError(
            rows.source,
            f"no patient with {min_visits}+ visits: {num_patients_all:,} patients, "
            f"{int(has_codes.sum()):,} visits with a known code, at most "
            f"{int(visits_per_patient.max(initial=0))} per patient",
        )
    keep_visit = has_codes & keep_patient[visit_patient]
    codes = codes[keep_visit[pair_visit]]
    dropped_patient_rows = len(pairs) - len(codes)
    visit_offsets = np.zeros(int(keep_visit.sum()) + 1, dtype=np.int64)
    np.cumsum(visit_sizes[keep_visit], out=visit_offsets[1:])
    patient_offsets = np.zeros(int(keep_patient.sum()) + 1, dtype=np.int64)
    np.cumsum(visits_per_patient[keep_patient], out=patient_offsets[1:])
    patient_ids = rows.patient_names[keep_patient]

    report = DataReport(
        source=rows.source,
        kind=rows.kind,
        ontology=ontology.name,
        patients=len(patient_ids),
        visits=len(visit_offsets) - 1,
        codes=len(codes),
        distinct_codes=count_distinct(codes),
        input_rows=num_rows,
        exact_codes=counts[EXACT],
        mapped_codes=counts[MAPPED],
        unknown_codes=counts["unknown"],
        exact_rows=counts["rows_" + EXACT],
        mapped_rows=counts["rows_" + MAPPED],
        unknown_rows=counts["rows_unknown"],
        unknown_policy=unknown,
        not_kept_rows=int(valid.sum()) - num_kept - counts["rows_empty"],
        empty_code_rows=counts["rows_empty"],
        duplicate_rows=duplicate_rows,
        orphan_rows=rows.orphan_rows,
        admissions_without_diagnoses=rows.admissions_without_diagnoses,
        other_events=rows.other_events,
        other_kinds=dict(rows.other_kinds),
        dropped_visits=int((~has_codes).sum()),
        dropped_patient_rows=dropped_patient_rows,
        dropped_patients=num_patients_all - len(patient_ids),
        min_visits=min_visits,
        notes=list(rows.notes),
        resolved=resolved,
    )
    times = None if visit_time is None else visit_time[keep_visit]
    splits = None if rows.patient_splits is None else rows.patient_splits[keep_patient]
    return VisitData(ontology, patient_ids, patient_offsets, visit_offsets, codes, report, times, splits)


_STATUS_CODES = {EXACT: 0, MAPPED: 1, "unknown": 2, "empty": 3}


def _resolve_codes(
    rows: LongTable, valid: np.ndarray, ontology: Ontology, unknown: str
) -> tuple[np.ndarray, np.ndarray, dict[str, int], dict[str, int]]:
    """Resolve each distinct raw code once: node index per name (-1 = not kept), the counts, and the
    resolution of each normalised code in use (0 exact, 1 mapped, 2 unknown)."""
    names = rows.code_names
    row_counts = np.bincount(rows.code[valid], minlength=len(names))
    node = np.full(len(names), -1, dtype=np.int64)
    status = np.full(len(names), _STATUS_CODES["empty"], dtype=np.int8)
    normalized_status: dict[str, int] = {}
    for i, name in enumerate(names):  # distinct codes, not rows
        if not name:
            continue
        found = ontology.resolve(name)
        node[i] = found.index
        status[i] = _STATUS_CODES.get(found.status, 2)
        if row_counts[i]:
            normalized_status[found.code] = int(status[i])
    per_status = np.bincount(status, weights=row_counts, minlength=4).astype(np.int64)
    distinct = np.bincount(np.fromiter(normalized_status.values(), np.int8), minlength=4)
    counts = {
        EXACT: int(distinct[0]),
        MAPPED: int(distinct[1]),
        "unknown": int(distinct[2]),
        "distinct": len(normalized_status),
        "rows_" + EXACT: int(per_status[0]),
        "rows_" + MAPPED: int(per_status[1]),
        "rows_unknown": int(per_status[2]),
        "rows_empty": int(per_status[3]),
    }
    if unknown == "error":
        bad = np.flatnonzero(((status == 1) | (status == 2)) & (row_counts > 0))
        if len(bad):
            first = int(bad[0])
            row = int(np.argmax(rows.code == first))
            what = "maps to an ancestor" if status[first] == 1 else "is unknown"
            raise InputError(
                rows.source,
                f"code {names[first]!r} is not in ontology {ontology.name} ({what}); "
                f"{len(bad):,} distinct codes are not exact ({counts[MAPPED]:,} map to an ancestor, "
                f"{counts['unknown']:,} unknown); use --unknown ancestor or --unknown drop to load them",
                rows.line(row),
            )
    if unknown == "drop":
        node[status != 0] = -1
    return node, status, counts, normalized_status


def drop_empty_patient(names: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows with an empty patient id belong to no patient: id -1, counted, never a pseudo-patient."""
    empty = np.flatnonzero(names == "")
    if len(empty) == 0:
        return names, ids, 0
    index = int(empty[0])
    orphan = ids == index
    ids = np.where(ids > index, ids - 1, ids)
    ids[orphan] = -1
    return np.delete(names, index), ids, int(orphan.sum())
