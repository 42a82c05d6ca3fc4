"""Timing that holds up on a shared machine: functions interleaved repeat by repeat (a loaded
machine slows them alike), device work synchronised before the clock is read."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

# wall: elapsed time; cpu: this process's CPU time (all threads), steadier on a shared machine
# (time spent waiting for a core is not counted; with several threads it sums them).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    functions: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int,
    device: torch.device,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds of each function per repeat; each repeat runs every function once, in turn."""
    for _ in range(warmup):
        for function in functions.values():
            function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            _sync(device)
            started = clock()
            function()
            _sync(device)
            times[name].append(clock() - started)
    return times
