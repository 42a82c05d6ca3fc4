"""MEDS datasets (Medical Event Data Standard): `data/**/*.parquet` events and `metadata/`.

Each data file holds events (`subject_id`, `time`, `code`, optional columns); its schema is checked
against the `meds` package's `DataSchema`. Diagnoses are the events whose code is one of the known
forms or matches `--code-pattern` (`hapnet.ontology.meds_codes`); every other event is counted and
left out. Only the needed columns are read, a block of rows at a time.

Visits: a diagnosis with a visit id (`hadm_id`, as MIMIC-IV MEDS-Extract writes, or `visit_id`)
belongs to the visit (subject, id), timed by the subject's `HOSPITAL_ADMISSION//...` event of that id
(MIMIC-IV's admittime), else by its earliest diagnosis. A diagnosis without a visit id makes a visit
with the subject's other diagnoses of the same `time`. `metadata/subject_splits.parquet`, when
there, gives each patient's split label (`VisitData.patient_splits`, for `--split meds`).
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hapnet.data.code_systems import settle_systems
from hapnet.data.parquet_stream import BATCH_ROWS, parquet_files
from hapnet.data.sharding import PatientShard, first_rows
from hapnet.data.table import LongTable
from hapnet.errors import InputError, error_summary
from hapnet.ontology.graph import Ontology
from hapnet.ontology.meds_codes import DATA_FOLDER, SPLITS_FILE, MedsCodes, is_text, parquet_schema
from hapnet.utils.textio import os_error_reason

VISIT_COLUMNS = ("hadm_id", "visit_id")  # a diagnosis's visit id, the first of these a file has
ADMISSION_CODE = "HOSPITAL_ADMISSION"  # MEDS-Extract's admission event: `HOSPITAL_ADMISSION//type//...`
_TIME_UNITS = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


def is_meds_folder(path: Path) -> bool:
    """A MEDS dataset root: a `data/` folder beside `metadata/`, or holding parquet files."""
    data = path / DATA_FOLDER
    try:
        return data.is_dir() and ((path / "metadata").is_dir() or any(data.rglob("*.parquet")))
    except OSError:
        return False


def _same_kind(found: pa.DataType, wanted: pa.DataType) -> bool:
    """A column type MEDS' one reads as: any integer width, timestamp unit or time zone, string or
    large string (as polars and pandas write them)."""
    if pa.types.is_dictionary(found):
        found = found.value_type
    if pa.types.is_integer(wanted):
        return pa.types.is_integer(found)
    if pa.types.is_timestamp(wanted):
        return pa.types.is_timestamp(found)
    if pa.types.is_string(wanted) or pa.types.is_large_string(wanted):
        return is_text(found)
    return found == wanted


def check_data_schema(path: Path, schema: pa.Schema) -> None:
    """One line naming the first missing or mistyped column of MEDS' `DataSchema`."""
    import meds  # its schema library pulls in jsonschema (~60 ms): only when a MEDS folder is read

    required = meds.DataSchema.required_columns()
    expected = meds.DataSchema.schema()
    for name in required:
        if name not in schema.names:
            raise InputError(
                path,
                f"not a MEDS data file: no column {name!r} (MEDS data need {', '.join(required)}; found "
                f"{', '.join(schema.names) or 'no columns'})",
            )
        found, wanted = schema.field(name).type, expected.field(name).type
        if not _same_kind(found, wanted):
            raise InputError(path, f"column {name!r} is {found}, MEDS needs {wanted}")


@dataclass
class _Events:
    """What the blocks of all data files leave: diagnosis rows, admission rows, and counts."""

    codes: MedsCodes
    names: list[str] = field(default_factory=list)  # distinct diagnosis codes (bare, normalised)
    systems: list[int] = field(default_factory=list)  # their systems (ICD9, ICD10, UNDECIDED)
    name_ids: dict[tuple[int, str], int] = field(default_factory=dict)
    raw_kind: dict[str, int] = field(default_factory=dict)  # raw code -> diagnosis id, -1 other, -2 admission
    subject: list[np.ndarray] = field(default_factory=list)
    time: list[np.ndarray] = field(default_factory=list)
    code: list[np.ndarray] = field(default_factory=list)
    visit: list[pa.Array] = field(default_factory=list)
    adm_subject: list[np.ndarray] = field(default_factory=list)
    adm_time: list[np.ndarray] = field(default_factory=list)
    adm_visit: list[pa.Array] = field(default_factory=list)
    events: int = 0
    orphans: int = 0  # diagnoses without a subject_id
    other: Counter = field(default_factory=Counter)  # events that are no diagnosis, by first code part
    shard: PatientShard | None = None  # keep this shard's subjects only (a rank of a distributed run)
    scanned: int = 0  # events read, every subject's
    row: list[np.ndarray] = field(default_factory=list)  # each diagnosis row's event number

    def kind_of(self, raw: str | None) -> int:
        """The diagnosis id of a raw code, -1 for another event, -2 for an admission event."""
        if raw is None:
            return -1
        found = self.raw_kind.get(raw)
        if found is None:
            diagnosis = self.codes.diagnosis(raw)
            if diagnosis is not None:
                found = self.name_ids.setdefault(diagnosis, len(self.names))
                if found == len(self.names):
                    self.systems.append(diagnosis[0])
                    self.names.append(diagnosis[1])
            elif raw == ADMISSION_CODE or raw.startswith(ADMISSION_CODE + "//"):
                found = -2
            else:
                found = -1
            self.raw_kind[raw] = found
        return found

    def _row_kinds(self, codes: pa.Array) -> tuple[np.ndarray, np.ndarray, list]:
        """(each row's kind, as `kind_of`; its index into the distinct codes, -1 for none; those codes)."""
        if pa.types.is_dictionary(codes.type):
            codes = codes.dictionary_decode()
        encoded = pc.dictionary_encode(codes)
        dictionary = encoded.dictionary.to_pylist()
        kinds = np.array([self.kind_of(raw) for raw in dictionary] + [-1], dtype=np.int64)  # [-1]: null
        index = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
        return kinds[index], index, dictionary

    def add(self, batch: pa.RecordBatch, visit_column: str | None) -> None:
        numbers = np.arange(self.scanned, self.scanned + batch.num_rows)
        self.scanned += batch.num_rows
        if self.shard is not None:
            subjects = batch.column("subject_id")
            if subjects.null_count:  # diagnoses of no subject: every rank counts the file's (one note)
                nobody = batch.filter(subjects.is_null())
                self.orphans += int(np.count_nonzero(self._row_kinds(nobody.column("code"))[0] >= 0))
            # rows of no subject go to the shard of the empty id: it counts their other events
            mine = self.shard.owns(subjects)
            batch, numbers = batch.filter(pa.array(mine)), numbers[mine]
        row_kind, index, dictionary = self._row_kinds(batch.column("code"))
        self.events += len(row_kind)
        other = np.bincount(index[row_kind < 0] % (len(dictionary) + 1), minlength=len(dictionary) + 1)
        for i in np.flatnonzero(other).tolist():
            label = (
                "(empty code)" if i == len(dictionary) or not dictionary[i] else dictionary[i].split("/")[0]
            )
            self.other[label] += int(other[i])

        subject_col = batch.column("subject_id")
        subject_ok = subject_col.is_valid().to_numpy(zero_copy_only=False)
        subject = pc.fill_null(pc.cast(subject_col, pa.int64()), 0).to_numpy(zero_copy_only=False)
        seconds = _seconds(batch.column("time"))
        visit = None
        if visit_column is not None:
            visit = _visit_ids(batch.column(visit_column))
        diagnosis = row_kind >= 0
        if self.shard is None:  # (a shard's were counted before the shard was cut)
            self.orphans += int(np.count_nonzero(diagnosis & ~subject_ok))
        rows = np.flatnonzero(diagnosis & subject_ok)
        if len(rows):
            self.subject.append(subject[rows])
            self.time.append(seconds[rows])
            self.code.append(row_kind[rows])
            self.row.append(numbers[rows])
            self.visit.append(visit.take(rows) if visit is not None else pa.nulls(len(rows), pa.string()))
        if visit is not None:
            with_id = visit.is_valid().to_numpy(zero_copy_only=False)
            admissions = np.flatnonzero((row_kind == -2) & subject_ok & with_id)
            if len(admissions):
                self.adm_subject.append(subject[admissions])
                self.adm_time.append(seconds[admissions])
                self.adm_visit.append(visit.take(admissions))


def _seconds(times: pa.Array) -> np.ndarray:
    """A timestamp column as float epoch seconds, NaN where null."""
    kind = times.type
    ticks = pc.fill_null(pc.cast(times, pa.int64()), 0).to_numpy(zero_copy_only=False)
    seconds = ticks.astype(np.float64) / _TIME_UNITS[kind.unit]
    seconds[~times.is_valid().to_numpy(zero_copy_only=False)] = np.nan
    return seconds


def _visit_ids(values: pa.Array) -> pa.Array:
    """Visit ids as text (integers, whole floats or strings), null where there is none."""
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_floating(values.type):
        values = pc.cast(values, pa.int64())  # pandas writes ids with gaps as floats; 1.5 is refused
    text = values if pa.types.is_string(values.type) else pc.cast(values, pa.string())
    return pc.if_else(pc.equal(pc.utf8_trim_whitespace(text), ""), pa.scalar(None, pa.string()), text)


def _visit_column(path: Path, schema: pa.Schema) -> str | None:
    name = next((n for n in VISIT_COLUMNS if n in schema.names), None)
    if name is not None:
        kind = schema.field(name).type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        readable = (pa.types.is_integer, pa.types.is_floating, pa.types.is_string, pa.types.is_large_string)
        if not any(test(kind) for test in readable):
            raise InputError(path, f"column {name!r} is {kind}: expected integer or string visit ids")
    return name


def read_meds(
    root: Path, ontology: Ontology, codes: MedsCodes, shard: PatientShard | None = None
) -> LongTable:
    """The diagnoses of a MEDS dataset as a LongTable (visits, times, codes, split labels); with
    `shard`, those of that shard's subjects only."""
    data_folder = root / DATA_FOLDER
    files = parquet_files(data_folder)
    if not files:
        raise InputError(data_folder, "no .parquet files: an empty MEDS dataset (expected data/**/*.parquet)")
    events = _Events(codes, shard=shard)
    for file in files:
        schema = parquet_schema(file)
        check_data_schema(file, schema)
        visit_column = _visit_column(file, schema)
        columns = ["subject_id", "time", "code"] + ([visit_column] if visit_column else [])
        try:
            for batch in pq.ParquetFile(file).iter_batches(batch_size=BATCH_ROWS, columns=columns):
                events.add(batch, visit_column)
        except OSError as exc:
            reason = os_error_reason(exc) if exc.errno else error_summary(exc)
            raise InputError(file, f"unreadable parquet data ({reason})") from None
        except pa.ArrowException as exc:
            raise InputError(file, f"unreadable parquet data ({error_summary(exc)})") from None
    if not events.code and shard is None:  # a shard may hold no diagnosis: the run checks the sum
        sample = ", ".join(repr(c) for c, _ in events.other.most_common(3))
        raise InputError(
            root,
            f"no diagnosis event among its {events.events:,} events (most frequent kinds: "
            f"{sample or 'none'}); expected {codes.describe()}, or name yours with --code-pattern",
        )
    return _assemble_rows(root, events, ontology)


def _assemble_rows(root: Path, events: _Events, ontology: Ontology) -> LongTable:
    source = str(root)
    shard = events.shard
    # what a shard counts is its patients' alone: its messages say so (no two pass as one)
    said = source if shard is None else f"{source} (the patients of shard {shard.index + 1} of {shard.count})"
    subject = np.concatenate(events.subject) if events.subject else np.zeros(0, dtype=np.int64)
    own_time = np.concatenate(events.time) if events.time else np.zeros(0)
    row_code = np.concatenate(events.code) if events.code else np.zeros(0, dtype=np.int64)
    row_numbers = np.concatenate(events.row) if events.row else np.zeros(0, dtype=np.int64)
    row_patient, patient_values = pd.factorize(subject)
    patient_names = np.asarray(patient_values.astype(str), dtype=str)
    notes: list[str] = []

    # Visit ids of diagnoses and admission events in one id space; visits are (patient, id).
    visit_text = pa.chunked_array(events.visit + events.adm_visit, pa.string()).combine_chunks()
    encoded = pc.dictionary_encode(visit_text)
    visit_code = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    row_visit_code, adm_visit_code = visit_code[: len(row_code)], visit_code[len(row_code) :]
    num_ids = len(encoded.dictionary) + 1
    has_id = row_visit_code >= 0
    pair = row_patient * num_ids + row_visit_code
    id_pairs, id_visit = np.unique(pair[has_id], return_inverse=True)
    row_time = own_time.copy()
    admissions_without_diagnoses = 0
    if events.adm_subject:
        adm_subject = np.concatenate(events.adm_subject)
        adm_time = np.concatenate(events.adm_time)
        adm_patient = pd.Index(patient_values).get_indexer(adm_subject)
        adm_pair = adm_patient * num_ids + adm_visit_code  # -1 patients: no diagnosis, never matched
        position = np.minimum(np.searchsorted(id_pairs, adm_pair), max(len(id_pairs) - 1, 0))
        matched = (adm_patient >= 0) & (id_pairs[position] == adm_pair if len(id_pairs) else False)
        admitted = np.full(len(id_pairs), np.nan)
        np.fmin.at(admitted, position[matched], adm_time[matched])
        timed = has_id.copy()
        timed[has_id] = ~np.isnan(admitted[id_visit])
        row_time[timed] = admitted[id_visit[~np.isnan(admitted[id_visit])]]
        admissions = pd.DataFrame({"subject": adm_subject, "visit": adm_visit_code}).drop_duplicates()
        admissions_without_diagnoses = len(admissions) - len(np.unique(adm_pair[matched]))

    # Without a visit id: the subject's diagnoses of one time. Without a time too: no visit.
    row_visit = np.full(len(row_code), -1, dtype=np.int64)
    row_visit[has_id] = id_visit
    by_time = ~has_id & ~np.isnan(own_time)
    row_visit[by_time] = len(id_pairs) + np.unique(own_time[by_time], return_inverse=True)[1]
    timeless = ~has_id & np.isnan(own_time)
    if timeless.any():
        message = (
            f"{said}: {int(timeless.sum()):,} diagnosis events have neither a time nor a visit id "
            f"({', '.join(VISIT_COLUMNS)}): they belong to no visit and were left out"
        )
        warnings.warn(message, stacklevel=4)
        notes.append(message)

    num_visits = int(row_visit.max(initial=-1)) + 2
    settled = settle_systems(
        events.names,
        row_code,
        np.asarray(events.systems, dtype=np.int8)[row_code],
        np.where(row_visit >= 0, row_patient * num_visits + row_visit, -1),
        ontology,
        said,
    )
    notes += settled.notes
    keep = ~timeless if settled.keep is None else settled.keep & ~timeless
    other = sum(events.other.values())  # shown by kind in the report's "other events" row
    if events.orphans:  # the file's count, on every shard alike
        notes.append(f"{events.orphans:,} diagnosis events without a subject_id left out")
    return LongTable(
        source=source,
        kind="meds",
        patient_names=patient_names,
        patient=row_patient[keep].astype(np.int64),
        visit=row_visit[keep],
        time=row_time[keep],
        code_names=settled.code_names,
        code=settled.row_code[keep],
        orphan_rows=0,
        admissions_without_diagnoses=admissions_without_diagnoses,
        other_events=other,
        other_kinds=dict(events.other),
        notes=notes,
        patient_splits=read_subject_splits(root, patient_names),
        patient_order=None
        if events.shard is None
        else first_rows(row_patient, row_numbers, len(patient_names)),
    )


def read_subject_splits(root: Path, patient_names: np.ndarray) -> np.ndarray | None:
    """Each patient's label in `metadata/subject_splits.parquet` ("" for none); None without the file."""
    path = root / SPLITS_FILE
    if not path.exists():
        return None
    schema = parquet_schema(path)
    for name, ok, need in (
        ("subject_id", pa.types.is_integer, "int64"),
        ("split", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), "string"),
    ):
        if name not in schema.names:
            raise InputError(path, f"no column {name!r} (MEDS subject splits have subject_id, split)")
        if not ok(schema.field(name).type):
            raise InputError(path, f"column {name!r} is {schema.field(name).type}, MEDS needs {need}")
    try:
        table = pq.read_table(path, columns=["subject_id", "split"])
    except (OSError, pa.ArrowException) as exc:
        raise InputError(path, f"unreadable parquet data ({error_summary(exc)})") from None
    frame = table.to_pandas().dropna(subset=["subject_id"])
    frame["split"] = frame["split"].fillna("").astype(str).str.strip()
    frame = frame.drop_duplicates()
    twice = frame["subject_id"].duplicated(keep=False)
    if twice.any():
        subject = frame["subject_id"][twice].iloc[0]
        labels = sorted(frame["split"][frame["subject_id"] == subject])
        raise InputError(path, f"subject_id {subject} is in two splits ({' and '.join(labels)})")
    labels = pd.Series(frame["split"].to_numpy(), index=frame["subject_id"].astype(np.int64).astype(str))
    return labels.reindex(patient_names).fillna("").to_numpy(dtype=str)
