"""Visit data as hapnet holds it: patients -> time-ordered visits -> codes (ontology node indices),
as CSR arrays (`VisitData`), and what a load did to its source (`DataReport`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np

from hapnet.ontology.graph import Ontology
from hapnet.utils.arrays import csr_select


@dataclass
class DataReport:
    """What a load did to the source: sizes, how codes resolved, and what was dropped and why."""

    source: str
    kind: str  # mimic3 | mimic4 | meds | omop | long-csv | synth | frame | lists
    ontology: str
    patients: int
    visits: int
    codes: int  # code rows in the data (after de-duplication within visits)
    distinct_codes: int
    input_rows: int
    exact_codes: int = 0  # distinct (normalised) codes of the source, by resolution
    mapped_codes: int = 0
    unknown_codes: int = 0
    exact_rows: int = 0  # source rows, by the resolution of their code
    mapped_rows: int = 0
    unknown_rows: int = 0
    unknown_policy: str = "ancestor"
    not_kept_rows: int = 0  # rows whose code the policy dropped (unknown; or mapped with "drop")
    empty_code_rows: int = 0
    duplicate_rows: int = 0  # the same node twice in one visit (also after mapping to an ancestor)
    orphan_rows: int = 0  # rows of no patient: MIMIC diagnoses without an admission, empty patient ids
    admissions_without_diagnoses: int = 0  # MIMIC, MEDS (admission events), OMOP (visit_occurrence rows)
    other_events: int = 0  # MEDS events that are no diagnosis, OMOP conditions of other vocabularies
    other_kinds: dict[str, int] = field(default_factory=dict)  # MEDS: other events by code prefix
    dropped_visits: int = 0  # visits left with no known code
    dropped_patient_rows: int = 0  # code rows of the patients dropped for too few visits
    dropped_patients: int = 0  # fewer than min_visits visits
    min_visits: int = 2
    notes: list[str] = field(default_factory=list)
    # normalised source code -> 0 exact, 1 mapped, 2 unknown: what the distinct counts count (the
    # shards of a distributed run add up their reports with it); not part of the figures
    resolved: dict[str, int] = field(default_factory=dict, repr=False)

    @property
    def codes_per_visit(self) -> float:
        return self.codes / self.visits if self.visits else 0.0

    @property
    def dropped_rows(self) -> int:
        return self.input_rows - self.codes

    def as_rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for a two-column table, in reading order."""
        rows = [
            ("source", f"{self.source} ({self.kind})"),
            ("ontology", self.ontology),
            ("patients", f"{self.patients:,}"),
            ("visits", f"{self.visits:,}"),
            ("code rows", f"{self.codes:,}"),
            ("distinct codes", f"{self.distinct_codes:,}"),
            ("codes per visit", f"{self.codes_per_visit:.2f}"),
            (
                "source codes exact / mapped / unknown",
                f"{self.exact_codes:,} / {self.mapped_codes:,} / {self.unknown_codes:,}",
            ),
            (
                "source rows exact / mapped / unknown",
                f"{self.exact_rows:,} / {self.mapped_rows:,} / {self.unknown_rows:,}",
            ),
            (f"dropped patients (< {self.min_visits} visits)", f"{self.dropped_patients:,}"),
            ("dropped visits (no known code)", f"{self.dropped_visits:,}"),
        ]
        parts = [
            (self.duplicate_rows, "duplicates in a visit"),
            (self.not_kept_rows, "unknown code" if self.unknown_policy != "drop" else "code not exact"),
            (self.empty_code_rows, "empty code"),
            (self.orphan_rows, _ORPHAN_REASONS.get(self.kind, "no patient id")),
            (self.dropped_patient_rows, f"of patients with < {self.min_visits} visits"),
        ]
        detail = ", ".join(f"{n:,} {why}" for n, why in parts if n)
        rows.append(
            (
                "dropped rows",
                f"{self.dropped_rows:,} of {self.input_rows:,}" + (f" ({detail})" if detail else ""),
            )
        )
        if self.kind in ("mimic3", "mimic4", "meds", "omop"):
            label = "visits without conditions" if self.kind == "omop" else "admissions without diagnoses"
            rows.append((label, f"{self.admissions_without_diagnoses:,}"))
        if self.kind in ("meds", "omop") or self.other_events:
            label = (
                "other events (not diagnoses)" if self.kind != "omop" else "conditions of other vocabularies"
            )
            kinds = sorted(self.other_kinds.items(), key=lambda kv: (-kv[1], kv[0]))
            listed = ", ".join(f"{kind} {count:,}" for kind, count in kinds[:5])
            more = " ..." if len(kinds) > 5 else ""
            rows.append((label, f"{self.other_events:,}" + (f" ({listed}{more})" if listed else "")))
        rows.extend(("note", note) for note in self.notes)
        return rows

    def as_dict(self) -> dict:
        """Plain JSON-able figures (for run folders and `--json` output)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "resolved"}
        data["codes_per_visit"] = round(self.codes_per_visit, 4)
        data["dropped_rows"] = self.dropped_rows
        return data


_ORPHAN_REASONS = {
    "mimic3": "no admission row",
    "mimic4": "no admission row",
    "meds": "no subject_id",
    "omop": "no person (empty person_id or not in person)",
}


@dataclass
class VisitData:
    """Patients -> visits (time order) -> codes (ontology node indices), as CSR arrays.

    Visits of patient p are `patient_offsets[p]:patient_offsets[p+1]`; codes of visit v are
    `codes[visit_offsets[v]:visit_offsets[v+1]]`, sorted, never repeated within a visit.
    """

    ontology: Ontology
    patient_ids: np.ndarray  # [P] str
    patient_offsets: np.ndarray  # int64 [P+1] into visits
    visit_offsets: np.ndarray  # int64 [V+1] into codes
    codes: np.ndarray  # int64 [C] ontology node indices
    report: DataReport
    # float64 [V] time of each visit in seconds (epoch seconds for dates; a numeric time column
    # counts days); NaN where missing. None: the source has no times.
    visit_times: np.ndarray | None = None
    # str [P] each patient's split label from the source (a MEDS dataset's
    # metadata/subject_splits.parquet: train, tuning, held_out; "" = none). None: the source has none.
    patient_splits: np.ndarray | None = None

    @property
    def num_patients(self) -> int:
        return len(self.patient_ids)

    @property
    def num_visits(self) -> int:
        return len(self.visit_offsets) - 1

    def __len__(self) -> int:
        return self.num_patients

    @property
    def vocab(self) -> np.ndarray:
        """The observed codes (node indices), sorted: what a predictor scores."""
        return np.flatnonzero(np.bincount(self.codes, minlength=len(self.ontology)))

    def visits_of(self, p: int) -> list[np.ndarray]:
        """The visits of patient p as arrays of node indices (convenience, not for hot loops)."""
        start, stop = self.patient_offsets[p], self.patient_offsets[p + 1]
        bounds = self.visit_offsets[start : stop + 1]
        return [self.codes[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def subset(self, patient_indices: Sequence[int] | np.ndarray) -> VisitData:
        """The given patients, in the given order (a train/validation/test split).

        The report's sizes describe the subset; its resolution figures stay those of the source.
        """
        chosen = np.asarray(patient_indices, dtype=np.int64)
        visit_index, patient_offsets = csr_select(self.patient_offsets, chosen)
        code_index, visit_offsets = csr_select(self.visit_offsets, visit_index)
        codes = self.codes[code_index]
        report = replace(
            self.report,
            patients=len(chosen),
            visits=len(visit_index),
            codes=len(codes),
            distinct_codes=count_distinct(codes),
            notes=list(self.report.notes),
        )
        times = None if self.visit_times is None else self.visit_times[visit_index]
        splits = None if self.patient_splits is None else self.patient_splits[chosen]
        return VisitData(
            self.ontology,
            self.patient_ids[chosen],
            patient_offsets,
            visit_offsets,
            codes,
            report,
            times,
            splits,
        )


def count_distinct(codes: np.ndarray) -> int:
    return int(np.count_nonzero(np.bincount(codes))) if len(codes) else 0
