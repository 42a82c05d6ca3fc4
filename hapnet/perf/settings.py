"""`hapnet bench`'s defaults, torch-free: the CLI shows them in its help without loading torch."""

from __future__ import annotations

from typing import Any

from hapnet.data.synth import DEFAULT_PATIENTS
from hapnet.ontology.builtins import DEFAULT_ONTOLOGY

BENCH_DEFAULTS: dict[str, Any] = {
    "ontology": DEFAULT_ONTOLOGY,
    "model": "both",
    "device": "auto",
    "repeats": 5,
    "warmup": 1,
    "patients": DEFAULT_PATIENTS,
    "naive": True,
    "seed": 0,
    "matmul_size": 2048,
    "clock": "wall",
}
