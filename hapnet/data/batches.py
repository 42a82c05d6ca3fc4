"""Batches of patients for the visit-level GRU, laid out packed (no padded visit is ever built).

Step t of a patient predicts visit t+1 from visits 1..t.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from hapnet.data.tasks import CategoryTask
from hapnet.data.times import SECONDS_PER_DAY
from hapnet.data.visits import VisitData
from hapnet.errors import HapnetError
from hapnet.utils.arrays import concat_ranges, exclusive_cumsum, range_owners, range_positions


@dataclass
class Batch:
    """A batch of patients; step t of a patient predicts visit t+1 from visits 1..t.

    The GRU's input is laid out as `pack_padded_sequence` lays it out (time-major, patients
    sorted by number of steps, longest first), so no padded visit is ever built: `input_*` are the
    bags of those packed rows, `step_rows` picks each real step's row back in (patient, step)
    order, the order of `step_patient` and `target_rows`.
    """

    input_codes: torch.Tensor  # [N] class indices of the input visits' codes, packed-row order
    input_classes: np.ndarray  # [U] the distinct classes among them, sorted (stays on the host)
    input_local: torch.Tensor  # [N] position in input_classes of every input code
    input_offsets: torch.Tensor  # [R] start of every packed row's bag (a patient without steps: empty)
    batch_sizes: torch.Tensor  # [T] packed rows per time step (stays on the CPU, as torch wants)
    sorted_indices: torch.Tensor  # [B] patient of each packed position, longest first
    unsorted_indices: torch.Tensor  # [B] packed position of each patient
    step_rows: torch.Tensor  # [S] packed row of every real step, (patient, step) order
    step_mask: torch.Tensor  # [B, T] bool, True for real steps
    step_patient: torch.Tensor  # [S] batch position of every real step
    target_rows: torch.Tensor  # [M] real-step index of every target code
    target_codes: torch.Tensor  # [M] class index of every target code
    num_patients: int
    num_steps: int  # S
    # Auxiliary tasks (hapnet.data.tasks): name -> ([M'] real-step index, [M'] category index).
    aux_targets: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    # [R] log(1 + days since the patient's previous visit) of every packed row (0 for a first
    # visit, a missing time and padding); None unless the model reads visit gaps.
    input_gaps: torch.Tensor | None = None

    def to(self, device: torch.device) -> Batch:
        def move(key: str, value: object) -> object:
            if torch.is_tensor(value) and key != "batch_sizes":
                return value.to(device, non_blocking=True)
            if isinstance(value, dict):
                return {
                    name: tuple(t.to(device, non_blocking=True) for t in pair) for name, pair in value.items()
                }
            return value

        return Batch(**{k: move(k, v) for k, v in vars(self).items()})

    def task_targets(self, task: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(step index, class index) of every target of a task; None: the diagnosis codes."""
        return (self.target_rows, self.target_codes) if task is None else self.aux_targets[task]

    def targets(self, num_classes: int, task: str | None = None) -> torch.Tensor:
        """Multi-hot targets [S, num_classes] of the real steps (of a task; None: diagnosis)."""
        rows, classes = self.task_targets(task)
        dense = torch.zeros(self.num_steps, num_classes, device=classes.device)
        dense[rows, classes] = 1.0
        return dense


class BatchBuilder:
    """Turns patient indices of a `VisitData` into `Batch`es over the class vocabulary, with the
    targets of auxiliary `tasks` and, when `gaps` is set, the visit gaps as an input."""

    def __init__(
        self,
        data: VisitData,
        code_to_class: np.ndarray,
        tasks: Sequence[CategoryTask] = (),
        gaps: bool = False,
    ):
        self.patient_offsets = data.patient_offsets
        self.visit_offsets = data.visit_offsets
        self.visit_lengths = np.diff(data.visit_offsets)
        self.classes = code_to_class[data.codes]  # class index of every stored code
        self.tasks = list(tasks)
        self.visit_gaps = visit_gap_features(data) if gaps else None

    def build(self, patients: np.ndarray) -> Batch:
        starts = self.patient_offsets[patients]
        steps = self.patient_offsets[patients + 1] - starts - 1
        num_patients, horizon = len(patients), int(steps.max())
        t = np.arange(horizon)
        valid = t[None, :] < steps[:, None]
        input_visits = (starts[:, None] + t[None, :])[valid]  # row-major = (patient, step) order
        target_visits = input_visits + 1
        num_steps = len(input_visits)

        # Packed layout, sorted as pack_padded_sequence sorts. A patient without steps gets
        # one row (an empty bag): its state is computed and never selected.
        lengths = np.maximum(steps, 1)
        sorted_indices = torch.sort(torch.from_numpy(lengths), descending=True).indices.numpy()
        position = np.empty(num_patients, dtype=np.int64)
        position[sorted_indices] = np.arange(num_patients)
        batch_sizes = (lengths[sorted_indices][None, :] > np.arange(lengths.max())[:, None]).sum(1)
        first_row = exclusive_cumsum(batch_sizes)  # packed row of time t, position 0
        row_time = range_owners(batch_sizes)
        row_patient = sorted_indices[range_positions(batch_sizes)]
        row_real = row_time < steps[row_patient]
        row_visits = starts[row_patient] + row_time
        bag_sizes = np.where(row_real, self.visit_lengths[row_visits], 0)
        offsets = exclusive_cumsum(bag_sizes)
        real_visits = row_visits[row_real]
        input_idx = concat_ranges(self.visit_offsets[real_visits], self.visit_lengths[real_visits])
        step_time = np.nonzero(valid)[1]
        step_patient = range_owners(steps)
        step_rows = first_row[step_time] + position[step_patient]

        target_lengths = self.visit_lengths[target_visits]
        target_idx = concat_ranges(self.visit_offsets[target_visits], target_lengths)
        input_codes = self.classes[input_idx]
        input_classes, input_local = np.unique(input_codes, return_inverse=True)
        target_rows = range_owners(target_lengths)
        target_codes = self.classes[target_idx]
        aux_targets = {}
        for task in self.tasks:
            rows, categories = task.expand(target_rows, target_codes)
            aux_targets[task.name] = (torch.from_numpy(rows), torch.from_numpy(categories))
        gaps = None
        if self.visit_gaps is not None:
            gaps = torch.from_numpy(np.where(row_real, self.visit_gaps[row_visits], 0.0).astype(np.float32))
        return Batch(
            input_codes=torch.from_numpy(input_codes),
            input_classes=input_classes,
            input_local=torch.from_numpy(input_local.reshape(-1).astype(np.int64)),
            input_offsets=torch.from_numpy(offsets),
            batch_sizes=torch.from_numpy(batch_sizes.astype(np.int64)),
            sorted_indices=torch.from_numpy(sorted_indices.astype(np.int64)),
            unsorted_indices=torch.from_numpy(position),
            step_rows=torch.from_numpy(step_rows),
            step_mask=torch.from_numpy(valid),
            step_patient=torch.from_numpy(step_patient),
            target_rows=torch.from_numpy(target_rows),
            target_codes=torch.from_numpy(target_codes),
            num_patients=num_patients,
            num_steps=num_steps,
            aux_targets=aux_targets,
            input_gaps=gaps,
        )


def visit_gap_features(data: VisitData) -> np.ndarray:
    """log(1 + days since the patient's previous visit) of every visit: 0 for a first visit and
    where a time is missing. The log keeps a gap of years within a few units of a gap of days."""
    if data.visit_times is None:
        raise HapnetError(
            f"{data.report.source}: the data have no visit times, so visit gaps cannot be an input"
        )
    days = np.diff(data.visit_times, prepend=np.nan) / SECONDS_PER_DAY
    days[data.patient_offsets[:-1]] = 0.0  # a patient's first visit
    days = np.where(np.isfinite(days), np.maximum(days, 0.0), 0.0)
    return np.log1p(days)
