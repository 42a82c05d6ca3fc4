"""One training step (forward, loss, backward, optimiser update), eager or through `torch.compile`.

`--compile` is an option, never a requirement. The step is compiled in three pieces, each on its
own: the code embedder (the batch's code embeddings), the predictor with the loss, and the
optimiser's update (torch's compiled optimiser: one fused pass where the eager update makes a
dozen). Where a piece fails to compile (no C++ compiler for inductor's CPU code, an operation
inductor cannot generate, an old GPU), it warns once and runs eagerly from then on; the other
pieces stay compiled. The eager step is the same torch code on every device.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from hapnet.data.batches import Batch
from hapnet.errors import error_summary
from hapnet.models.losses import multi_task_loss
from hapnet.models.predictor import NextVisitModel


class CompiledOrEager:
    """`function` through `torch.compile` (dynamic shapes: batches differ in patients, steps and
    codes), falling back to `function` itself, with one warning, the first time compiling fails."""

    def __init__(self, function: Callable[..., Any], name: str, compile: bool):
        self.function, self.name = function, name
        self.compiled: Callable[..., Any] | None = torch.compile(function, dynamic=True) if compile else None

    def give_up(self, error: BaseException) -> None:
        self.compiled = None
        warnings.warn(
            f"torch.compile failed for the {self.name} ({error_summary(error)}); running it eagerly",
            stacklevel=3,
        )

    def __call__(self, *args: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as error:  # any compile failure: this piece runs eagerly from now on
                self.give_up(error)
        return self.function(*args)


class TrainingStep:
    """`step(batch)`: zero the gradients, compute the objective and its gradients, update the
    parameters; returns the diagnosis loss (the objective itself with no auxiliary task). A loss
    that is not finite is returned before any gradient or update (the caller stops). The pieces
    are compiled when asked and possible, else eager."""

    def __init__(
        self, model: NextVisitModel, optimizer: torch.optim.Optimizer, loss: str, compile: bool = False
    ):
        self.model, self.optimizer, self.loss = model, optimizer, loss
        self.embed = CompiledOrEager(model.batch_embeddings, "code embedder", compile)
        self.predict = CompiledOrEager(self._predictor_loss, "predictor and loss", compile)
        self.update = CompiledOrEager(optimizer.step, "optimiser update", compile)

    def _predictor_loss(
        self, batch: Batch, g: torch.Tensor, codes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model.read_visits(batch, g, codes)
        return multi_task_loss(logits, batch, self.loss, self.model.task_log_vars)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective, diagnosis loss) of one batch (means over its patients)."""
        return self.predict(batch, *self.embed(batch))

    def __call__(self, batch: Batch) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        objective, loss = self.forward(batch)
        if not torch.isfinite(objective):
            return objective  # the caller stops; no gradient to compute
        pieces = [piece for piece in (self.embed, self.predict) if piece.compiled is not None]
        try:
            objective.backward()
        except Exception as error:  # a compiled backward that fails: redo the step eagerly
            if not pieces:
                raise
            for piece in pieces:
                piece.give_up(error)
            self.optimizer.zero_grad(set_to_none=True)
            objective, loss = self.forward(batch)
            objective.backward()
        self.update()
        return loss.detach()
