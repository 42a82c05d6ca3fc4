"""CSR index arithmetic (hapnet.utils.arrays) by hand and against plain Python loops."""

from __future__ import annotations

import numpy as np
import pytest

from hapnet.utils.arrays import (
    concat_ranges,
    csr_select,
    exclusive_cumsum,
    range_owners,
    range_positions,
    sorted_unique,
)


def test_by_hand() -> None:
    assert concat_ranges([5, 0, 9], [2, 3, 0]).tolist() == [5, 6, 0, 1, 2]
    assert range_positions([2, 0, 3]).tolist() == [0, 1, 0, 1, 2]
    assert range_owners([2, 0, 1]).tolist() == [0, 0, 2]
    assert exclusive_cumsum([2, 0, 3]).tolist() == [0, 2, 2]
    assert concat_ranges([], []).dtype == np.int64 and len(concat_ranges([3], [0])) == 0
    index, offsets = csr_select(np.array([0, 2, 2, 5]), np.array([2, 0]))  # rows of 2, 0 and 3 elements
    assert index.tolist() == [2, 3, 4, 0, 1] and offsets.tolist() == [0, 3, 5]


@pytest.mark.parametrize("seed", range(3))
def test_equal_loops(seed: int) -> None:
    rng = np.random.default_rng(seed)
    starts, lengths = rng.integers(0, 100, 30), rng.integers(0, 5, 30)
    expected = [s + i for s, n in zip(starts, lengths, strict=True) for i in range(n)]
    assert concat_ranges(starts, lengths).tolist() == expected
    assert range_positions(lengths).tolist() == [i for n in lengths for i in range(n)]
    assert range_owners(lengths).tolist() == [r for r, n in enumerate(lengths) for _ in range(n)]
    values = rng.integers(-5, 5, 200)
    assert np.array_equal(sorted_unique(values), np.unique(values))
    assert len(sorted_unique(np.zeros(0, dtype=np.int64))) == 0
