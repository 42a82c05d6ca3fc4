"""The visit-level GRU that predicts the codes of the next visit (algorithms.md, "the task").

Visit vector v_t = tanh(sum of g_c over the visit's codes), built from code ids with
`embedding_bag` (no dense multi-hot matmul). A GRU reads v_1..v_T; prediction heads read its
(dropped-out) states. Heads live in a ModuleDict so more tasks can be trained jointly later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

if TYPE_CHECKING:
    from hapnet.visits import VisitData

DIAGNOSIS = "diagnosis"
LOSSES = ("paper", "softmax", "bce")


@dataclass
class Batch:
    """A batch of patients, padded to T steps; step t predicts visit t+1 from visits 1..t."""

    input_codes: torch.Tensor  # [N] class indices of the input visits' codes, (patient, step) order
    input_offsets: torch.Tensor  # [B*T] start of every (patient, step) bag; padding bags are empty
    step_mask: torch.Tensor  # [B, T] bool, True for real steps
    step_patient: torch.Tensor  # [S] batch position of every real step
    target_rows: torch.Tensor  # [M] real-step index of every target code
    target_codes: torch.Tensor  # [M] class index of every target code
    num_patients: int
    num_steps: int  # S

    def to(self, device: torch.device) -> Batch:
        moved = {k: v.to(device, non_blocking=True) for k, v in vars(self).items() if torch.is_tensor(v)}
        return Batch(**moved, num_patients=self.num_patients, num_steps=self.num_steps)

    def targets(self, num_codes: int) -> torch.Tensor:
        """Multi-hot targets [S, num_codes] of the real steps."""
        dense = torch.zeros(self.num_steps, num_codes, device=self.target_codes.device)
        dense[self.target_rows, self.target_codes] = 1.0
        return dense


def _gather_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate arange(starts[i], starts[i] + lengths[i]) for all i, without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return shift + np.arange(total, dtype=np.int64)


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

        bag_sizes = np.zeros((num_patients, horizon), dtype=np.int64)
        bag_sizes[valid] = self.visit_lengths[input_visits]
        bag_sizes = bag_sizes.ravel()
        offsets = np.cumsum(bag_sizes) - bag_sizes
        input_idx = _gather_ranges(self.visit_offsets[input_visits], self.visit_lengths[input_visits])

        target_lengths = self.visit_lengths[target_visits]
        target_idx = _gather_ranges(self.visit_offsets[target_visits], target_lengths)
        num_steps = len(input_visits)
        return Batch(
            input_codes=torch.from_numpy(self.classes[input_idx]),
            input_offsets=torch.from_numpy(offsets),
            step_mask=torch.from_numpy(valid),
            step_patient=torch.from_numpy(np.repeat(np.arange(num_patients), steps)),
            target_rows=torch.from_numpy(np.repeat(np.arange(num_steps), target_lengths)),
            target_codes=torch.from_numpy(self.classes[target_idx]),
            num_patients=num_patients,
            num_steps=num_steps,
        )


class NextVisitModel(nn.Module):
    """Code embedder (HAP, GRAM, ...) + visit GRU + one linear head per task."""

    def __init__(self, embedder: nn.Module, num_codes: int, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.embedder = embedder
        self.num_codes = num_codes
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({DIAGNOSIS: nn.Linear(hidden, num_codes)})

    def code_embeddings(self) -> torch.Tensor:
        """Final embeddings g of the observable codes, [num_codes, dim]."""
        return self.embedder()

    def forward(self, batch: Batch, code_embeddings: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Logits per head for the real steps of the batch: {"diagnosis": [S, num_codes]}."""
        g = self.code_embeddings() if code_embeddings is None else code_embeddings
        bags = F.embedding_bag(batch.input_codes, g, batch.input_offsets, mode="sum")
        visits = torch.tanh(bags).view(batch.num_patients, -1, g.shape[1])
        # Packed, the GRU skips the padding steps (about 5/6 of a batch of MIMIC-like patients).
        # A patient without steps gets length 1: its state is computed and never selected.
        lengths = batch.step_mask.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(visits, lengths, batch_first=True, enforce_sorted=False)
        states, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=visits.shape[1])
        states = self.dropout(states[batch.step_mask])
        return {name: head(states) for name, head in self.heads.items()}


def next_visit_loss(logits: torch.Tensor, batch: Batch, kind: str) -> torch.Tensor:
    """Per patient: loss summed over its predicted steps / its number of steps; batch mean.

    kind "paper": -sum_c [y log p + (1-y) log(1-p)] with p = softmax (algorithms.md);
    "softmax": -sum_c y log p / |y| (multi-label softmax cross-entropy);
    "bce": sigmoid binary cross-entropy summed over codes.
    """
    y = batch.targets(logits.shape[1])
    if kind == "paper":
        log_p = torch.log_softmax(logits, dim=1)
        log_not_p = torch.log1p(-log_p.exp().clamp(max=1 - 1e-7))
        per_step = -(y * log_p + (1 - y) * log_not_p).sum(1)
    elif kind == "softmax":
        per_step = -(y * torch.log_softmax(logits, dim=1)).sum(1) / y.sum(1).clamp(min=1)
    elif kind == "bce":
        per_step = F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(1)
    else:
        raise ValueError(f"unknown loss {kind!r}; choose from {', '.join(LOSSES)}")
    per_patient = torch.zeros(batch.num_patients, device=logits.device, dtype=per_step.dtype)
    per_patient.index_add_(0, batch.step_patient, per_step)
    steps = torch.bincount(batch.step_patient, minlength=batch.num_patients).clamp(min=1)
    return (per_patient / steps).mean()
