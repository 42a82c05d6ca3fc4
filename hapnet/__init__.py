"""hapnet: Hierarchical Attention Propagation embeddings of medical ontologies, and
next-visit diagnosis prediction with a visit-level GRU.

Everything the `hapnet` command does is a library call here. Heavy modules (torch) load on
first use, so ontology-only work stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from hapnet.errors import HapnetError, InputError
from hapnet.ontology import Ontology
from hapnet.ontology_io import BUILTINS, load_ontology

__version__ = "0.1.0"

# name -> module that defines it; imported on first access (PEP 562).
_LAZY = {
    "Hierarchy": "hapnet.hierarchy",
    "train": "hapnet.trainer",
    "TrainConfig": "hapnet.config",
    "make_config": "hapnet.config",
    "train_seeds": "hapnet.seeds",
    "load": "hapnet.runs",
    "evaluate": "hapnet.evaluation",
    "load_visits": "hapnet.visits",
    "VisitData": "hapnet.visits",
    "MODELS": "hapnet.models",
    "write_synth": "hapnet.synth",
    "predict_next_visit": "hapnet.predict",
    "explain_code": "hapnet.explain",
    "plot_runs": "hapnet.plots",
    "embed": "hapnet.embedding",
    "neighbors": "hapnet.embedding",
    "EmbedConfig": "hapnet.embedding",
    "read_embeddings": "hapnet.embedding_io",
    "write_embeddings": "hapnet.embedding_io",
    "bench": "hapnet.benchmark",
    "torch_threads": "hapnet.threads",
    "reproduce": "hapnet.reproduction",
    "PAPER_CONFIGS": "hapnet.reproduction",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hapnet' has no attribute {name!r}")


__all__ = ["BUILTINS", "HapnetError", "InputError", "Ontology", "load_ontology", *_LAZY]
