"""Index arithmetic on numpy arrays, without a Python loop over rows.

CSR layouts are everywhere in hapnet (patients -> visits -> codes, node -> parents), and most of
their index work is one trick: the concatenation of many integer ranges, made with one `repeat`
and one `arange`. It lives here once.
"""

from __future__ import annotations

import numpy as np


def exclusive_cumsum(lengths: np.ndarray) -> np.ndarray:
    """Start of each range when ranges of `lengths` are laid end to end: [0, l0, l0 + l1, ...]."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.cumsum(lengths) - lengths


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """arange(starts[i], starts[i] + lengths[i]) for every i, concatenated (int64).

    `concat_ranges([5, 0], [2, 3])` -> [5, 6, 0, 1, 2].
    """
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    return np.repeat(starts - exclusive_cumsum(lengths), lengths) + np.arange(total, dtype=np.int64)


def range_positions(lengths: np.ndarray) -> np.ndarray:
    """Position of every element within its range: `range_positions([2, 3])` -> [0, 1, 0, 1, 2]."""
    return concat_ranges(np.zeros(len(lengths), dtype=np.int64), lengths)


def range_owners(lengths: np.ndarray) -> np.ndarray:
    """Which range every element belongs to: `range_owners([2, 0, 1])` -> [0, 0, 2]."""
    return np.repeat(np.arange(len(lengths), dtype=np.int64), np.asarray(lengths, dtype=np.int64))


def csr_select(offsets: np.ndarray, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows `chosen` of a CSR layout: (index of their elements, concatenated; their new offsets)."""
    starts = offsets[chosen]
    lengths = offsets[chosen + 1] - starts
    new_offsets = np.zeros(len(chosen) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    return concat_ranges(starts, lengths), new_offsets


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by sorting: numpy 2's hash-based unique is ~50x slower on millions of int64 keys."""
    ordered = np.sort(values)
    if len(ordered) == 0:
        return ordered
    first = np.empty(len(ordered), dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    return ordered[first]
