"""torch's CPU threads for one piece of work (`--threads N|auto` of `hapnet train`, `reproduce`,
`bench`), and `CoreShare`: how many cores other processes leave this one.

Processes that share a machine's cores should take one thread each. With more threads than free
cores, a parallel region waits for threads that are not running: two `hapnet reproduce`
processes with torch's default of one thread per core ran HAP's epochs 2.5-4.5x slower on a
2-core machine than with one thread each, and a default run beside one busy process slowed
several-fold (docs/performance.md, "Sharing the machine"). `--threads auto` (the CLI's default)
starts with the cores that are free and re-checks before every epoch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from hapnet.errors import HapnetError

AUTO = "auto"
PROC_STAT = Path("/proc/stat")
# Round free cores up from here: 1.7 free cores take 2 threads, 1.5 take 1 (a thread that must
# share its core stalls every parallel region it is part of).
ROUND_UP_FROM = 0.7


def parse_threads(value: int | str | None) -> int | str | None:
    """None (leave torch's setting), "auto", or a count of at least 1."""
    if value is None or value == AUTO:
        return value
    try:
        threads = int(value)
    except (TypeError, ValueError):
        raise HapnetError(f"--threads must be a number or {AUTO}, got {value!r}") from None
    if threads < 1:
        raise HapnetError("--threads must be at least 1")
    return threads


def _machine_busy() -> tuple[float, int] | None:
    """(seconds of CPU time every process of the machine has used, number of CPUs) from
    /proc/stat; None where there is no /proc/stat (macOS, Windows) or it cannot be read."""
    try:
        lines = PROC_STAT.read_text().splitlines()
        fields = [int(v) for v in lines[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), max(cpus, 1)


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class CoreShare:
    """How many cores other processes keep busy, measured between two calls of `threads()`:
    the machine's busy CPU time minus this process's own, over the wall time."""

    def __init__(self, ceiling: int | None = None) -> None:
        self.ceiling = ceiling or min(usable_cores(), torch.get_num_threads())
        self._last = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float, int] | None:
        machine = _machine_busy()
        if machine is None:
            return None
        return time.perf_counter(), machine[0], _own_cpu_seconds(), machine[1]

    def others_busy(self) -> float | None:
        """Cores other processes used since the last call (None: unknown on this system)."""
        now = self._sample()
        last, self._last = self._last, now
        if now is None or last is None or now[0] - last[0] < 0.05:
            return None
        return max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / (now[0] - last[0]))

    def threads(self) -> int:
        """Threads to use now: the free cores, at least 1, at most the ceiling."""
        others = self.others_busy()
        if others is None:
            return self.ceiling
        assert self._last is not None  # others_busy just sampled it
        free = min(usable_cores(), self._last[3] - others)
        return max(1, min(self.ceiling, int(free + 1 - ROUND_UP_FROM)))


def auto_threads(window: float = 0.5) -> tuple[int, CoreShare]:
    """The threads the free cores allow, measured over `window` seconds, and the `CoreShare`
    that keeps measuring from there."""
    share = CoreShare()
    time.sleep(window)
    return share.threads(), share


@contextmanager
def torch_threads(threads: int | str | None) -> Iterator[CoreShare | None]:
    """Run the block with `threads` intra-op threads, then restore torch's setting (None: leave
    it as it is). "auto": the free cores now; the `CoreShare` it yields can re-check them
    (`adapt_threads`) between epochs."""
    threads = parse_threads(threads)
    if threads is None:
        yield None
        return
    previous = torch.get_num_threads()
    share = None
    if threads == AUTO:
        threads, share = auto_threads()
    torch.set_num_threads(threads)
    try:
        yield share
    finally:
        torch.set_num_threads(previous)


def adapt_threads(share: CoreShare | None) -> tuple[int, int] | None:
    """Set torch's threads to what `share` measures now; (before, after) when that changed."""
    if share is None:
        return None
    before, after = torch.get_num_threads(), share.threads()
    if after == before:
        return None
    torch.set_num_threads(after)
    return before, after
