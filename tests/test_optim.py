"""hapnet.optim.Adadelta: the sliced CPU update equals torch.optim.Adadelta bit for bit."""

from __future__ import annotations

import pytest
import torch

from hapnet import optim
from hapnet.allocator import keep_freed_memory


def _params(seed: int) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    # One tensor spans several slices and ends mid-slice; a scalar and a gradient-less one too.
    shapes = [(3 * optim.CHUNK // 100 + 7, 100), (5,), ()]
    params = [torch.nn.Parameter(torch.randn(s, generator=generator)) for s in shapes]
    params.append(torch.nn.Parameter(torch.ones(3)))
    return params


@pytest.mark.parametrize("weight_decay, maximize", [(0.0, False), (0.1, False), (0.0, True)])
def test_sliced_adadelta_equals_torch(weight_decay: float, maximize: bool) -> None:
    ours, theirs = _params(0), _params(0)
    settings = dict(lr=1.0, rho=0.95, eps=1e-6, weight_decay=weight_decay, maximize=maximize)
    ours_opt = optim.Adadelta(ours, **settings)
    theirs_opt = torch.optim.Adadelta(theirs, **settings, foreach=False)
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):
        for a, b in zip(ours[:-1], theirs[:-1], strict=True):
            a.grad = torch.randn(a.shape, generator=generator)
            b.grad = a.grad.clone()
        ours_opt.step()
        theirs_opt.step()
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)
    assert ours[0].abs().sum() != _params(0)[0].abs().sum()  # it did move
    # Same state layout: a checkpoint of one loads into the other and continues identically.
    torch.optim.Adadelta(_params(0), **settings).load_state_dict(ours_opt.state_dict())
    assert torch.equal(ours_opt.state[ours[0]]["acc_delta"], theirs_opt.state[theirs[0]]["acc_delta"])


def test_keep_freed_memory_is_idempotent() -> None:
    first = keep_freed_memory()
    assert keep_freed_memory() == first
