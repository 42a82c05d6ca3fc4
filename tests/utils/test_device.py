"""Device names: checked once, with a one-line error naming what is accepted."""

from __future__ import annotations

import pytest
import torch

from hapnet.errors import HapnetError
from hapnet.utils.device import check_device_name, resolve_device


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
def test_accepted_names(name: str) -> None:
    assert check_device_name(name) == name


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "cpu ", "mps", ""])
def test_refused_names(name: str) -> None:
    with pytest.raises(HapnetError, match="expected auto, cpu, cuda or cuda:N"):
        check_device_name(name)


def test_resolve() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(HapnetError, match="no CUDA GPU is available here"):
            resolve_device("cuda:0")
    else:
        with pytest.raises(HapnetError, match="CUDA GPU"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
