"""Long-format sources: a CSV with one row per (patient, visit or time, code), a pandas
DataFrame with the same columns, or nested Python lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hapnet.data.csv_stream import CsvFile, stream_columns
from hapnet.data.sharding import PatientShard, first_rows
from hapnet.data.table import LongTable, drop_empty_patient
from hapnet.data.times import SECONDS_PER_DAY, parse_times, visits_by_time
from hapnet.errors import HapnetError, InputError

ROLES = ("patient", "visit", "time", "code")
# Column names recognised in a long CSV, case-insensitively, most specific first.
ROLE_NAMES: dict[str, tuple[str, ...]] = {
    "patient": ("patient", "patient_id", "subject_id", "person_id", "pid", "member_id"),
    "visit": ("visit", "visit_id", "hadm_id", "encounter_id", "admission_id", "encounter"),
    "time": ("time", "date", "visit_time", "admittime", "admit_date", "visit_date", "start"),
    "code": ("code", "icd_code", "icd9_code", "icd10_code", "diagnosis", "dx", "diagnosis_code"),
}


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


def _long_columns(csv_file: CsvFile, columns: dict[str, str] | None) -> dict[str, int]:
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


def read_long_csv(
    path: Path,
    columns: dict[str, str] | None,
    kind: str,
    source: str | None = None,
    shard: PatientShard | None = None,
) -> LongTable:
    """A long CSV as a LongTable; with `shard`, the rows of that shard's patients only."""
    csv_file = CsvFile.open(path)
    wanted = _long_columns(csv_file, columns)
    keep = None if shard is None else lambda block: shard.owns(block["patient"])
    data = stream_columns(
        csv_file, wanted, typed=("patient", "visit", "time"), keep=keep, file_values=("time",)
    )
    patient_names, row_patient = data["patient"].factorize()
    patient_names, row_patient, orphans = drop_empty_patient(patient_names, row_patient)
    order = None
    if shard is not None:
        order = first_rows(row_patient, data["row"].integers(), len(patient_names))
    code_names, row_code = data["code"].factorize()
    row_time = data["time"].times(path, first_line=2) if "time" in data else None
    if "visit" in data:
        row_visit = data["visit"].factorize()[1]
    else:
        row_visit = visits_by_time(row_time, str(path), first_line=2)
    return LongTable(
        source=source or str(path),
        kind=kind,
        patient_names=patient_names,
        patient=row_patient,
        visit=row_visit,
        time=row_time,
        code_names=code_names.tolist(),
        code=row_code,
        first_line=None if shard is not None else 2,  # a shard's rows are not the file's
        orphan_rows=orphans,
        patient_order=order,
    )


def rows_from_frame(frame: pd.DataFrame, columns: dict[str, str] | None, source: str, kind: str) -> LongTable:
    """A long DataFrame -> LongTable, with pandas factorize (no string round trip for ints/categoricals)."""
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
            row_time = times.to_numpy(dtype=np.float64) * SECONDS_PER_DAY
        else:
            time_ids, time_names = pd.factorize(times.astype(str).str.strip())
            row_time = parse_times(np.asarray(time_names, dtype=str), time_ids, source, 0)[time_ids]
    if "visit" in chosen:
        row_visit = pd.factorize(frame[chosen["visit"]])[0]
    else:
        row_visit = visits_by_time(row_time, source, first_line=None)
    return LongTable(
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
