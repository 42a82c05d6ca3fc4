"""Keep freed memory in the process on glibc (Linux), for the CPU training loop.

Every training step allocates and frees the same large tensors (gradients of the embedding table,
attention temporaries). By default glibc hands blocks above a threshold back to the kernel and
takes them again next step, paying a page fault per 4 KiB: measured ~10% of a HAP step at the
paper's settings. Raising the thresholds makes the allocator reuse them. Elsewhere it is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit systems
_TRIM_THRESHOLD = 1 << 30

_done = False


def keep_freed_memory() -> bool:
    """Ask glibc to reuse freed blocks (up to 32 MiB each) instead of unmapping them; once per
    process. Returns whether the setting is in effect."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _done = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
    return _done
