"""Where hapnet keeps what it can rebuild: compiled built-in ontologies, synthetic data, GloVe."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$HAPNET_CACHE_DIR`, else `$XDG_CACHE_HOME/hapnet`, else `~/.cache/hapnet`."""
    if os.environ.get("HAPNET_CACHE_DIR"):
        return Path(os.environ["HAPNET_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hapnet"
