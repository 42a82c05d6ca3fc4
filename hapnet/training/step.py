"""One training step (forward, loss, backward), run eagerly or through `torch.compile`.

`--compile` is an option, never a requirement: where compiling fails (no C++ compiler for
inductor's CPU code, an operation dynamo cannot trace, an old GPU), the step warns once and runs
eagerly from then on. The eager step is the same torch code on every device.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from hapnet.data.batches import Batch
from hapnet.models.losses import next_visit_loss
from hapnet.models.predictor import DIAGNOSIS, NextVisitModel


def batch_loss(model: NextVisitModel, batch: Batch, loss: str) -> torch.Tensor:
    """The training loss of one batch (the mean over its patients)."""
    return next_visit_loss(model(batch)[DIAGNOSIS], batch, loss)


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


class TrainingStep:
    """`step(batch)` computes the loss and its gradients (the caller zeroes them first and steps
    the optimiser after): compiled when asked and possible, else eagerly."""

    def __init__(self, model: NextVisitModel, loss: str, compile: bool = False):
        self.model, self.loss = model, loss
        self._compiled: Callable[[Batch], torch.Tensor] | None = None
        if compile:
            # dynamic: batches differ in patients, steps and codes; one graph serves them all.
            self._compiled = torch.compile(self._loss, dynamic=True)

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def _loss(self, batch: Batch) -> torch.Tensor:
        return batch_loss(self.model, batch, self.loss)

    def __call__(self, batch: Batch) -> torch.Tensor:
        if self._compiled is not None:
            try:
                loss = self._compiled(batch)
                if torch.isfinite(loss):
                    loss.backward()
                return loss
            except Exception as error:  # any compile failure: warn once, then train eagerly
                self._compiled = None
                self.model.zero_grad(set_to_none=True)  # a failed backward may have left some
                warnings.warn(f"torch.compile failed ({first_line(error)}); training eagerly", stacklevel=2)
        loss = self._loss(batch)
        if torch.isfinite(loss):
            loss.backward()
        return loss
