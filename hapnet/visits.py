"""Visit data: patients as time-ordered visits, a visit as a set of ontology codes (CSR arrays).

One loader for every source the product reads, auto-detected from the path:
- a MIMIC-III folder (`ADMISSIONS` + `DIAGNOSES_ICD`, `.csv` or `.csv.gz`, upper or lower case),
- a MIMIC-IV `hosp` folder or its parent (`admissions` + `diagnoses_icd` with `icd_version`),
- a long CSV, one row per (patient, visit, code) with an optional visit time,
- a folder written by `hapnet synth` (its `synth.json` names the long CSV).

Every source becomes the same long table of integers (`_Rows`), which `_assemble` turns into
`VisitData` with numpy only. CSVs stream in blocks (pyarrow): columns whose sampled values are
integers or ISO times parse natively, other strings are dictionary-encoded; each DISTINCT code
is resolved once; visits are numbered by hashing and de-duplicated by one sort of combined
integer keys. Nothing loops in Python per row, visit or patient: ten million rows load in
seconds within about 1.5 GB.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from hapnet.errors import HapnetError, InputError
from hapnet.ontology import EXACT, MAPPED, Ontology
from hapnet.textio import GZIP_MAGIC

UNKNOWN_POLICIES = ("ancestor", "drop", "error")
ROLES = ("patient", "visit", "time", "code")
# Column names recognised in a long CSV, case-insensitively, most specific first.
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "patient": ("patient", "patient_id", "subject_id", "person_id", "pid", "member_id"),
    "visit": ("visit", "visit_id", "hadm_id", "encounter_id", "admission_id", "encounter"),
    "time": ("time", "date", "visit_time", "admittime", "admit_date", "visit_date", "start"),
    "code": ("code", "icd_code", "icd9_code", "icd10_code", "diagnosis", "dx", "diagnosis_code"),
}
SYNTH_MANIFEST = "synth.json"
# The two code systems of MIMIC-IV, as system nodes of a combined ontology (`icd9-icd10`).
ICD_SYSTEMS = ("ICD9", "ICD10")

BLOCK_SIZE = 16 << 20  # bytes of CSV per pyarrow block: bounds memory, keeps both cores busy
_SNIFF_BYTES = 1 << 20


# ============================================================================ results
@dataclass
class DataReport:
    """What a load did to the source: sizes, how codes resolved, and what was dropped and why."""

    source: str
    kind: str  # mimic3 | mimic4 | long-csv | synth | frame | lists
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
    admissions_without_diagnoses: int = 0  # MIMIC
    dropped_visits: int = 0  # visits left with no known code
    dropped_patient_rows: int = 0  # code rows of the patients dropped for too few visits
    dropped_patients: int = 0  # fewer than min_visits visits
    min_visits: int = 2
    notes: list[str] = field(default_factory=list)

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
            (self.orphan_rows, "no admission row" if self.kind.startswith("mimic") else "no patient id"),
            (self.dropped_patient_rows, f"of patients with < {self.min_visits} visits"),
        ]
        detail = ", ".join(f"{n:,} {why}" for n, why in parts if n)
        rows.append(
            (
                "dropped rows",
                f"{self.dropped_rows:,} of {self.input_rows:,}" + (f" ({detail})" if detail else ""),
            )
        )
        if self.kind in ("mimic3", "mimic4"):
            rows.append(("admissions without diagnoses", f"{self.admissions_without_diagnoses:,}"))
        rows.extend(("note", note) for note in self.notes)
        return rows

    def as_dict(self) -> dict:
        """Plain JSON-able figures (for run folders and `--json` output)."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["codes_per_visit"] = round(self.codes_per_visit, 4)
        data["dropped_rows"] = self.dropped_rows
        return data


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
        visit_index, patient_offsets = _gather(self.patient_offsets, chosen)
        code_index, visit_offsets = _gather(self.visit_offsets, visit_index)
        codes = self.codes[code_index]
        report = replace(
            self.report,
            patients=len(chosen),
            visits=len(visit_index),
            codes=len(codes),
            distinct_codes=_count_distinct(codes),
            notes=list(self.report.notes),
        )
        return VisitData(
            self.ontology, self.patient_ids[chosen], patient_offsets, visit_offsets, codes, report
        )


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by sorting: numpy 2's hash-based unique is ~50x slower on millions of int64 keys."""
    ordered = np.sort(values)
    if len(ordered) == 0:
        return ordered
    first = np.empty(len(ordered), dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    return ordered[first]


def _count_distinct(codes: np.ndarray) -> int:
    return int(np.count_nonzero(np.bincount(codes))) if len(codes) else 0


def _gather(offsets: np.ndarray, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ranges offsets[i]:offsets[i+1] for i in chosen, and their new offsets."""
    starts = offsets[chosen]
    lengths = offsets[chosen + 1] - starts
    new_offsets = np.zeros(len(chosen) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    index = np.arange(new_offsets[-1], dtype=np.int64) + np.repeat(starts - new_offsets[:-1], lengths)
    return index, new_offsets


# ============================================================================ public loaders
def load_visits(
    path: str | Path | None,
    ontology: Ontology,
    *,
    columns: dict[str, str] | None = None,
    unknown: str = "ancestor",
    min_visits: int = 2,
) -> VisitData:
    """Load visits from a MIMIC-III/IV folder, a long CSV or a `hapnet synth` folder.

    `path=None` generates the default synthetic data set (`hapnet.synth`) for `ontology`.
    `columns` names the long-CSV columns by role (`patient`, `visit`, `time`, `code`).
    `unknown`: "ancestor" maps codes missing from the ontology to their nearest ancestor by
    prefix (else drops them), "drop" keeps exact matches only, "error" rejects any other code.
    """
    _check_options(unknown, min_visits)
    if path is None:
        from hapnet import synth

        frame = synth.generate(ontology, synth.DEFAULT_PATIENTS, seed=0)
        rows = _rows_from_frame(frame, None, "synthetic (generated in memory)", "synth")
        return _assemble(rows, ontology, unknown, min_visits)
    path = Path(path)
    if not path.exists():
        raise InputError(
            path, "not found (expected a MIMIC-III/IV folder, a long CSV or a `hapnet synth` folder)"
        )
    if path.is_file() and path.name == SYNTH_MANIFEST:
        path = path.parent
    if path.is_dir():
        if (path / SYNTH_MANIFEST).exists():
            rows = _read_synth_folder(path, ontology, columns)
        else:
            mimic = _find_mimic(path)
            if columns:
                raise InputError(path, "--columns applies to long CSV files, not to MIMIC folders")
            rows = _read_mimic(*mimic, ontology)
    else:
        rows = _read_long_csv(path, columns, kind="long-csv")
    return _assemble(rows, ontology, unknown, min_visits)


def visits_from_lists(
    patients: Sequence[Sequence[Sequence[str]]],
    ontology: Ontology,
    *,
    unknown: str = "ancestor",
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
    rows = _Rows(
        source="lists",
        kind="lists",
        patient_names=np.array(names, dtype=str),
        patient=np.asarray(row_patient, dtype=np.int64),
        visit=np.asarray(row_visit, dtype=np.int64),
        time=None,
        code_names=[str(c) for c in code_index],
        code=np.asarray(row_code, dtype=np.int64),
    )
    return _assemble(rows, ontology, unknown, min_visits)


def visits_from_frame(
    frame: pd.DataFrame,
    ontology: Ontology,
    *,
    columns: dict[str, str] | None = None,
    unknown: str = "ancestor",
    min_visits: int = 2,
) -> VisitData:
    """Visits from a long pandas DataFrame (same columns and rules as a long CSV)."""
    _check_options(unknown, min_visits)
    return _assemble(_rows_from_frame(frame, columns, "data frame", "frame"), ontology, unknown, min_visits)


def _check_options(unknown: str, min_visits: int) -> None:
    if unknown not in UNKNOWN_POLICIES:
        raise HapnetError(f"unknown={unknown!r}: expected one of {', '.join(UNKNOWN_POLICIES)}")
    if min_visits < 1:
        raise HapnetError(f"min_visits must be at least 1, got {min_visits}")


def parse_columns(text: str | None) -> dict[str, str] | None:
    """`--columns patient=pid,code=dx` as a dict; None or "" gives None."""
    if not text:
        return None
    result: dict[str, str] = {}
    for part in text.split(","):
        role, sep, name = part.partition("=")
        role = role.strip().lower()
        if not sep or not name.strip():
            raise HapnetError(
                f"--columns: expected ROLE=COLUMN pairs such as patient=pid,code=dx, got {part!r}"
            )
        if role not in ROLES:
            raise HapnetError(f"--columns: unknown role {role!r}, expected {', '.join(ROLES)}")
        result[role] = name.strip()
    return result


# ============================================================================ the long table
@dataclass
class _Rows:
    """A source as integers: one entry per input row (diagnosis), all sources alike."""

    source: str
    kind: str
    patient_names: np.ndarray  # [P] str, first-appearance order
    patient: np.ndarray  # int64 [R] index into patient_names; -1 = no patient (orphan row)
    visit: np.ndarray  # int64 [R] visit key, unique within a patient
    time: np.ndarray | None  # float64 [R] seconds (or plain numbers), NaN = missing
    code_names: list[str]  # distinct raw codes (stripped), first-appearance order
    code: np.ndarray  # int64 [R] index into code_names
    first_line: int | None = None  # file line of row 0 (rows are file order), for messages
    orphan_rows: int = 0
    admissions_without_diagnoses: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self, row: int) -> int | None:
        return None if self.first_line is None else self.first_line + int(row)


def _assemble(rows: _Rows, ontology: Ontology, unknown: str, min_visits: int) -> VisitData:
    """The long table -> VisitData: resolve codes, order visits, de-duplicate, drop short patients."""
    num_rows = len(rows.code)
    if num_rows == 0:
        raise InputError(rows.source, "no data rows")
    valid = rows.patient >= 0
    node_of_name, _, counts = _resolve_codes(rows, valid, ontology, unknown)
    row_node = node_of_name[rows.code]
    kept_mask = valid & (row_node >= 0)
    num_kept = int(np.count_nonzero(kept_mask))
    kept = slice(None) if num_kept == num_rows else np.flatnonzero(kept_mask)  # most files: every row
    del kept_mask
    if num_kept == 0:
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
    else:
        visit_order = np.lexsort((first_seen, visit_patient))
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
    if not keep_patient.any():
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
        distinct_codes=_count_distinct(codes),
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
        dropped_visits=int((~has_codes).sum()),
        dropped_patient_rows=dropped_patient_rows,
        dropped_patients=num_patients_all - len(patient_ids),
        min_visits=min_visits,
        notes=list(rows.notes),
    )
    return VisitData(ontology, patient_ids, patient_offsets, visit_offsets, codes, report)


_STATUS_CODES = {EXACT: 0, MAPPED: 1, "unknown": 2, "empty": 3}


def _resolve_codes(
    rows: _Rows, valid: np.ndarray, ontology: Ontology, unknown: str
) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Resolve each distinct raw code once: node index per name (-1 = not kept) and the counts."""
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
            normalized_status[found.code] = status[i]
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
    return node, status, counts


# ============================================================================ CSV reading
# Sampled values that let a column be parsed natively (no strings to hash): integers without
# leading zeros (so "007" stays a string) and ISO dates or date-times.
_INTEGER = re.compile(r"-?[1-9][0-9]{0,17}|0")
_ISO_TIME = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2})?)?")


class _Retry(Exception):
    """A block disagreed with what the sample promised: read the file again, less optimistically."""

    def __init__(self, latin1: bool):
        super().__init__("latin-1" if latin1 else "strings")
        self.latin1 = latin1


@dataclass
class _CsvFile:
    """A CSV file (gzip or not) with its header and a sample of rows: ready to stream columns."""

    path: Path
    header: list[str]
    compression: str | None
    encoding: str
    sample_rows: list[list[str]]

    @classmethod
    def open(cls, path: Path) -> _CsvFile:
        if not path.exists():
            raise InputError(path, "file not found")
        if path.is_dir():
            raise InputError(path, "is a folder, expected a CSV file")
        with open(path, "rb") as handle:
            magic = handle.read(2)
        compression = "gzip" if magic == GZIP_MAGIC else None
        if compression is None and path.suffix.lower() == ".gz":
            raise InputError(path, "has a .gz suffix but is not gzip-compressed")
        try:
            with pa.input_stream(str(path), compression=compression) as stream:
                sample = stream.read(_SNIFF_BYTES)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(path, f"corrupt or truncated gzip data ({exc})") from None
        if not sample.strip():
            raise InputError(path, "empty file")
        if b"\x00" in sample:
            raise InputError(path, "binary data, expected a text (CSV) file")
        encoding = "utf8"
        try:
            text = sample.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            cut_character = len(sample) == _SNIFF_BYTES and exc.start >= len(sample) - 3
            if cut_character:  # the sample ends inside a multi-byte character: the text is fine
                text = sample[: exc.start].decode("utf-8-sig")
            else:
                encoding = "latin-1"
                warnings.warn(f"{path}: not valid UTF-8, read as latin-1", stacklevel=4)
                text = sample.removeprefix(b"\xef\xbb\xbf").decode("latin-1")  # a BOM, then latin-1 bytes
        lines = text.lstrip("\ufeff").splitlines()
        if len(sample) == _SNIFF_BYTES:
            lines = lines[:-1]  # the last line may be cut
        # a long free-text cell (pyarrow reads up to BLOCK_SIZE a line) must not stop the sample
        csv.field_size_limit(max(csv.field_size_limit(), _SNIFF_BYTES))
        try:
            rows = list(csv.reader(lines))
        except csv.Error as exc:
            raise InputError(path, f"unreadable CSV ({exc})") from None
        header = [h.strip() for h in rows[0]] if rows else []
        if not any(header):
            raise InputError(path, "no header line (the first line is empty)", 1)
        return cls(path, header, compression, encoding, rows[1:])

    def find(self, names: Sequence[str]) -> int | None:
        """Index of the first column whose name (case-insensitive) is in `names`, in `names` order."""
        lowered = [h.lower() for h in self.header]
        for name in names:
            if name.lower() in lowered:
                return lowered.index(name.lower())
        return None

    def require(self, role: str, names: Sequence[str], hint: str) -> int:
        found = self.find(names)
        if found is None:
            raise InputError(
                self.path,
                f"no {role} column: found columns {', '.join(self.header)}; expected "
                f"{' or '.join(names)}{hint}",
                1,
            )
        return found

    def sniff_type(self, column: int, *, time: bool = False) -> pa.DataType:
        """int64 when every sampled value is an integer; timestamp for ISO times; else string."""
        values = [row[column].strip() for row in self.sample_rows if len(row) > column]
        filled = [v for v in values if v]
        if not filled:
            return pa.string()
        if len(filled) == len(values) and all(_INTEGER.fullmatch(v) for v in filled):
            return pa.int64()
        if time and all(_ISO_TIME.fullmatch(v) for v in filled):
            return pa.timestamp("s")
        return pa.string()

    def batches(self, wanted: dict[str, int], types: dict[str, pa.DataType]) -> Iterator[dict[str, pa.Array]]:
        """Stream the wanted columns (role -> column index), block by block."""
        names = [f"c{i}" for i in range(len(self.header))]
        read_options = pacsv.ReadOptions(
            column_names=names, skip_rows=1, block_size=BLOCK_SIZE, encoding=self.encoding, use_threads=True
        )
        column_types = {names[i]: types.get(role, pa.string()) for role, i in wanted.items()}
        convert_options = pacsv.ConvertOptions(
            include_columns=list(column_types),
            column_types=column_types,
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )
        parse_options = pacsv.ParseOptions(newlines_in_values=False)
        typed = any(t != pa.string() for t in column_types.values())
        try:
            stream = pa.input_stream(str(self.path), compression=self.compression)
            reader = pacsv.open_csv(stream, read_options, parse_options, convert_options)
            for batch in reader:
                yield {role: batch.column(names[i]) for role, i in wanted.items()}
        except pa.ArrowInvalid as exc:
            message = str(exc).splitlines()[0]
            if "invalid UTF8" in message and self.encoding == "utf8":
                raise _Retry(latin1=True) from None
            if typed and "conversion error" in message:
                raise _Retry(latin1=False) from None
            raise InputError(self.path, f"unreadable CSV ({message})") from None
        except (OSError, pa.ArrowException) as exc:
            raise InputError(self.path, f"corrupt or truncated data ({exc})") from None


class _Column:
    """One column, fed block by block. Integer and timestamp columns are kept as numbers. Strings
    are dictionary-encoded a group of blocks at a time (one pyarrow hash table per group, so the
    raw strings held at once stay bounded) and the group dictionaries unified at the end."""

    GROUP_ROWS = 4_000_000

    def __init__(self) -> None:
        self._parts: list = []  # numpy arrays (int, time) or (int32 indices, dictionary) per group
        self._pending: list[pa.Array] = []
        self._pending_rows = 0
        self._rows = 0
        self._kind = ""

    def add(self, values: pa.Array) -> None:
        kind = "string"
        if pa.types.is_integer(values.type):
            if values.null_count:  # an empty id: its string reading decides what it means
                raise _Retry(latin1=False)
            kind = "int"
            self._parts.append(values.to_numpy())
        elif pa.types.is_timestamp(values.type):
            kind = "time"
            seconds = pc.cast(values, pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64)
            self._parts.append(np.where(values.is_null().to_numpy(zero_copy_only=False), np.nan, seconds))
        else:
            self._pending.append(values)
            self._pending_rows += len(values)
            if self._pending_rows >= self.GROUP_ROWS:
                self._encode_pending()
        if self._kind and kind != self._kind:  # pragma: no cover - types are fixed per read
            raise AssertionError("mixed column types")
        self._kind = kind
        self._rows += len(values)

    def _encode_pending(self) -> None:
        if self._pending:
            encoded = pa.chunked_array(self._pending, pa.string()).dictionary_encode()
            indices = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in encoded.chunks])
            self._parts.append((indices, encoded.chunk(0).dictionary))
        self._pending, self._pending_rows = [], 0

    def __len__(self) -> int:
        return self._rows

    def _take_parts(self) -> list:
        """The blocks, handed over once: a column is read once, and a 30-million-row file should
        not keep its blocks alive beside the arrays made from them."""
        self._encode_pending()
        parts, self._parts = self._parts, []
        return parts

    def factorize(self) -> tuple[np.ndarray, np.ndarray]:
        """(distinct values as str, first-appearance order; int64 id per row), whitespace stripped.
        Consumes the column."""
        if self._kind == "time":  # pragma: no cover - times are read with times()
            raise AssertionError("times are not factorized")
        parts = self._take_parts()
        if self._kind == "int":
            ids, distinct = pd.factorize(np.concatenate(parts))
            return distinct.astype(str), ids.astype(np.int64, copy=False)
        if not parts:
            return np.zeros(0, dtype=str), np.zeros(0, dtype=np.int64)
        dictionaries = [dictionary for _, dictionary in parts]
        offsets = np.cumsum([0] + [len(d) for d in dictionaries[:-1]])
        ids = np.empty(sum(len(indices) for indices, _ in parts), dtype=np.int64)
        start = 0
        for (indices, _), offset in zip(parts, offsets, strict=True):
            np.add(indices, offset, out=ids[start : start + len(indices)])
            start += len(indices)
        del parts
        values = pc.utf8_trim_whitespace(pa.concat_arrays(dictionaries))
        distinct = pc.unique(values)
        remap = pc.index_in(values, value_set=distinct).to_numpy(zero_copy_only=False).astype(np.int64)
        return np.asarray(distinct.to_numpy(zero_copy_only=False), dtype=str), remap[ids]

    def times(self, source: Path | str, first_line: int) -> np.ndarray:
        """Row times as float (epoch seconds, or plain numbers); NaN = missing. Consumes the column."""
        if self._kind == "time":
            return np.concatenate(self._take_parts())
        if self._kind == "int":
            return np.concatenate(self._take_parts()).astype(np.float64)
        distinct, ids = self.factorize()
        return _parse_times(distinct, ids, source, first_line)[ids]


def _stream(
    csv_file: _CsvFile,
    wanted: dict[str, int],
    typed: Sequence[str] = (),
    transform: Callable[[dict[str, pa.Array]], dict[str, pa.Array]] | None = None,
) -> dict[str, _Column]:
    """Read the wanted columns (role -> index) of a whole file; roles in `typed` may parse natively."""
    types = {role: csv_file.sniff_type(wanted[role], time=role == "time") for role in typed if role in wanted}
    for _attempt in range(3):
        columns: dict[str, _Column] = {}
        try:
            for batch in csv_file.batches(wanted, types):
                for role, values in (transform(batch) if transform else batch).items():
                    columns.setdefault(role, _Column()).add(values)
        except _Retry as retry:
            if retry.latin1:
                warnings.warn(f"{csv_file.path}: not valid UTF-8, read as latin-1", stacklevel=3)
                csv_file = replace(csv_file, encoding="latin-1")
            else:
                types = {}
            continue
        if not columns or len(next(iter(columns.values()))) == 0:
            raise InputError(csv_file.path, "header only, no data rows")
        return columns
    raise AssertionError("unreachable")  # pragma: no cover


def _unify(*parts: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Factorized columns of different files -> one shared id space (MIMIC hadm ids)."""
    names = np.concatenate([distinct for distinct, _ in parts])
    shared, uniques = pd.factorize(names)
    result, start = [], 0
    for distinct, ids in parts:
        result.append(shared[start : start + len(distinct)][ids].astype(np.int64))
        start += len(distinct)
    return np.asarray(uniques, dtype=str), result


def _parse_times(values: np.ndarray, ids: np.ndarray, source: Path | str, first_line: int) -> np.ndarray:
    """Distinct time strings -> float (epoch seconds, or the numbers themselves); NaN = empty.

    Parsed once per distinct value. Plain numbers (day 3, visit 7) order as numbers; dates
    try ISO 8601, then the format guessed from the first other value. Anything else is an error
    that names the first bad value and its line.
    """
    text = pd.Series(values, dtype=object)
    empty = (text == "").to_numpy()
    numbers = pd.to_numeric(text, errors="coerce")
    if numbers[~empty].notna().all():
        return numbers.to_numpy(dtype=np.float64)
    # pandas reads "now" and "today" as the current clock time: never a date of the data.
    clock = text.str.strip().str.lower().isin(("now", "today")).to_numpy()
    # utc=True: times with an offset (Z, +01:00) become instants, naive times count as UTC;
    # without it pandas raises on a column that mixes offsets.
    parsed = pd.to_datetime(text, errors="coerce", format="ISO8601", utc=True)
    bad = (parsed.isna().to_numpy() | clock) & ~empty
    if bad.any():
        from pandas.tseries.api import guess_datetime_format

        guessed = guess_datetime_format(text[bad].iloc[0])
        if guessed:
            retry = pd.to_datetime(text[bad], errors="coerce", format=guessed, utc=True)
            parsed = parsed.where(~bad, retry)
            bad = (parsed.isna().to_numpy() | clock) & ~empty
    if bad.any():
        first = int(np.argmax(bad))  # distinct values are in first-appearance order
        row = int(np.argmax(ids == first))
        raise InputError(
            source,
            f"unparsable date {text.iloc[first]!r} ({int(bad.sum()):,} distinct bad values); "
            "expected ISO dates such as 2130-04-01 or 2130-04-01 13:05:00",
            first_line + row,
        )
    seconds = parsed.to_numpy(dtype="datetime64[s]").astype(np.int64).astype(np.float64)
    seconds[empty] = np.nan
    return seconds


def _visits_by_time(row_time: np.ndarray, source: str, first_line: int | None) -> np.ndarray:
    """Without a visit column, a visit is (patient, time): equal times, however written, are one visit."""
    missing = np.isnan(row_time)
    if missing.any():
        line = None if first_line is None else first_line + int(np.argmax(missing))
        raise InputError(source, "empty time, and no visit column to tell visits apart", line)
    return np.unique(row_time, return_inverse=True)[1].astype(np.int64)


# ============================================================================ long CSV
def _long_columns(csv_file: _CsvFile, columns: dict[str, str] | None) -> dict[str, int]:
    """Role -> column index: `columns` first, then the known names; patient, code and visit or time."""
    columns = {k.lower(): v for k, v in (columns or {}).items()}
    for role in columns:
        if role not in ROLES:
            raise InputError(csv_file.path, f"--columns: unknown role {role!r}, expected {', '.join(ROLES)}")
    wanted: dict[str, int] = {}
    for role in ROLES:
        if role in columns:
            found = csv_file.find([columns[role]])
            if found is None:
                raise InputError(
                    csv_file.path,
                    f"--columns {role}={columns[role]}: no such column; "
                    f"found columns {', '.join(csv_file.header)}",
                    1,
                )
            wanted[role] = found
        else:
            found = csv_file.find(ROLE_NAMES[role])
            if found is not None and found not in wanted.values():
                wanted[role] = found
    hint = " (name yours with --columns patient=COL,visit=COL,time=COL,code=COL)"
    for role in ("patient", "code"):
        if role not in wanted:
            raise InputError(
                csv_file.path,
                f"no {role} column: found columns {', '.join(csv_file.header)}; expected one of "
                f"{', '.join(ROLE_NAMES[role])}{hint}",
                1,
            )
    if "visit" not in wanted and "time" not in wanted:
        raise InputError(
            csv_file.path,
            f"no visit or time column: found columns {', '.join(csv_file.header)}; expected one of "
            f"{', '.join(ROLE_NAMES['visit'] + ROLE_NAMES['time'])}{hint}",
            1,
        )
    return wanted


def _read_long_csv(path: Path, columns: dict[str, str] | None, kind: str, source: str | None = None) -> _Rows:
    csv_file = _CsvFile.open(path)
    wanted = _long_columns(csv_file, columns)
    data = _stream(csv_file, wanted, typed=("patient", "visit", "time"))
    patient_names, row_patient = data["patient"].factorize()
    patient_names, row_patient, orphans = _drop_empty_patient(patient_names, row_patient)
    code_names, row_code = data["code"].factorize()
    row_time = data["time"].times(path, first_line=2) if "time" in data else None
    if "visit" in data:
        row_visit = data["visit"].factorize()[1]
    else:
        row_visit = _visits_by_time(row_time, str(path), first_line=2)
    return _Rows(
        source=source or str(path),
        kind=kind,
        patient_names=patient_names,
        patient=row_patient,
        visit=row_visit,
        time=row_time,
        code_names=code_names.tolist(),
        code=row_code,
        first_line=2,
        orphan_rows=orphans,
    )


def _drop_empty_patient(names: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows with an empty patient id belong to no patient: id -1, counted, never a pseudo-patient."""
    empty = np.flatnonzero(names == "")
    if len(empty) == 0:
        return names, ids, 0
    index = int(empty[0])
    orphan = ids == index
    ids = np.where(ids > index, ids - 1, ids)
    ids[orphan] = -1
    return np.delete(names, index), ids, int(orphan.sum())


def _read_synth_folder(folder: Path, ontology: Ontology, columns: dict[str, str] | None) -> _Rows:
    manifest_path = folder / SYNTH_MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        data_file = folder / manifest.get("file", "visits.csv.gz")
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(manifest_path, f"unreadable synth manifest ({exc})") from None
    made_for = manifest.get("ontology")
    if made_for and made_for != ontology.name:
        warnings.warn(
            f"{folder}: synthetic data generated for ontology {made_for}, loaded with {ontology.name}",
            stacklevel=3,
        )
    return _read_long_csv(data_file, columns, kind="synth", source=str(folder))


def _rows_from_frame(frame: pd.DataFrame, columns: dict[str, str] | None, source: str, kind: str) -> _Rows:
    """A long DataFrame -> _Rows, with pandas factorize (no string round trip for ints/categoricals)."""
    lowered = {str(c).lower(): c for c in frame.columns}
    chosen: dict[str, object] = {}
    for role in ROLES:
        names = [columns[role]] if columns and role in columns else ROLE_NAMES[role]
        match = next((lowered[n.lower()] for n in names if n.lower() in lowered), None)
        if match is not None:
            chosen[role] = match
    missing = [r for r in ("patient", "code") if r not in chosen]
    if missing or ("visit" not in chosen and "time" not in chosen):
        raise InputError(
            source,
            f"no {' / '.join(missing) or 'visit or time'} column: found columns {list(frame.columns)}",
        )
    if len(frame) == 0:
        raise InputError(source, "no data rows")
    row_patient, patient_names = pd.factorize(frame[chosen["patient"]])
    codes = frame[chosen["code"]]
    if isinstance(codes.dtype, pd.CategoricalDtype):
        row_code = codes.cat.codes.to_numpy().astype(np.int64)
        code_names = [str(c).strip() for c in codes.cat.categories]
    else:
        row_code, names = pd.factorize(codes.fillna("").astype(str).str.strip())
        code_names = list(names)
    row_time = None
    if "time" in chosen:
        times = frame[chosen["time"]]
        if pd.api.types.is_datetime64_any_dtype(times):
            row_time = times.to_numpy(dtype="datetime64[s]").astype(np.int64).astype(np.float64)
            row_time[times.isna().to_numpy()] = np.nan
        elif pd.api.types.is_numeric_dtype(times):
            row_time = times.to_numpy(dtype=np.float64)
        else:
            time_ids, time_names = pd.factorize(times.astype(str).str.strip())
            row_time = _parse_times(np.asarray(time_names, dtype=str), time_ids, source, 0)[time_ids]
    if "visit" in chosen:
        row_visit = pd.factorize(frame[chosen["visit"]])[0]
    else:
        row_visit = _visits_by_time(row_time, source, first_line=None)
    return _Rows(
        source=source,
        kind=kind,
        patient_names=np.asarray(patient_names.astype(str), dtype=str),
        patient=row_patient.astype(np.int64),
        visit=np.asarray(row_visit, dtype=np.int64),
        time=row_time,
        code_names=code_names,
        code=row_code,
        orphan_rows=int(np.count_nonzero(row_patient < 0)),
    )


# ============================================================================ MIMIC-III / IV
def _find_file(folder: Path, stem: str) -> Path | None:
    """`stem.csv` or `stem.csv.gz` in any letter case."""
    if not folder.is_dir():
        return None
    wanted = {f"{stem}.csv", f"{stem}.csv.gz"}
    matches = sorted(p for p in folder.iterdir() if p.name.lower() in wanted and p.is_file())
    return matches[0] if matches else None


def _find_mimic(path: Path) -> tuple[Path, Path]:
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


def _read_mimic(admissions_path: Path, diagnoses_path: Path, ontology: Ontology) -> _Rows:
    """Visits = admissions (HADM_ID) ordered by ADMITTIME within SUBJECT_ID; codes = DIAGNOSES_ICD."""
    admissions = _CsvFile.open(admissions_path)
    diagnoses = _CsvFile.open(diagnoses_path)
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

    systems = all(s in ontology for s in ICD_SYSTEMS)

    def namespaced(batch: dict[str, pa.Array]) -> dict[str, pa.Array]:
        """`ICD9:4019` / `ICD10:I10`: the combined ontology's ids, built per block by pyarrow."""
        code = pc.utf8_trim_whitespace(batch["code"])
        version = pc.utf8_trim_whitespace(batch["version"]) if "version" in batch else "9"
        joined = pc.binary_join_element_wise("ICD", version, ":", code, "")
        return {**batch, "code": pc.if_else(pc.equal(code, ""), code, joined)}

    adm = _stream(admissions, adm_cols, typed=("patient", "visit", "time"))
    diag = _stream(diagnoses, diag_cols, typed=("visit",), transform=namespaced if systems else None)
    # hadm ids of both tables in one id space
    hadm_names, (adm_hadm, row_hadm) = _unify(adm["visit"].factorize(), diag["visit"].factorize())
    num_hadm = int(max(adm_hadm.max(initial=-1), row_hadm.max(initial=-1))) + 1
    code_names, row_code = diag["code"].factorize()

    # Admission facts per hadm id (the first row wins if an id repeats). An empty subject_id is
    # no patient, and an empty hadm_id no admission: their diagnoses are orphans, never a
    # pseudo-patient "" or one visit merged from unrelated rows.
    patient_names, adm_patient = adm["patient"].factorize()
    patient_names, adm_patient, _ = _drop_empty_patient(patient_names, adm_patient)
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
    return _Rows(
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
