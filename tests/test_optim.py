"""hapnet.optim: the sliced Adadelta update equals torch.optim.Adadelta bit for bit, the compiled
one to float rounding (and falls back when it cannot compile); Adam uses torch's fused kernel."""

from __future__ import annotations

import os
import shutil
import warnings

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
    ours_opt = optim.Adadelta(ours, **settings, compiled=False)
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


def _run_steps(opt_params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):
        for param in opt_params[:-1]:
            param.grad = torch.randn(param.shape, generator=generator)
        optimizer.step()


def _compiler_works() -> bool:
    return shutil.which(os.environ.get("CXX", "g++")) is not None or shutil.which("cc") is not None


@pytest.mark.skipif(not _compiler_works(), reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_adadelta_matches_torch() -> None:
    settings = dict(lr=1.0, rho=0.95, eps=1e-6, weight_decay=0.1)
    ours, theirs = _params(0), _params(0)
    ours_opt = optim.Adadelta(ours, **settings, compiled=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "compiled Adadelta")  # the compiled path must have run
        _run_steps(ours, ours_opt)
    _run_steps(theirs, torch.optim.Adadelta(theirs, **settings, foreach=False))
    assert not ours_opt._compiled_update.failed
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours[0], _params(0)[0])


def test_failed_compile_warns_once_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken_compile(function, **kwargs):  # noqa: ANN001, ANN003, ARG001
        def run(*args):  # noqa: ANN002
            calls.append(1)
            raise RuntimeError("no working C++ compiler\nlong details")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    settings = dict(lr=1.0, rho=0.95, eps=1e-6)
    ours, theirs = _params(0), _params(0)
    ours_opt = optim.Adadelta(ours, **settings, compiled=True)
    with pytest.warns(UserWarning, match=r"unavailable \(no working C\+\+ compiler\); using the sliced"):
        _run_steps(ours, ours_opt)
    _run_steps(theirs, torch.optim.Adadelta(theirs, **settings, foreach=False))
    assert len(calls) == 1  # tried once, then the sliced update for good
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b)


def test_compiles_only_large_models(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda function, **kwargs: compiled.append(1) or function)
    small = _params(0)  # ~400k elements
    optimizer = optim.Adadelta(small, lr=1.0)
    _run_steps(small, optimizer)
    assert compiled == []
    monkeypatch.setattr(optim, "COMPILE_MIN_ELEMENTS", 1000)
    _run_steps(small, optimizer)
    assert compiled == [1]


def test_adam_is_fused_and_matches_torch() -> None:
    for decoupled, kind in [(False, torch.optim.Adam), (True, torch.optim.AdamW)]:
        ours, theirs = _params(0), _params(0)
        ours_opt = optim.make_adam(ours, decoupled=decoupled, lr=1e-2, weight_decay=0.01)
        assert type(ours_opt) is kind and ours_opt.defaults["fused"]
        _run_steps(ours, ours_opt)
        _run_steps(theirs, kind(theirs, lr=1e-2, weight_decay=0.01, foreach=False))
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_keep_freed_memory_is_idempotent() -> None:
    first = keep_freed_memory()
    assert keep_freed_memory() == first
