"""hapnet: Hierarchical Attention Propagation embeddings of medical ontologies, and
next-visit diagnosis prediction with a visit-level GRU.

Everything the `hapnet` command does is a library call here. The package follows the pipeline:
`hapnet.ontology` -> `hapnet.data` -> `hapnet.models` -> `hapnet.training` -> `hapnet.inspect`,
`hapnet.embeddings`, `hapnet.perf` (docs/DESIGN.md). Modules that need torch load on first use
of a name below, so ontology-only work stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from hapnet.errors import HapnetError, InputError
from hapnet.ontology.builtins import BUILTINS, load_ontology
from hapnet.ontology.graph import Ontology

__version__ = "0.1.0"

# name -> module that defines it; imported on first access (PEP 562).
_LAZY = {
    "Hierarchy": "hapnet.ontology.hierarchy",
    "load_visits": "hapnet.data.loaders",
    "visits_from_frame": "hapnet.data.loaders",
    "visits_from_lists": "hapnet.data.loaders",
    "VisitData": "hapnet.data.visits",
    "write_synth": "hapnet.data.synth",
    "data_stats": "hapnet.data.stats",
    "DataStats": "hapnet.data.stats",
    "fit_synth_settings": "hapnet.data.synth_fit",
    "write_synth_like": "hapnet.data.synth_fit",
    "MODELS": "hapnet.models.registry",
    "register_model": "hapnet.models.registry",
    "train": "hapnet.training.trainer",
    "resume": "hapnet.training.trainer",
    "TrainConfig": "hapnet.training.config",
    "make_config": "hapnet.training.config",
    "train_seeds": "hapnet.training.seeds",
    "load": "hapnet.training.runs",
    "Run": "hapnet.training.runs",
    "evaluate": "hapnet.training.evaluation",
    "reproduce": "hapnet.training.reproduction",
    "PAPER_CONFIGS": "hapnet.training.reproduction",
    "predict_next_visit": "hapnet.inspect.predict",
    "explain_code": "hapnet.inspect.explain",
    "plot_runs": "hapnet.inspect.plots",
    "embed": "hapnet.embeddings.structure",
    "EmbedConfig": "hapnet.embeddings.config",
    "neighbors": "hapnet.embeddings.neighbors",
    "read_embeddings": "hapnet.embeddings.formats",
    "write_embeddings": "hapnet.embeddings.formats",
    "bench": "hapnet.perf.bench",
    "torch_threads": "hapnet.utils.threads",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hapnet' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = ["BUILTINS", "HapnetError", "InputError", "Ontology", "load_ontology", *_LAZY]
