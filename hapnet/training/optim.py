"""The optimisers a run can use, all from `torch.optim`, the same on every device.

- "adadelta": the paper's (Theano's defaults: rho 0.95, eps 1e-6), with torch's `foreach`
  implementation (one multi-tensor kernel per operation instead of one per parameter).
- "adam" / "adamw": with torch's fused kernel (one pass per parameter instead of ~12) where the
  parameters' device has one (CPU and CUDA); results agree with the unfused update to rounding.
"""

from __future__ import annotations

import torch

from hapnet.training.config import TrainConfig

ADADELTA = {"rho": 0.95, "eps": 1e-6}  # Theano's defaults, the paper's optimiser


def make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimiser `config.optimizer` over the model's parameters, with `config.lr` and
    `config.weight_decay`."""
    params = list(model.parameters())
    if config.optimizer == "adadelta":
        return torch.optim.Adadelta(
            params, lr=config.lr, weight_decay=config.weight_decay, foreach=True, **ADADELTA
        )
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    kind = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return kind(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)
