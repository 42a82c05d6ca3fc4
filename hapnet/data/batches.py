"""Batches of patients for the visit-level GRU, laid out packed (no padded visit is ever built).

Step t of a patient predicts visit t+1 from visits 1..t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hapnet.data.visits import VisitData
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

    def to(self, device: torch.device) -> Batch:
        moved = {
            k: v.to(device, non_blocking=True) if torch.is_tensor(v) and k != "batch_sizes" else v
            for k, v in vars(self).items()
        }
        return Batch(**moved)

    def targets(self, num_codes: int) -> torch.Tensor:
        """Multi-hot targets [S, num_codes] of the real steps."""
        dense = torch.zeros(self.num_steps, num_codes, device=self.target_codes.device)
        dense[self.target_rows, self.target_codes] = 1.0
        return dense


class BatchBuilder:
    """Turns patient indices of a `VisitData` into `Batch`es over the class vocabulary."""

    def __init__(self, data: VisitData, code_to_class: np.ndarray):
        self.patient_offsets = data.patient_offsets
        self.visit_offsets = data.visit_offsets
        self.visit_lengths = np.diff(data.visit_offsets)
        self.classes = code_to_class[data.codes]  # class index of every stored code

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
            target_rows=torch.from_numpy(range_owners(target_lengths)),
            target_codes=torch.from_numpy(self.classes[target_idx]),
            num_patients=num_patients,
            num_steps=num_steps,
        )
