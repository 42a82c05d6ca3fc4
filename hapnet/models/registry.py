"""The model registry: the CLI and the library both read `MODELS`, so they cannot drift.

`register_model` adds a model (its `--model` name works from then on).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hapnet.errors import HapnetError
from hapnet.models.embedder import CodeEmbedder, EmbedderConfig
from hapnet.models.gram import GRAMEmbedder
from hapnet.models.hap import HAPEmbedder
from hapnet.models.plain import PlainEmbedder, RollupEmbedder
from hapnet.ontology.hierarchy import Hierarchy


@dataclass(frozen=True)
class ModelSpec:
    name: str  # what --model takes
    label: str  # the papers' name, for tables and plots
    embedder: type[CodeEmbedder]
    description: str
    uses_hierarchy: bool  # needs the ontology's edges
    glove_scope: str  # GloVe over "ancestors" (codes + all ancestors), "parents" or "codes" only


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model to the registry (the CLI's --model accepts it from then on)."""
    MODELS[spec.name] = spec
    return spec


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise HapnetError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}") from None


def build_embedder(
    name: str, hierarchy: Hierarchy, vocab: np.ndarray, config: EmbedderConfig
) -> CodeEmbedder:
    return get_model(name).embedder(hierarchy, vocab, config)


for _spec in [
    ModelSpec(
        "hap",
        "HAP",
        HAPEmbedder,
        "Hierarchical Attention Propagation (bottom-up + top-down)",
        True,
        "ancestors",
    ),
    ModelSpec(
        "gram", "GRAM", GRAMEmbedder, "GRAM: attention over each code and its ancestors", True, "ancestors"
    ),
    ModelSpec(
        "rnn", "RNN", PlainEmbedder, "no ontology: one embedding per code (RNN+ with GloVe)", False, "codes"
    ),
    ModelSpec(
        "rollup",
        "Rollup",
        RollupEmbedder,
        "each code as its immediate parent (Rollup+ with GloVe)",
        True,
        "parents",
    ),
]:
    register_model(_spec)
