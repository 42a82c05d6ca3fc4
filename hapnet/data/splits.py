"""The patient split of the evaluation protocol (docs/algorithms.md), a MEDS dataset's own split,
and target counts."""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np

from hapnet.data.visits import VisitData
from hapnet.errors import HapnetError
from hapnet.ontology.meds_codes import HELD_OUT, SPLITS_FILE, TRAIN, TUNING
from hapnet.utils.arrays import concat_ranges

SPLIT = {"test": 0.2, "valid": 0.1}  # the rest trains
MEDS_SPLITS = {TRAIN: "train", TUNING: "valid", HELD_OUT: "test"}  # MEDS' split names -> ours


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


def dataset_split(data: VisitData, kind: str, seed: int) -> Split:
    """The run's patient split (`--split`): "random" is `split_patients` by the seed; "meds" is the
    data's own split labels (a MEDS dataset's metadata/subject_splits.parquet): train, tuning ->
    valid, held_out -> test. Patients with another label or none take no part (with a warning).
    """
    return make_split(kind, len(data.patient_ids), data.patient_splits, data.report.source, seed)


def make_split(kind: str, num_patients: int, labels: np.ndarray | None, source: str, seed: int) -> Split:
    """`dataset_split` of data with `num_patients` patients and these split labels (None: none)."""
    if kind == "random":
        return split_patients(num_patients, seed)
    if kind != "meds":
        raise HapnetError(f"--split must be random or meds, got {kind!r}")
    if labels is None or len(labels) != num_patients:
        raise HapnetError(
            f"--split meds: {source} has no split labels (a MEDS dataset's {SPLITS_FILE}); use --split random"
        )
    parts = {ours: np.flatnonzero(labels == theirs) for theirs, ours in MEDS_SPLITS.items()}
    empty = [theirs for theirs, ours in MEDS_SPLITS.items() if len(parts[ours]) == 0]
    if empty:
        counts = ", ".join(
            f"{label or '(none)'} {n:,}" for label, n in Counter(labels.tolist()).most_common()
        )
        raise HapnetError(
            f"--split meds: no patient of {source} (with 2+ visits) is in split {' or '.join(empty)}; "
            f"their split labels: {counts}"
        )
    others = Counter(label for label in labels.tolist() if label not in MEDS_SPLITS)
    if others:
        listed = ", ".join(f"{label or '(no label)'}: {n:,}" for label, n in others.most_common())
        warnings.warn(
            f"--split meds: {sum(others.values()):,} patients of {source} are in no split of "
            f"{', '.join(MEDS_SPLITS)} and take no part ({listed})",
            stacklevel=2,
        )
    return Split(train=parts["train"], valid=parts["valid"], test=parts["test"])


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
