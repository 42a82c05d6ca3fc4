"""Dates and times of visits: parsed once per distinct value; equal times make one visit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format

from hapnet.errors import InputError

SECONDS_PER_DAY = 86_400.0  # a numeric time column counts days (times are held as seconds)


def parse_times(values: np.ndarray, ids: np.ndarray, source: Path | str, first_line: int) -> np.ndarray:
    """Distinct time strings -> float epoch seconds; NaN = empty.

    Parsed once per distinct value. Plain numbers (day 3, visit 7) count as days; dates
    try ISO 8601, then the format guessed from the first other value. Anything else is an error
    that names the first bad value and its line.
    """
    text = pd.Series(values, dtype=object)
    empty = (text == "").to_numpy()
    numbers = pd.to_numeric(text, errors="coerce")
    if numbers[~empty].notna().all():
        return numbers.to_numpy(dtype=np.float64) * SECONDS_PER_DAY
    # pandas reads "now" and "today" as the current clock time: never a date of the data.
    clock = text.str.strip().str.lower().isin(("now", "today")).to_numpy()
    # utc=True: times with an offset (Z, +01:00) become instants, naive times count as UTC;
    # without it pandas raises on a column that mixes offsets.
    parsed = pd.to_datetime(text, errors="coerce", format="ISO8601", utc=True)
    bad = (parsed.isna().to_numpy() | clock) & ~empty
    if bad.any():
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


def visits_by_time(row_time: np.ndarray, source: str, first_line: int | None) -> np.ndarray:
    """Without a visit column, a visit is (patient, time): equal times, however written, are one visit."""
    missing = np.isnan(row_time)
    if missing.any():
        line = None if first_line is None else first_line + int(np.argmax(missing))
        raise InputError(source, "empty time, and no visit column to tell visits apart", line)
    return np.unique(row_time, return_inverse=True)[1].astype(np.int64)
