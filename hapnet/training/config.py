"""Every setting of a training run, in one dataclass, with the paper's preset."""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hapnet.data.synth import DEFAULT_PATIENTS
from hapnet.data.table import DEFAULT_UNKNOWN, UNKNOWN_POLICIES
from hapnet.errors import HapnetError
from hapnet.ontology.builtins import DEFAULT_ONTOLOGY
from hapnet.utils.settings_files import check_known, read_settings

OPTIMIZERS = ("adam", "adamw", "adadelta")
PRETRAINS = ("none", "glove")
LOSSES = ("paper", "softmax", "bce")  # hapnet.models.losses.LOSSES (torch-free here, for the CLI)
# "observed": the ontology's codes seen in the data and their ancestors (the papers' code builds
# only these: build_trees.py); "full": every node of the ontology, trained or not.
ONTOLOGY_SCOPES = ("observed", "full")
OUTPUTS = ("free", "tied")  # hapnet.models.predictor.OUTPUTS (torch-free here, for the CLI)
TASK_WEIGHTS = ("learned", "equal")  # hapnet.models.predictor.TASK_WEIGHTS
# "random": the protocol's 70/10/20 split by the seed; "meds": a MEDS dataset's own
# metadata/subject_splits.parquet (train / tuning / held_out -> train / valid / test).
SPLITS = ("random", "meds")


@dataclass
class TrainConfig:
    """Settings of `hapnet train`. The defaults are what measured best here (docs/training.md)."""

    model: str = "hap"
    ontology: str = DEFAULT_ONTOLOGY
    data: str | None = None  # None: built-in synthetic data
    levels: int | None = None
    ontology_scope: str = "observed"
    pretrain: str = "glove"  # GloVe initialisation ("none": random), rescaled like the random init
    # The paper's training (Adadelta, its loss) stopped early, with GloVe and the tied output: the
    # best of 5 seeds on the synthetic data calibrated to MIMIC-III (docs/training.md, docs/results/).
    epochs: int = 50  # at most: early stopping (patience) ends a run after ~12
    patience: int = 5  # stop after this many epochs without a lower validation loss; 0 = never
    batch_size: int = 100
    dim: int = 400  # d 128 measured far worse on MIMIC-sized data (RNN accuracy@20 0.304 vs 0.371)
    hidden: int = 400
    attention_dim: int = 100
    dropout: float = 0.4
    optimizer: str = "adadelta"
    lr: float = 1.0
    weight_decay: float = 0.0
    loss: str = "paper"
    output: str = "tied"  # code c's output row is W g_c + u_c (ontology-aware); "free": the paper's
    aux_levels: list[int] = field(default_factory=list)  # also predict the next visit's categories
    task_weights: str = "learned"  # of the auxiliary tasks: "learned" (uncertainty) or "equal"
    time_input: bool = False  # the GRU also reads log(1 + days since the previous visit)
    seed: int = 0
    k: int = 20
    device: str = "auto"
    compile: bool = False  # torch.compile the model's steps (falls back to eager where it fails)
    unknown: str = DEFAULT_UNKNOWN
    columns: dict[str, str] | None = None
    code_pattern: str | None = None  # MEDS: regex, group 1 = the diagnosis code (else the known forms)
    split: str = "random"
    synth_patients: int = DEFAULT_PATIENTS  # size of the built-in synthetic data when data is None
    glove_epochs: int = 50
    preset: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TrainConfig:
        # The registry and the device check import torch: only a validated config needs them, so
        # the CLI can read this module's defaults at start-up without loading torch.
        from hapnet.models.registry import get_model
        from hapnet.utils.device import check_device_name

        get_model(self.model)
        check_device_name(self.device)
        checks = [
            (
                self.pretrain in PRETRAINS,
                f"--pretrain must be {' or '.join(PRETRAINS)}, got {self.pretrain!r}",
            ),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)}"),
            (self.unknown in UNKNOWN_POLICIES, f"--unknown must be one of {', '.join(UNKNOWN_POLICIES)}"),
            (
                self.ontology_scope in ONTOLOGY_SCOPES,
                f"--ontology-scope must be one of {', '.join(ONTOLOGY_SCOPES)}",
            ),
            (self.output in OUTPUTS, f"--output must be one of {', '.join(OUTPUTS)}"),
            (self.split in SPLITS, f"--split must be one of {', '.join(SPLITS)}"),
            (self.task_weights in TASK_WEIGHTS, f"--task-weights must be one of {', '.join(TASK_WEIGHTS)}"),
            (
                all(isinstance(v, int) and v >= 1 for v in self.aux_levels)
                and len(set(self.aux_levels)) == len(self.aux_levels),
                f"--aux-levels must be distinct levels of 1 or more, got {self.aux_levels}",
            ),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.patience >= 0, "--patience must be 0 (never stop early) or more"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (min(self.dim, self.hidden, self.attention_dim) >= 1, "sizes must be at least 1"),
            (0 <= self.dropout < 1, "--dropout must be in [0, 1)"),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr must be a positive number, got {self.lr}"),
            (isinstance(self.seed, int) and self.seed >= 0, f"--seed must be 0 or more, got {self.seed}"),
            (self.k >= 1, "--k must be at least 1"),
            (self.levels is None or self.levels >= 1, "--levels must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise HapnetError(message)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_saved(cls, values: dict[str, Any]) -> TrainConfig:
        """A run folder's config.json: runs saved before a setting existed used what it names."""
        return cls.from_dict({**LEGACY_SETTINGS, **values})


# What runs saved before these settings existed did (hapnet 0.1 trained on the full ontology).
# Runs saved before a setting existed did what these say: the full ontology (hapnet 0.1), every
# epoch (before early stopping), the paper's free output layer (before --output).
LEGACY_SETTINGS: dict[str, Any] = {"ontology_scope": "full", "patience": 0, "output": "free"}


# "paper": the HAP paper's exact settings (docs/algorithms.md, "Paper training"); "default": hapnet's
# own defaults (the TrainConfig fields), named so that `hapnet reproduce --preset default` can ask
# for them.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "paper": {
        "dim": 400,
        "hidden": 400,
        "attention_dim": 100,
        "dropout": 0.4,
        "optimizer": "adadelta",
        "lr": 1.0,
        "batch_size": 100,
        "epochs": 50,
        "loss": "paper",
        "weight_decay": 0.0,
        "ontology_scope": "observed",
        "patience": 0,  # the paper trains its 50 epochs; `--patience N` stops it early
        "output": "free",
        "pretrain": "none",  # the paper's HAP and GRAM use GloVe: `--pretrain glove` (reproduce does)
        "aux_levels": [],
        "time_input": False,
    },
}


# Where a run computes, not what it computes: a sweep may mix them.
RUNTIME_SETTINGS = ("seed", "device", "compile")


def differing_settings(before: dict[str, Any], now: TrainConfig) -> list[str]:
    """Settings (beyond seed and device) in which a saved config differs from `now`;
    fields missing from an older saved config count as what those runs did (LEGACY_SETTINGS)
    or as the defaults."""
    saved, current = TrainConfig.from_saved(before).to_dict(), now.to_dict()
    return sorted(k for k in current if k not in RUNTIME_SETTINGS and saved.get(k) != current[k])


def parse_levels(text: str | None) -> list[int] | None:
    """`--aux-levels 1,2,3` -> [1, 2, 3]; "none" or "" -> []; None stays None (not given)."""
    if text is None:
        return None
    if text.strip().lower() in ("", "none"):
        return []
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise HapnetError(f"--aux-levels: expected levels such as 1,2,3, got {text!r}") from None


# What a run folder's config.json records beside the settings: read past in a settings file.
RUN_RECORD_KEYS = ("versions", "data_fingerprint", "ontology_fingerprint")


def settings_from_file(path: str | Path) -> dict[str, Any]:
    """The training settings of a TOML, YAML or JSON file (a run's config.json works as it is);
    a name that is not a setting is refused, naming the closest."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    return check_known(path, read_settings(path), known, RUN_RECORD_KEYS)


def make_config(
    preset: str | None = None, config_file: str | Path | None = None, **settings: Any
) -> TrainConfig:
    """A config from a preset, then a settings file (`--config`), overridden by the settings
    that are not None. A setting that is not a `TrainConfig` field is refused (a typo such as
    `epoch=1` would otherwise be ignored)."""
    if config_file is not None:
        from_file = settings_from_file(config_file)
        file_preset = from_file.pop("preset", None)
        preset = preset if preset is not None else file_preset
        settings = {**from_file, **{k: v for k, v in settings.items() if v is not None}}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = [key for key in settings if key not in known]
    if unknown:
        hints = {"seeds": "; for several seeds use hapnet.train_seeds(config, seeds, out)"}
        close = difflib.get_close_matches(unknown[0], known, n=1)
        raise HapnetError(
            f"unknown setting {unknown[0]!r}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + hints.get(unknown[0], "")
        )
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise HapnetError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
        values["preset"] = preset
    values.update({k: v for k, v in settings.items() if v is not None})
    # File paths are stored absolute so that a run folder can be evaluated from anywhere.
    for key in ("data", "ontology"):
        value = values.get(key)
        if value and Path(value).exists():
            values[key] = str(Path(value).resolve())
    return TrainConfig.from_dict(values).validate()
