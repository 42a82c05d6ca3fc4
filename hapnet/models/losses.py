"""Losses of next-visit prediction (docs/algorithms.md, "the task"): the paper's, multi-label
softmax cross-entropy and sigmoid binary cross-entropy, averaged per patient then over the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hapnet.data.batches import Batch
from hapnet.models.predictor import DIAGNOSIS

LOSSES = ("paper", "softmax", "bce")  # also the choices of `TrainConfig.loss` (tests hold them equal)


PAPER_CLAMP = 1 - 1e-7  # p is clamped below 1 so that log(1 - p) stays finite


class _PaperLoss(torch.autograd.Function):
    """Per step -sum_c [y_c log p_c + (1 - y_c) log(1 - p_c)], p = softmax(logits), with the
    targets y given as (row, code) pairs: no dense y, and the gradient in closed form,
    dL/dz_j = a_j - p_j sum_c a_c with a_c = p_c / (1 - p_c) off target (0 where p is clamped,
    as autograd through the clamp gives) and a_c = -1 on target. Dense log p is never formed
    (only its values at the targets), 1 - p is kept for the backward, and the clamp only runs
    when a row saturates: 13 passes over the [steps, codes] matrix where autograd through the
    formula makes ~30. The same torch operations on every device."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, rows: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
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
        p, not_p, rows, codes = ctx.saved_tensors
        a = p / not_p
        if ctx.saturated:
            a.masked_fill_(p > PAPER_CLAMP, 0.0)
        a[rows, codes] = -1.0
        scale = grad.unsqueeze(1)
        sum_a = a.sum(1, keepdim=True).mul_(scale)
        return a.mul_(scale).addcmul_(p, sum_a, value=-1), None, None


def next_visit_loss(logits: torch.Tensor, batch: Batch, kind: str, task: str | None = None) -> torch.Tensor:
    """Per patient: loss summed over its predicted steps / its number of steps; batch mean.

    kind "paper": -sum_c [y log p + (1-y) log(1-p)] with p = softmax (docs/algorithms.md);
    "softmax": -sum_c y log p / |y| (multi-label softmax cross-entropy);
    "bce": sigmoid binary cross-entropy summed over codes.
    `task`: an auxiliary task's targets (`Batch.aux_targets`); None: the diagnosis codes.
    """
    if kind == "paper":
        per_step = _PaperLoss.apply(logits, *batch.task_targets(task))
    elif kind == "softmax":
        y = batch.targets(logits.shape[1], task)
        per_step = -(y * torch.log_softmax(logits, dim=1)).sum(1) / y.sum(1).clamp(min=1)
    elif kind == "bce":
        y = batch.targets(logits.shape[1], task)
        per_step = F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(1)
    else:
        raise ValueError(f"unknown loss {kind!r}; choose from {', '.join(LOSSES)}")
    per_patient = torch.zeros(batch.num_patients, device=logits.device, dtype=per_step.dtype)
    per_patient.index_add_(0, batch.step_patient, per_step)
    steps = torch.bincount(batch.step_patient, minlength=batch.num_patients).clamp(min=1)
    return (per_patient / steps).mean()


def multi_task_loss(
    logits: dict[str, torch.Tensor], batch: Batch, kind: str, log_vars: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(objective, diagnosis loss) over every head of `logits`, the diagnosis first.

    Without `log_vars`: the sum of the task losses (equal weights). With them (one learned
    log-variance s_t per task; Kendall, Gal & Cipolla 2018): sum_t exp(-s_t) L_t + s_t, so that a
    task's weight exp(-s_t) falls as its loss stays high, and s_t cannot grow for free.
    """
    losses = torch.stack(
        [
            next_visit_loss(out, batch, kind, None if name == DIAGNOSIS else name)
            for name, out in logits.items()
        ]
    )
    objective = losses.sum() if log_vars is None else (torch.exp(-log_vars) * losses + log_vars).sum()
    return objective, losses[0]
