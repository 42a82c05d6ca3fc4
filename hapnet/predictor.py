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
from torch.nn.utils.rnn import PackedSequence

from hapnet import native
from hapnet.gru import packed_gru

if TYPE_CHECKING:
    from hapnet.visits import VisitData

DIAGNOSIS = "diagnosis"
LOSSES = ("paper", "softmax", "bce")


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
        num_steps = len(input_visits)

        # Packed layout, sorted as pack_padded_sequence sorts. A patient without steps gets
        # one row (an empty bag): its state is computed and never selected.
        lengths = np.maximum(steps, 1)
        sorted_indices = torch.sort(torch.from_numpy(lengths), descending=True).indices.numpy()
        position = np.empty(num_patients, dtype=np.int64)
        position[sorted_indices] = np.arange(num_patients)
        batch_sizes = (lengths[sorted_indices][None, :] > np.arange(lengths.max())[:, None]).sum(1)
        first_row = np.cumsum(batch_sizes) - batch_sizes  # packed row of time t, position 0
        row_time = np.repeat(np.arange(len(batch_sizes)), batch_sizes)
        row_patient = sorted_indices[np.arange(len(row_time)) - first_row[row_time]]
        row_real = row_time < steps[row_patient]
        row_visits = starts[row_patient] + row_time
        bag_sizes = np.where(row_real, self.visit_lengths[row_visits], 0)
        offsets = np.cumsum(bag_sizes) - bag_sizes
        real_visits = row_visits[row_real]
        input_idx = _gather_ranges(self.visit_offsets[real_visits], self.visit_lengths[real_visits])
        step_time = np.nonzero(valid)[1]
        step_patient = np.repeat(np.arange(num_patients), steps)
        step_rows = first_row[step_time] + position[step_patient]

        target_lengths = self.visit_lengths[target_visits]
        target_idx = _gather_ranges(self.visit_offsets[target_visits], target_lengths)
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
            target_rows=torch.from_numpy(np.repeat(np.arange(num_steps), target_lengths)),
            target_codes=torch.from_numpy(self.classes[target_idx]),
            num_patients=num_patients,
            num_steps=num_steps,
        )


class Dropout(nn.Dropout):
    """nn.Dropout drawing its mask from uniforms: torch's CPU dropout draws Bernoulli numbers one
    by one (~0.9 ms for a [165, 400] batch of states against ~0.3 ms). Same distribution: each
    entry kept with probability 1 - p and scaled by 1 / (1 - p)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not 0.0 < self.p < 1.0 or x.device.type != "cpu":
            return super().forward(x)
        keep = torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))
        return x * keep


class NextVisitModel(nn.Module):
    """Code embedder (HAP, GRAM, ...) + visit GRU + one linear head per task."""

    def __init__(self, embedder: nn.Module, num_codes: int, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.embedder = embedder
        self.num_codes = num_codes
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.dropout = Dropout(dropout)
        self.heads = nn.ModuleDict({DIAGNOSIS: nn.Linear(hidden, num_codes)})

    def code_embeddings(self) -> torch.Tensor:
        """Final embeddings g of the observable codes, [num_codes, dim]."""
        return self.embedder()

    def batch_embeddings(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(g, codes): embeddings, and the batch's input codes as rows of g.

        Only the codes of the input visits reach the loss. Where the embedder can embed just
        those for much less (HAP, GRAM), it does: the loss and every gradient are the same as
        with all codes embedded. On MIMIC-III-sized data, 100 patients have ~1/6 of the codes."""
        if getattr(self.embedder, "subset_is_cheaper", False):
            return self.embedder.embed(batch.input_classes), batch.input_local
        return self.code_embeddings(), batch.input_codes

    def forward(self, batch: Batch, code_embeddings: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Logits per head for the real steps of the batch: {"diagnosis": [S, num_codes]}.
        `code_embeddings`: g of every code, when the caller has it (evaluation computes it once)."""
        if code_embeddings is None:
            return self.read_visits(batch, *self.batch_embeddings(batch))
        return self.read_visits(batch, code_embeddings, batch.input_codes)

    def read_visits(self, batch: Batch, g: torch.Tensor, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per head from embeddings g and the input codes as rows of g."""
        # Packed, the GRU skips the padding steps (about 5/6 of a batch of MIMIC-like patients),
        # and the batch is built packed: no padded visit vectors, no unpacking.
        visits = torch.tanh(F.embedding_bag(codes, g, batch.input_offsets, mode="sum"))
        if visits.device.type == "cpu":  # batched weight gradients (see hapnet.gru)
            rows = packed_gru(visits, batch.batch_sizes, self.gru)
        else:
            packed = PackedSequence(visits, batch.batch_sizes, batch.sorted_indices, batch.unsorted_indices)
            rows = self.gru(packed)[0].data
        states = self.dropout(rows.index_select(0, batch.step_rows))
        return {name: head(states) for name, head in self.heads.items()}


PAPER_CLAMP = 1 - 1e-7  # p is clamped below 1 so that log(1 - p) stays finite


class _PaperLoss(torch.autograd.Function):
    """Per step -sum_c [y_c log p_c + (1 - y_c) log(1 - p_c)], p = softmax(logits), with the
    targets y given as (row, code) pairs: no dense y, and the gradient in closed form,
    dL/dz_j = a_j - p_j sum_c a_c with a_c = p_c / (1 - p_c) off target (0 where p is clamped,
    as autograd through the clamp gives) and a_c = -1 on target. Dense log p is never formed
    (only its values at the targets), 1 - p is kept for the backward, and the clamp only runs
    when a row saturates: 13 passes over the [steps, codes] matrix where autograd through the
    formula makes ~30. For float32 on the CPU the fused C kernels (hapnet/kernels/predictor.c)
    do the same in one pass per row forward and two backward; these torch operations are their
    reference and fallback."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, rows: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        library = native.kernels_for(logits)
        ctx.library = library
        if library is not None:
            logits = logits.contiguous()
            rows, codes = rows.to(torch.int64).contiguous(), codes.to(torch.int64).contiguous()
            _check_pairs(rows, codes, logits.shape)  # the kernel trusts them
            p = torch.empty_like(logits)
            per_step, log_sum = logits.new_empty(len(logits)), logits.new_empty(len(logits))
            args = (logits, *logits.shape, rows, codes, len(rows), PAPER_CLAMP, p, per_step, log_sum)
            native.call(library.paper_loss_forward, *args)
            ctx.save_for_backward(p, rows, codes)
            return per_step
        shifted = logits - logits.amax(1, keepdim=True)  # each row's largest entry is 0
        log_p_target = shifted[rows, codes]  # minus log of the row sum, below
        p = shifted.exp_()
        row_sum = p.sum(1, keepdim=True)
        p.div_(row_sum)
        log_p_target -= row_sum.log().squeeze(1).index_select(0, rows)
        # Only a row's largest p (1 / row_sum) can pass the clamp (> 0.5), so this test is free.
        saturated = bool((row_sum < 1 / PAPER_CLAMP).any())
        not_p = torch.rsub(p.clamp(max=PAPER_CLAMP) if saturated else p, 1)
        log_not_p = not_p.log()
        per_step = log_not_p.sum(1).neg_()
        per_step.index_add_(0, rows, log_not_p[rows, codes] - log_p_target)
        ctx.save_for_backward(p, not_p, rows, codes)
        ctx.saturated = saturated
        return per_step

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        if ctx.library is not None:
            p, rows, codes = ctx.saved_tensors
            grad = grad.contiguous()
            grad_logits, sum_a = torch.empty_like(p), p.new_empty(len(p))
            args = (grad, p, *p.shape, rows, codes, len(rows), PAPER_CLAMP, grad_logits, sum_a)
            native.call(ctx.library.paper_loss_backward, *args)
            return grad_logits, None, None
        p, not_p, rows, codes = ctx.saved_tensors
        a = p / not_p
        if ctx.saturated:
            a.masked_fill_(p > PAPER_CLAMP, 0.0)
        a[rows, codes] = -1.0
        scale = grad.unsqueeze(1)
        sum_a = a.sum(1, keepdim=True).mul_(scale)
        return a.mul_(scale).addcmul_(p, sum_a, value=-1), None, None


def _check_pairs(rows: torch.Tensor, codes: torch.Tensor, shape: torch.Size) -> None:
    if len(rows) != len(codes):
        raise ValueError("one code per target row is needed")
    for index, size in ((rows, shape[0]), (codes, shape[1])):
        if len(index) and not 0 <= int(index.min()) <= int(index.max()) < size:
            raise IndexError("target (row, code) pairs outside the logits")


def next_visit_loss(logits: torch.Tensor, batch: Batch, kind: str) -> torch.Tensor:
    """Per patient: loss summed over its predicted steps / its number of steps; batch mean.

    kind "paper": -sum_c [y log p + (1-y) log(1-p)] with p = softmax (algorithms.md);
    "softmax": -sum_c y log p / |y| (multi-label softmax cross-entropy);
    "bce": sigmoid binary cross-entropy summed over codes.
    """
    if kind == "paper":
        per_step = _PaperLoss.apply(logits, batch.target_rows, batch.target_codes)
    elif kind == "softmax":
        y = batch.targets(logits.shape[1])
        per_step = -(y * torch.log_softmax(logits, dim=1)).sum(1) / y.sum(1).clamp(min=1)
    elif kind == "bce":
        y = batch.targets(logits.shape[1])
        per_step = F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(1)
    else:
        raise ValueError(f"unknown loss {kind!r}; choose from {', '.join(LOSSES)}")
    per_patient = torch.zeros(batch.num_patients, device=logits.device, dtype=per_step.dtype)
    per_patient.index_add_(0, batch.step_patient, per_step)
    steps = torch.bincount(batch.step_patient, minlength=batch.num_patients).clamp(min=1)
    return (per_patient / steps).mean()
