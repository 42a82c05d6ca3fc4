"""Shared test set-up: a fresh ontology cache per test session, so tests never touch ~/.cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session", autouse=True)
def hapnet_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`HAPNET_CACHE_DIR` for the whole session: built-ins are built once, then read from it."""
    path = tmp_path_factory.mktemp("hapnet-cache")
    old = os.environ.get("HAPNET_CACHE_DIR")
    os.environ["HAPNET_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("HAPNET_CACHE_DIR", None)
    else:
        os.environ["HAPNET_CACHE_DIR"] = old
