"""The patient split of the evaluation protocol (docs/algorithms.md) and target counts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hapnet.data.visits import VisitData
from hapnet.utils.arrays import concat_ranges

SPLIT = {"test": 0.2, "valid": 0.1}  # the rest trains


@dataclass
class Split:
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def split_patients(num_patients: int, seed: int) -> Split:
    """Random 70/10/20 split of patient indices with the run's seed."""
    order = np.random.default_rng(seed).permutation(num_patients)
    num_test = int(round(SPLIT["test"] * num_patients))
    num_valid = int(round(SPLIT["valid"] * num_patients))
    return Split(
        train=np.sort(order[num_test + num_valid :]),
        valid=np.sort(order[num_test : num_test + num_valid]),
        test=np.sort(order[:num_test]),
    )


def target_counts(
    data: VisitData, patients: np.ndarray, code_to_class: np.ndarray, num_codes: int
) -> np.ndarray:
    """How often each class is a prediction target (every visit but a patient's first)."""
    starts = data.patient_offsets[patients] + 1
    ends = data.patient_offsets[patients + 1]
    lengths = ends - starts
    visits = concat_ranges(starts, lengths)
    code_idx = concat_ranges(data.visit_offsets[visits], np.diff(data.visit_offsets)[visits])
    return np.bincount(code_to_class[data.codes[code_idx]], minlength=num_codes)
