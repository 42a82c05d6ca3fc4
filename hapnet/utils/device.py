"""The torch device a command computes on: `auto` (CUDA where there is a GPU), `cpu`, `cuda` or
`cuda:N`, checked once with a one-line error."""

from __future__ import annotations

import re

import torch

from hapnet.errors import HapnetError

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
_DEVICE = re.compile(r"(auto|cpu|cuda(:\d+)?)")


def check_device_name(name: str) -> str:
    """`name` if it names a device hapnet can use, else a `HapnetError` naming what it takes."""
    if not isinstance(name, str) or not _DEVICE.fullmatch(name):
        raise HapnetError(f"--device {name!r}: expected {DEVICE_NAMES}")
    return name


def resolve_device(name: str) -> torch.device:
    """The torch.device of `name`; refuses CUDA where there is none (or not that many GPUs)."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise HapnetError(f"--device {name}: no CUDA GPU is available here (use --device cpu or auto)")
        index = torch.device(name).index
        if index is not None and index >= torch.cuda.device_count():
            raise HapnetError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device(name)
