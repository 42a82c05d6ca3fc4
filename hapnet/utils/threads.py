"""torch's CPU threads for one piece of work (`--threads N` of `hapnet train`, `reproduce`, `bench`).

Processes that share a machine's cores should take one thread each. With more threads than free
cores, a parallel region waits for threads that are not running: two `hapnet reproduce`
processes with torch's default of one thread per core ran HAP's epochs 2.5-4.5x slower on a
2-core machine than with one thread each.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from hapnet.errors import HapnetError


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with `threads` intra-op threads, then restore torch's setting (None: leave
    it as it is)."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise HapnetError("--threads must be at least 1")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
