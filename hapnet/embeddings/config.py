"""Settings of `embed` from the structure alone: torch-free, so that the CLI reads its defaults
at start-up."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from hapnet.errors import HapnetError
from hapnet.utils.settings_files import check_known, read_settings


@dataclass
class EmbedConfig:
    """Settings of `embed` from the structure alone. The defaults are what measured best (see the
    benchmark benchmarks/bench_embed.py)."""

    dim: int = 128
    attention_dim: int = 64
    levels: int | None = None  # HAP propagates over the lowest K levels only
    model: str = "hap"  # any embedder of the registry; "rnn" = plain embeddings, no propagation
    epochs: int = 10  # one epoch = one full-batch step over every edge of the ontology
    lr: float = 0.01  # Adam
    temperature: float = 0.05  # cosine / temperature are the logits of the ranking softmax
    negatives: int = 256  # uniform negatives per step, shared by all nodes
    hard_negatives: int = 8  # per node: ends of 2-step walks (siblings, grandparents, grandchildren)
    family_weight: float = 0.3  # weight of ranking those 2-step nodes above unrelated ones
    seed: int = 0
    device: str = "auto"

    @classmethod
    def from_file(cls, path: str | Path) -> EmbedConfig:
        """The settings of a TOML, YAML or JSON file (`hapnet embed --config`); unknown names refused."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**check_known(path, read_settings(path), known))

    def validate(self) -> EmbedConfig:
        # The registry imports torch: only a validated config needs it (the CLI reads the defaults).
        from hapnet.models.registry import get_model

        get_model(self.model)
        checks = [
            (self.dim >= 1 and self.attention_dim >= 1, "--dim and the attention size must be at least 1"),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}"),
            (self.levels is None or self.levels >= 1, "--levels must be at least 1"),
            (self.lr > 0 and self.temperature > 0, "lr and temperature must be positive"),
            (self.negatives >= 1 and self.hard_negatives >= 0, "negatives must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise HapnetError(message)
        return self
