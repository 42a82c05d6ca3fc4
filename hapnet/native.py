"""Fused CPU kernels in C (hapnet/kernels/*.c), built on first use with the system C compiler.

Why: one HAP training step attends over ~10k candidate edges in ~27 groups. In torch operations
that is ~40 small operations per group, and their fixed cost outweighs their arithmetic. The
fused kernels (a step's scores and softmax in one call, its weighted sum in another, forward and
backward) do the same arithmetic faster (README, "Performance"). Likewise for the visit
predictor: the paper loss (one pass per row instead of 13 over [steps, codes]) and the GRU's
gate arithmetic (one call per time step instead of ~30 operations).

The sources are compiled into one library, once per machine, and cached in `cache_dir()/native`,
under a name made from a hash of the sources, the compiler command and this CPU's flags (it is
built with `-march=native` where the compiler knows it). It is loaded with ctypes: no Python or
torch headers, and a compile of under a second. Its OpenMP calls resolve to the OpenMP runtime
torch has already loaded (the same `libgomp.so.1`), so torch's threads and the kernels' are one
pool; a compiler without OpenMP gives one-thread kernels.

Where nothing compiles (no compiler, or every variant fails), or with `HAPNET_NATIVE=0`,
`library()` returns None (after one warning if a build failed) and callers use torch
operations, which give the same results to float rounding.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

_KERNELS = Path(__file__).parent / "kernels"
_SOURCES = [_KERNELS / "propagation.c", _KERNELS / "predictor.c"]
_NAME = "kernels"  # of the cached build
_FLAGS = ["-O3", "-ffast-math", "-shared", "-fPIC"]
# Tried in order: OpenMP and this CPU's instructions; without OpenMP (Apple's clang has none: one
# thread); without -march=native (compilers that do not know it).
_VARIANTS = [["-march=native", "-fopenmp"], ["-march=native"], []]
_UNTRIED = object()
_loaded: ctypes.CDLL | None | object = _UNTRIED  # the library once tried (None: it did not build)
_failure = "not built"  # why it did not build

_P, _I = ctypes.c_void_p, ctypes.c_int64
_SIGNATURES = {
    # query, stride, T, A, u, groups, keys*, key strides*, targets*, sources*, counts*, alpha, tanh, threads
    "attention_forward": [_P, _I, _I, _I, _P, _I, _P, _P, _P, _P, _P, _P, _P, ctypes.c_int],
    # grad_alpha, alpha, tanh, u, T, A, groups, targets*, sources*, counts*, grad_query, stride,
    # grad_keys*, grad key strides*, key rows*, once*, grad_u, dz, threads
    "attention_backward": [
        _P,
        _P,
        _P,
        _P,
        _I,
        _I,
        _I,
        _P,
        _P,
        _P,
        _P,
        _I,
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        ctypes.c_int,
    ],
    # T, D, groups, values*, value strides*, targets*, sources*, offsets*, counts*, alpha, out, threads
    "weighted_sum_forward": [_I, _I, _I, _P, _P, _P, _P, _P, _P, _P, _P, ctypes.c_int],
    # grad_out, D, groups, values*, value strides*, value rows*, targets*, sources*, counts*, alpha,
    # grad_alpha, grad_values*, grad value strides*, once*, threads
    "weighted_sum_backward": [_P, _I, _I, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, ctypes.c_int],
    # logits, R, C, rows, codes, M, clamp, p, loss, log_sum, threads
    "paper_loss_forward": [_P, _I, _I, _P, _P, _I, ctypes.c_float, _P, _P, _P, ctypes.c_int],
    # grad_loss, p, R, C, rows, codes, M, clamp, grad_logits, sum_a, threads
    "paper_loss_backward": [_P, _P, _I, _I, _P, _P, _I, ctypes.c_float, _P, _P, ctypes.c_int],
    # size, H, gx, gh, gh_stride, h_prev, rz, n, hn, h, threads
    "gru_forward_step": [_I, _I, _P, _P, _I, _P, _P, _P, _P, _P, ctypes.c_int],
    # size, H, grad_h, rz, n, hn, h_prev, grad_gx, grad_gh, threads
    "gru_backward_step": [_I, _I, _P, _P, _P, _P, _P, _P, _P, ctypes.c_int],
}


def native_enabled() -> bool:
    return os.environ.get("HAPNET_NATIVE", "1") != "0"


def library() -> ctypes.CDLL | None:
    """The fused kernels, built and loaded once per process; None where unavailable."""
    if not native_enabled():
        return None
    global _loaded
    if _loaded is _UNTRIED:
        _loaded = _load()
    return _loaded  # type: ignore[return-value]


def kernels_for(*tensors: torch.Tensor) -> ctypes.CDLL | None:
    """The library, if it takes these tensors (all float32 on the CPU) and has built; else None."""
    if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
        return None
    return library()


def call(function: ctypes._CFuncPtr, *args: torch.Tensor | ctypes.Array | int | float | None) -> int:
    """Call a kernel with `args` (tensors as pointers to their data: the tuple keeps them alive
    during the call; the rest as they are) and torch's thread count last."""
    pointers = (a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args)
    return function(*pointers, torch.get_num_threads())


def kernels_status() -> str:
    """One line for benchmarks and reports: whether the fused kernels run."""
    if not native_enabled():
        return "off (HAPNET_NATIVE=0)"
    loaded = library()
    if loaded is None:
        return f"off ({_failure}): torch operations"
    return f"on ({', '.join(s.name for s in _SOURCES)}: {loaded._name})"


def _load() -> ctypes.CDLL | None:
    global _failure
    try:
        loaded = ctypes.CDLL(str(_build()))
        for name, argtypes in _SIGNATURES.items():
            function = getattr(loaded, name)
            function.argtypes, function.restype = argtypes, ctypes.c_int
        return loaded
    except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        _failure = reason
        warnings.warn(
            f"hapnet: the fused CPU kernels did not build ({reason}); using torch operations "
            "(same results, slower). Set HAPNET_NATIVE=0 to skip this attempt.",
            stacklevel=3,
        )
        return None


def _build() -> Path:
    """Compile the sources into the cache unless an identical build is there; returns its path."""
    from hapnet.ontology_io import cache_dir

    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler: {compiler!r} not found")
    text = b"".join(source.read_bytes() for source in _SOURCES)
    for extra in _VARIANTS:
        command = [compiler, *_FLAGS, *extra]
        key = hashlib.sha256(text + " ".join(command).encode() + _cpu_signature()).hexdigest()[:20]
        path = cache_dir() / "native" / f"{_NAME}-{key}.so"
        if path.exists():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Build under a temporary name and rename: processes building at once never see half a file.
        handle, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
        os.close(handle)
        try:
            result = subprocess.run(
                [*command, *map(str, _SOURCES), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=120
            )
            if result.returncode == 0:
                os.replace(tmp, path)
                return path
            error = result.stderr
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError(error or "compiler failed")


def _cpu_signature() -> bytes:
    """What `-march=native` depends on: the CPU's model and flags (Linux), else the platform."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            lines = [line for line in handle if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines))).encode()
    except OSError:
        return f"{platform.machine()} {platform.processor()}".encode()
