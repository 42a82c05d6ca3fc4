"""`--threads N|auto`: parsing, and `CoreShare`'s reading of how many cores other processes use."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hapnet.errors import HapnetError
from hapnet.utils import threads as threads_module
from hapnet.utils.threads import CoreShare, adapt_threads, parse_threads, torch_threads


@pytest.mark.parametrize("value, expected", [(None, None), ("auto", "auto"), ("3", 3), (2, 2)])
def test_parse_threads(value, expected):  # noqa: ANN001
    assert parse_threads(value) == expected


@pytest.mark.parametrize("value", ["0", "-1", "many", 0])
def test_bad_threads_are_refused(value):  # noqa: ANN001
    with pytest.raises(HapnetError, match="--threads"):
        parse_threads(value)


def test_machine_busy_reads_proc_stat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal: busy = 300 + 0 + 100 + 0 + 0 + 0 = 400 ticks
    stat.write_text("cpu  300 0 100 900 50 0 0 0 0 0\ncpu0 1 0 0 0 0 0 0 0\ncpu1 1 0 0 0 0 0 0 0\nintr 5\n")
    monkeypatch.setattr(threads_module, "PROC_STAT", stat)
    monkeypatch.setattr(threads_module.os, "sysconf", lambda name: 100)
    assert threads_module._machine_busy() == (4.0, 2)
    monkeypatch.setattr(threads_module, "PROC_STAT", tmp_path / "missing")
    assert threads_module._machine_busy() is None


def share_measuring(others: float, monkeypatch: pytest.MonkeyPatch, cpus: int = 2) -> CoreShare:
    """A CoreShare whose next threads() sees `others` cores busy (besides 1 of its own) for 1 s."""
    clock = {"wall": 0.0, "busy": 0.0, "own": 0.0}
    monkeypatch.setattr(threads_module, "_machine_busy", lambda: (clock["busy"], cpus))
    monkeypatch.setattr(threads_module, "_own_cpu_seconds", lambda: clock["own"])
    monkeypatch.setattr(threads_module.time, "perf_counter", lambda: clock["wall"])
    monkeypatch.setattr(threads_module, "usable_cores", lambda: cpus)
    share = CoreShare(ceiling=cpus)
    clock.update(wall=1.0, busy=1.0 + others, own=1.0)
    return share


@pytest.mark.parametrize("others, expected", [(0.0, 2), (0.2, 2), (0.5, 1), (1.0, 1), (2.0, 1)])
def test_threads_take_the_cores_others_leave(others: float, expected: int, monkeypatch: pytest.MonkeyPatch):
    assert share_measuring(others, monkeypatch).threads() == expected


def test_unknown_load_keeps_the_ceiling(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(threads_module, "_machine_busy", lambda: None)
    assert CoreShare(ceiling=3).threads() == 3


def test_adapt_threads_changes_torch_threads_and_says_so(monkeypatch: pytest.MonkeyPatch):
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert adapt_threads(share_measuring(1.0, monkeypatch)) == (2, 1)
        assert torch.get_num_threads() == 1
        assert adapt_threads(share_measuring(1.0, monkeypatch)) is None  # no change: nothing to say
        assert adapt_threads(None) is None
    finally:
        torch.set_num_threads(previous)


def test_torch_threads_restores_the_setting():
    previous = torch.get_num_threads()
    with torch_threads(1) as share:
        assert torch.get_num_threads() == 1 and share is None
    assert torch.get_num_threads() == previous
    with torch_threads("auto") as share:
        assert 1 <= torch.get_num_threads() <= max(previous, 1) and share is not None
    assert torch.get_num_threads() == previous
