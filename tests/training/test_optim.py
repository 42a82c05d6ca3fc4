"""`make_optimizer`: torch's own optimisers with the run's settings; Adadelta is the paper's (Theano's
rho and eps), checked against its update written out by hand."""

from __future__ import annotations

import pytest
import torch

from hapnet.training.config import make_config
from hapnet.training.optim import make_optimizer


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))


def _steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        model(x).square().sum().backward()
        optimizer.step()


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adadelta_is_the_papers_update(weight_decay: float) -> None:
    """Zeiler's Adadelta with Theano's defaults, one step at a time, computed by hand."""
    config = make_config(preset="paper", weight_decay=weight_decay)
    model, reference = _model(0), _model(0)
    optimizer = make_optimizer(config, model)
    assert isinstance(optimizer, torch.optim.Adadelta) and optimizer.defaults["foreach"]
    assert optimizer.defaults["rho"] == 0.95 and optimizer.defaults["eps"] == 1e-6
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
    square_avg = [torch.zeros_like(p) for p in reference.parameters()]
    acc_delta = [torch.zeros_like(p) for p in reference.parameters()]
    for _ in range(3):
        _steps(model, optimizer, steps=1)
        reference.zero_grad()
        reference(x).square().sum().backward()
        with torch.no_grad():
            for p, s, a in zip(reference.parameters(), square_avg, acc_delta, strict=True):
                grad = p.grad + weight_decay * p
                s.mul_(0.95).add_(0.05 * grad * grad)
                delta = torch.sqrt(a + 1e-6) / torch.sqrt(s + 1e-6) * grad
                a.mul_(0.95).add_(0.05 * delta * delta)
                p.sub_(config.lr * delta)
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("name", "kind"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_adam_is_fused_and_matches_the_unfused_update(name: str, kind: type) -> None:
    config = make_config(optimizer=name, lr=1e-2, weight_decay=0.01)
    ours, theirs = _model(0), _model(0)
    optimizer = make_optimizer(config, ours)
    assert type(optimizer) is kind and optimizer.defaults["fused"]
    assert optimizer.defaults["lr"] == 1e-2 and optimizer.defaults["weight_decay"] == 0.01
    _steps(ours, optimizer)
    _steps(theirs, kind(theirs.parameters(), lr=1e-2, weight_decay=0.01, foreach=False))
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_adam_on_parameters_without_a_fused_kernel_is_torchs_default() -> None:
    model = _model(0).to(torch.float64)
    model[0].weight.data = model[0].weight.data.to(torch.complex128)  # no fused kernel for complex
    optimizer = make_optimizer(make_config(optimizer="adam"), model)
    assert not optimizer.defaults["fused"]
