"""`tune(...)`: an Optuna search over training settings, each trial one `hapnet.train` run.

The search space is `SPACES` (one table per named space; docs/tuning.md describes it). Every
setting the space does not name is fixed by the base `TrainConfig`. A trial trains quietly with no
run folder (`out=None`), reports its validation score after every epoch to Optuna (which may prune
it), and is scored on the validation split of its best epoch; the test split is never read here.

The CLI reads this module's space, objectives and defaults for its help at start-up: optuna and
torch (the trainer) are imported inside the functions that run a study, never at module level.
"""

from __future__ import annotations

import math
import re
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape

from hapnet.errors import HapnetError, InputError, error_summary
from hapnet.training.config import (
    LOSSES,
    OPTIMIZERS,
    OUTPUTS,
    PRETRAINS,
    TrainConfig,
    make_config,
    parse_levels,
)
from hapnet.training.progress import TrainCallbacks, format_score
from hapnet.utils.paths import check_output_location, first_missing
from hapnet.utils.textio import read_json_object

if TYPE_CHECKING:
    import optuna


# ----------------------------------------------------------------------------- the search space
@dataclass(frozen=True)
class Choice:
    """One of `values` (Optuna: categorical). `parse` turns the value Optuna stores (a number or a
    text: Optuna stores no lists) into the setting, e.g. "1,2" -> [1, 2] for aux_levels."""

    values: tuple[Any, ...]
    parse: Callable[[Any], Any] | None = None

    def sample(self, trial: optuna.Trial, setting: str, chosen: Mapping[str, Any]) -> Any:
        value = trial.suggest_categorical(setting, list(self.values))
        return self.parse(value) if self.parse else value

    def describe(self) -> str:
        return " / ".join(map(str, self.values))


@dataclass(frozen=True)
class Range:
    """A number in [low, high], on a log scale if `log` (Optuna: float, or int if `integer`)."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def sample(self, trial: optuna.Trial, setting: str, chosen: Mapping[str, Any]) -> Any:
        if self.integer:
            return trial.suggest_int(setting, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(setting, self.low, self.high, log=self.log)

    def describe(self) -> str:
        return f"{self.low:g} to {self.high:g}" + (" (log)" if self.log else "") + (" (int)" * self.integer)


@dataclass(frozen=True)
class LearningRate:
    """A learning rate in the chosen optimiser's own range, on a log scale.

    Optuna samples `lr_position` in [0, 1], where the rate lies in that range's logarithm (0: the
    low end, 1: the high end): one parameter with one distribution whatever the optimiser, so the
    sampler learns from every trial and the parameter importance can rank it (a parameter whose
    range changes with the optimiser would be left out of both)."""

    ranges: Mapping[str, tuple[float, float]]
    parameter: str = "lr_position"

    def sample(self, trial: optuna.Trial, setting: str, chosen: Mapping[str, Any]) -> float:
        optimizer = chosen["optimizer"]
        if optimizer not in self.ranges:
            raise HapnetError(f"search space: no learning-rate range for optimizer {optimizer!r}")
        low, high = self.ranges[optimizer]
        position = trial.suggest_float(self.parameter, 0.0, 1.0)
        return float(low * (high / low) ** position)

    def describe(self) -> str:
        ranges = "; ".join(f"{name} {low:g} to {high:g}" for name, (low, high) in self.ranges.items())
        return f"{ranges} (log)"


Param = Choice | Range | LearningRate
AUX_LEVELS = Choice(("none", "1", "1,2"), parse=parse_levels)
LEARNING_RATES = {"adadelta": (0.1, 2.0), "adam": (1e-4, 1e-2), "adamw": (1e-4, 1e-2)}


def _space(sizes: tuple[int, ...], attention: tuple[int, ...], batches: tuple[int, ...]) -> dict[str, Param]:
    return {
        "optimizer": Choice(OPTIMIZERS),
        "lr": LearningRate(LEARNING_RATES),  # after the optimiser: its range depends on it
        "dropout": Range(0.0, 0.6),
        "dim": Choice(sizes),
        "hidden": Choice(sizes),
        "attention_dim": Choice(attention),
        "batch_size": Choice(batches),
        "loss": Choice(LOSSES),  # objective valid_accuracy only: losses of different kinds do not compare
        "output": Choice(OUTPUTS),
        "aux_levels": AUX_LEVELS,
        "pretrain": Choice(PRETRAINS),
    }


# The one place the search is defined (docs/tuning.md describes it). Keys are TrainConfig fields;
# settings a space leaves out come from the base config. "tiny": the same parameters with small
# sizes, for tests and for trying `hapnet tune` out in seconds.
SPACES: dict[str, dict[str, Param]] = {
    "default": _space(sizes=(64, 128, 256, 400), attention=(32, 64, 100, 128), batches=(32, 64, 100, 200)),
    "tiny": _space(sizes=(8, 16), attention=(4, 8), batches=(16, 32)),
}
DEFAULT_SPACE = "default"


# ----------------------------------------------------------------------------- objectives, defaults
@dataclass(frozen=True)
class Objective:
    direction: str  # Optuna's "minimize" or "maximize"
    record: str  # the per-epoch history field reported to the pruner
    best: Callable[[dict[str, Any]], float]  # the score of a run's best epoch, from its metrics
    text: str


OBJECTIVES: dict[str, Objective] = {
    "valid_loss": Objective(
        "minimize",
        "valid_loss",
        lambda m: m["valid"]["loss"],
        "validation loss of the best epoch (lower is better)",
    ),
    "valid_accuracy": Objective(
        "maximize",
        "valid_accuracy",
        lambda m: m["valid"]["accuracy"],
        "validation accuracy@k of the best epoch (higher is better)",
    ),
}
DEFAULT_OBJECTIVE = "valid_loss"
DEFAULT_TRIALS = 20
# MedianPruner: no trial is pruned before 5 trials completed, nor before its 3rd epoch (the first
# epochs of different settings rank poorly: GloVe or not, Adadelta's slow start).
PRUNER_STARTUP_TRIALS = 5
PRUNER_WARMUP_EPOCHS = 3
HEARTBEAT_SECONDS = 60  # a trial whose process died is marked failed ~2 heartbeats later
STUDY_FILE, MANIFEST, BEST_CONFIG, IMPORTANCE = "study.db", "tune.json", "best_config.json", "importance.png"
OUTPUT_FILES = (STUDY_FILE, MANIFEST, BEST_CONFIG, IMPORTANCE)
# Settings that may differ between the processes of one study: where they compute, and the paths of
# the data and ontology (compared by fingerprint instead: machines mount them in other places).
MAY_DIFFER = ("device", "compile", "data", "ontology")
STUDY_ATTR = "hapnet"  # the study's user attribute holding its fixed settings


def parse_timeout(value: float | int | str | None) -> float | None:
    """`--timeout`: seconds, or a duration such as 90s, 30m, 2h (None: no limit)."""
    if value is None:
        return None
    units = {"": 1, "s": 1, "m": 60, "h": 3600}
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(value).lower())
    seconds = float(match.group(1)) * units[match.group(2)] if match else float("nan")
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    if not (math.isfinite(seconds) and seconds > 0):
        raise HapnetError(f"--timeout {value!r}: expected seconds or a duration such as 90s, 30m, 2h")
    return seconds


def default_study_name(config: TrainConfig, objective: str) -> str:
    """`hap-valid-loss`, `gram-lv3-valid-accuracy`: the study of a model and an objective."""
    levels = f"-lv{config.levels}" if config.levels else ""
    return f"{config.model}{levels}-{objective.replace('_', '-')}"


def resolve_space(space: str | Mapping[str, Param], objective: str) -> dict[str, Param]:
    """A named space or a mapping of settings to parameters, checked. A named space tunes `loss`
    only for objective valid_accuracy: validation losses of different loss functions do not
    compare (a given mapping with `loss` is refused for valid_loss)."""
    if isinstance(space, str):
        if space not in SPACES:
            raise HapnetError(f"--space {space!r}: choose from {', '.join(SPACES)}")
        chosen = dict(SPACES[space])
        if objective == "valid_loss":
            chosen.pop("loss", None)
        return chosen
    chosen = dict(space)
    known = set(TrainConfig().to_dict())
    for setting, param in chosen.items():
        if setting not in known:
            raise HapnetError(f"search space: {setting!r} is not a training setting")
        if not isinstance(param, Choice | Range | LearningRate):
            raise HapnetError(f"search space: {setting}: expected a Choice, Range or LearningRate")
    if objective == "valid_loss" and "loss" in chosen:
        raise HapnetError(
            "search space: validation losses of different --loss settings do not compare; tune `loss` "
            "with objective valid_accuracy"
        )
    return chosen


def describe_space(space: Mapping[str, Param]) -> dict[str, str]:
    return {setting: f"{type(param).__name__}: {param.describe()}" for setting, param in space.items()}


def _fit_space(space: dict[str, Param], depth: int) -> dict[str, Param]:
    """Auxiliary levels the ontology has: categories at levels 1 .. depth - 1 (codes sit below)."""
    param = space.get("aux_levels")
    if not isinstance(param, Choice) or param.parse is not parse_levels:
        return space
    fits = tuple(v for v in param.values if all(level < depth for level in parse_levels(str(v)) or []))
    if not fits:
        raise HapnetError(f"search space: no aux_levels choice fits an ontology of depth {depth}")
    return {**space, "aux_levels": Choice(fits, parse=parse_levels)}


def sample_settings(trial: optuna.Trial, space: Mapping[str, Param], base: TrainConfig) -> dict[str, Any]:
    """The trial's settings: each parameter of the space sampled in order (a later one may depend
    on an earlier one: the learning rate on the optimiser), over the base config's values."""
    chosen = base.to_dict()
    for setting, param in space.items():
        chosen[setting] = param.sample(trial, setting, chosen)
    return {setting: chosen[setting] for setting in space}


# ----------------------------------------------------------------------------- progress
class TuneCallbacks:
    """Hooks of a study (the search itself prints nothing)."""

    def on_trial_start(self, number: int, settings: dict[str, Any]) -> None: ...

    def on_epoch_start(self, number: int, epoch: int) -> None: ...

    def on_trial_end(self, trial: optuna.trial.FrozenTrial, study: optuna.Study) -> None: ...


def settings_text(settings: Mapping[str, Any]) -> str:
    """`optimizer adam, lr 0.00123, dim 16, aux_levels 1,2`: a trial's settings on one line."""
    return ", ".join(f"{name} {_value_text(value)}" for name, value in settings.items())


def _value_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "none"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class TuneProgress(TuneCallbacks):
    """One line per finished trial: its state, score, the best so far and its settings (what
    `hapnet.tune` shows unless `quiet`)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)

    def on_trial_end(self, trial: optuna.trial.FrozenTrial, study: optuna.Study) -> None:
        state = trial.state.name.lower()
        value = "" if trial.value is None else f" {format_score(trial.value)}"
        if trial.state.name == "PRUNED":
            state += f" after epoch {trial.last_step}"
        if "error" in trial.user_attrs:
            state += f" ({escape(trial.user_attrs['error'])})"
        best = _best_trial(study)
        best_text = f"; best: trial {best.number}, {format_score(best.value)}" if best is not None else ""
        settings = trial_settings(trial)
        self.console.print(
            f"trial {trial.number} {state}{value}{best_text}"
            + (f"  [dim]{escape(settings_text(settings))}[/]" if settings else ""),
            highlight=False,
            soft_wrap=True,  # one line per trial, however long
        )


def trial_settings(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The tuned settings a trial trained with (as applied: the learning rate, not its position)."""
    return dict(trial.user_attrs.get("settings", {}))


def _best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    completed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return study.best_trial if completed else None


class _TrialReporter(TrainCallbacks):
    """The trainer's hooks for one trial: the epoch's validation score to Optuna, and
    `optuna.TrialPruned` out of the training loop when Optuna prunes the trial (with `out=None`
    the trainer writes nothing, so a pruned trial leaves nothing behind)."""

    def __init__(self, trial: optuna.Trial, objective: Objective, progress: TuneCallbacks) -> None:
        self.trial, self.objective, self.progress = trial, objective, progress

    def on_epoch_start(self, epoch: int, num_batches: int) -> None:
        self.progress.on_epoch_start(self.trial.number, epoch)

    def on_epoch_end(self, record: dict[str, Any], is_best: bool) -> None:
        import optuna  # imported when a study runs, not at the CLI's start-up

        epoch = record["epoch"]
        self.trial.report(float(record[self.objective.record]), epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")


# ----------------------------------------------------------------------------- the study
@dataclass
class TuneResult:
    """What `tune` returns: the Optuna study, the best trial's config and score, and the trials."""

    study: Any  # optuna.Study
    objective: str
    best_config: TrainConfig | None  # None while no trial completed
    best_value: float | None
    best_trial: int | None
    trials: pd.DataFrame  # number, state, value, the tuned settings, best_epoch, epochs_run, seconds
    out: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)  # what was written: best_config, importance


def make_pruner() -> optuna.pruners.BasePruner:
    """hapnet's pruner: Optuna's MedianPruner (a trial is stopped when its best score so far is
    worse than the median of the completed trials' at the same epoch), with
    `PRUNER_STARTUP_TRIALS` and `PRUNER_WARMUP_EPOCHS`."""
    import optuna  # imported when a study runs, not at the CLI's start-up

    # n_warmup_steps counts epochs: the trial reports epoch e as step e (from 1), and MedianPruner
    # checks a step only from n_warmup_steps on.
    return optuna.pruners.MedianPruner(
        n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_EPOCHS
    )


def tune(
    config: TrainConfig | str | Path | None = None,
    *,
    trials: int | None = None,
    timeout: float | str | None = None,
    objective: str = DEFAULT_OBJECTIVE,
    storage: str | None = None,
    study_name: str | None = None,
    out: str | Path | None = None,
    force: bool = False,
    space: str | Mapping[str, Param] = DEFAULT_SPACE,
    sampler_seed: int | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    importance: bool = False,
    callbacks: TuneCallbacks | None = None,
    quiet: bool = False,
    **settings: Any,
) -> TuneResult:
    """Search training settings with Optuna: `trials` more trials (default `DEFAULT_TRIALS`, or as
    many as `timeout` allows when it is given), each a `hapnet.train` run of the base config with
    the space's settings sampled; the best trial's config is the result.

    `hapnet.tune(model="hap", data="mimic3/", epochs=20, trials=30, out="tune/hap")`, with a
    TrainConfig, or with a settings file (TOML, YAML, JSON) that the keywords override.
    `objective`: "valid_loss" (minimised) or "valid_accuracy" (accuracy@k, maximised), of each
    run's best epoch. `storage`: an Optuna storage URL (sqlite:///tune.db, a PostgreSQL/MySQL URL
    shared by several machines); a study of the same `study_name` there is continued. Default:
    OUT/study.db with `out`, else in memory. `out`: OUT/best_config.json (the best trial's config,
    as a run's config.json) and, with `importance`, OUT/importance.png. `space`: "default",
    "tiny" or a mapping of settings to `Choice`/`Range`/`LearningRate` (see `SPACES`).
    `sampler_seed`: the TPE sampler's (default: the config's seed). `pruner`: any Optuna pruner
    (default `make_pruner()`). One line per finished trial on stderr unless `quiet` or
    `callbacks` are given. Details: docs/tuning.md.
    """
    chosen_objective = _objective(objective)
    timeout = parse_timeout(timeout)
    trials = trial_budget(trials, timeout)
    if importance and out is None:
        raise HapnetError("importance: give out, the folder its plot is written to")
    space = resolve_space(space, objective)
    if isinstance(config, TrainConfig):
        if settings:
            raise HapnetError(
                f"tune: give settings in the TrainConfig or as keywords, not both ({', '.join(settings)})"
            )
        base = config.validate()
    else:  # keywords, over a settings file if one is given (a run's config.json, best_config.json)
        base = make_config(config_file=config, **settings)
    study_name = study_name or default_study_name(base, objective)
    out = _check_out(out, force, study_name, storage) if out is not None else None
    progress = callbacks if callbacks is not None else (TuneCallbacks() if quiet else TuneProgress())

    # The data and the ontology are read once before anything is written: a bad file is refused
    # before a study or a folder exists; their fingerprints identify the data across machines.
    from hapnet.data.fingerprint import data_fingerprint, legacy_data_fingerprint
    from hapnet.training.setup import load_training_data  # torch: only when a study runs

    ontology, data = load_training_data(base)
    space = _fit_space(space, ontology.depth)
    fixed = {
        "objective": objective,
        "settings": _fixed_settings(base, space),
        "space": describe_space(space),
        "data_fingerprint": data_fingerprint(data),
        "ontology_fingerprint": ontology.fingerprint(),
    }
    data_before = legacy_data_fingerprint(data)  # what studies recorded before (same data)
    del data, ontology

    created = first_missing(out) if out is not None else None
    if out is not None:
        _clear_old_outputs(out, force, storage)
        out.mkdir(parents=True, exist_ok=True)
    try:
        with _optuna_quiet():
            study = _open_study(storage, out, study_name, chosen_objective.direction)
            _check_study(study, fixed, storage, data_before)
            seed = base.seed if sampler_seed is None else sampler_seed
            study.sampler = _sampler(seed, len(study.get_trials(deepcopy=False)))
            study.pruner = pruner if pruner is not None else make_pruner()
            if out is not None:
                _write_manifest(out, study_name, storage, objective)
            try:
                _optimize(study, base, space, chosen_objective, trials, timeout, progress)
            except KeyboardInterrupt:  # keep what the finished trials found
                if out is not None and _best_trial(study) is not None:
                    _write_best_config(out, study, _best_trial(study))
                raise
    except BaseException:
        if created is not None and not _worth_keeping(out, study_name, storage):
            shutil.rmtree(created, ignore_errors=True)  # only folders this call made, nothing to resume
        raise
    return _result(study, objective, out, importance, base.seed)


def _objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise HapnetError(f"--objective {name!r}: choose from {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def trial_budget(trials: int | None, timeout: float | None) -> int | None:
    """The trials a call runs: `trials`; if not given, `DEFAULT_TRIALS`, or no count (None: as
    many as start before the timeout) when there is a timeout."""
    if trials is None:
        return None if timeout is not None else DEFAULT_TRIALS
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise HapnetError(f"--trials must be a whole number of 1 or more, got {trials!r}")
    return trials


def _fixed_settings(base: TrainConfig, space: Mapping[str, Param]) -> dict[str, Any]:
    """The base settings every trial of a study shares (what the space does not tune)."""
    return {k: v for k, v in base.to_dict().items() if k not in space and k not in MAY_DIFFER}


def _shown_storage(storage: str | None) -> str | None:
    """A storage URL without its password (it is shown and written to OUT/tune.json)."""
    return None if storage is None else re.sub(r"(//[^/:@]*):[^/@]*@", r"\1:***@", storage)


def _check_out(out: str | Path, force: bool, study_name: str, storage: str | None) -> Path:
    """OUT may exist only as the tune folder of this very study (which is then continued), or with
    `force`."""
    out = check_output_location(out, force=True, kind="folder")
    if not out.exists() or force:
        return out
    manifest = _read_manifest(out)
    if manifest is None:
        raise InputError(out, "already exists and is not a hapnet tune folder (use --force to write into it)")
    same = manifest.get("study_name") == study_name and manifest.get("storage") == _shown_storage(storage)
    if not same:
        where = manifest.get("storage") or f"{out / STUDY_FILE}"
        raise InputError(
            out,
            f"holds study {manifest.get('study_name')!r} in {where}; give the same --study-name and "
            "--storage to continue it, or use another --out (or --force)",
        )
    return out


def _read_manifest(out: Path) -> dict[str, Any] | None:
    path = out / MANIFEST
    if not path.is_file():
        return None
    return read_json_object(path, "a hapnet tune manifest", "; use --force")


def _clear_old_outputs(out: Path, force: bool, storage: str | None) -> None:
    """With `force`, the files an earlier tune left in OUT (its own study.db only when this study
    lives there too; a study in a given storage is never deleted)."""
    if not force:
        return
    for name in OUTPUT_FILES:
        path = out / name
        if path.is_file() and (name != STUDY_FILE or storage is None):
            path.unlink()


def _storage_url(storage: str | None, out: Path | None) -> str | None:
    if storage is not None:
        return storage
    return f"sqlite:///{(out / STUDY_FILE).absolute()}" if out is not None else None


def _open_study(storage: str | None, out: Path | None, name: str, direction: str) -> optuna.Study:
    """The study `name` in the storage, created or continued (load_if_exists)."""
    import optuna

    url = _storage_url(storage, out)
    try:
        backend: Any = None  # in memory
        if url is not None:
            _check_sqlite_folder(url)
            with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna 5 (since 2.9)
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                backend = optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS)
        return optuna.create_study(storage=backend, study_name=name, direction=direction, load_if_exists=True)
    except Exception as exc:
        if isinstance(exc, ImportError | ValueError | OSError) or type(exc).__module__.startswith(
            "sqlalchemy"
        ):
            raise HapnetError(f"--storage {_shown_storage(url)}: {error_summary(exc)}") from None
        raise


def _check_sqlite_folder(url: str) -> None:
    """An SQLite file's folder must exist (SQLite says only "unable to open database file")."""
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = Path(url[len("sqlite:///") :])
        if not path.parent.is_dir():
            raise InputError(path.parent, "no such folder (for the --storage SQLite file)")


def _check_study(
    study: optuna.Study, fixed: dict[str, Any], storage: str | None, data_before: str | None = None
) -> None:
    """A new study records its fixed settings; a continued one must have been started with the
    same objective, fixed settings, space, data and ontology (its trials would not compare).
    `data_before`: the data's fingerprint as older versions recorded it."""
    from optuna.trial import TrialState

    saved = study.user_attrs.get(STUDY_ATTR)
    if saved is None:  # new, or holding only trials queued for it (`study.enqueue_trial`)
        if any(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False)):
            raise HapnetError(
                f"study {study.study_name!r} holds trials not run by hapnet tune; use another --study-name"
            )
        study.set_user_attr(STUDY_ATTR, fixed)
        return
    where = f"study {study.study_name!r}" + (f" in {_shown_storage(storage)}" if storage else "")
    if saved.get("objective") != fixed["objective"]:
        raise HapnetError(
            f"{where} optimises {saved.get('objective')}; give that --objective or another --study-name"
        )
    before = TrainConfig.from_dict(saved.get("settings", {})).to_dict()
    now = TrainConfig.from_dict(fixed["settings"]).to_dict()
    changed = [
        f"{key} {_value_text(before[key])} there, {_value_text(now[key])} here"
        for key in fixed["settings"]
        if before[key] != now[key]
    ]
    if saved.get("space") != fixed["space"]:
        changed.insert(0, "the search space")
    for key, what in (("data_fingerprint", "the data"), ("ontology_fingerprint", "the ontology")):
        if saved.get(key) != fixed[key] and not (key == "data_fingerprint" and saved.get(key) == data_before):
            changed.insert(0, what)
    if changed:
        raise HapnetError(
            f"{where} was started with other settings (differing: {'; '.join(changed)}); "
            "use the same settings or another --study-name"
        )


def _sampler(seed: int, trials_so_far: int) -> optuna.samplers.BaseSampler:
    """TPE seeded by (seed, trials already in the study): a continued study does not draw its
    first trials' settings again."""
    import optuna

    state = int(np.random.SeedSequence([seed, trials_so_far]).generate_state(1)[0])
    return optuna.samplers.TPESampler(seed=state)


def _write_manifest(out: Path, study_name: str, storage: str | None, objective: str) -> None:
    from hapnet.training.runs import write_json  # torch: only when a study runs

    write_json(
        out / MANIFEST, {"study_name": study_name, "storage": _shown_storage(storage), "objective": objective}
    )


def _worth_keeping(out: Path, study_name: str, storage: str | None) -> bool:
    """A tune folder this call created holds something after a failure: the best config (written
    on Ctrl-C), or a study with a finished or pruned trial in OUT/study.db (a study in a given
    storage stays there whatever happens to OUT)."""
    if (out / BEST_CONFIG).exists():
        return True
    if storage is not None or not (out / STUDY_FILE).exists():
        return False
    import optuna

    try:
        with _optuna_quiet():
            study = optuna.load_study(study_name=study_name, storage=_storage_url(None, out))
    except Exception:  # no study was created in it: nothing to keep
        return False
    return any(t.state.name in ("COMPLETE", "PRUNED") for t in study.get_trials(deepcopy=False))


@contextmanager
def _optuna_quiet() -> Iterator[None]:
    """Optuna's own logging off for a study (hapnet reports each trial itself, and Optuna would
    print a failed trial's traceback)."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.CRITICAL)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _optimize(
    study: optuna.Study,
    base: TrainConfig,
    space: Mapping[str, Param],
    objective: Objective,
    trials: int | None,
    timeout: float | None,
    progress: TuneCallbacks,
) -> None:
    from hapnet.training.trainer import TrainingDiverged, train  # torch: only when a study runs

    def run_trial(trial: optuna.Trial) -> float:
        settings = sample_settings(trial, space, base)
        config = TrainConfig.from_dict({**base.to_dict(), **settings}).validate()
        trial.set_user_attr("settings", settings)
        trial.set_user_attr("config", config.to_dict())
        progress.on_trial_start(trial.number, settings)
        try:
            result = train(config, out=None, callbacks=_TrialReporter(trial, objective, progress))
        except TrainingDiverged as exc:
            trial.set_user_attr("error", str(exc))
            raise
        trial.set_user_attr("best_epoch", result.metrics["best_epoch"])
        trial.set_user_attr("epochs_run", result.metrics["epochs_run"])
        return float(objective.best(result.metrics))

    with _each_warning_once():
        study.optimize(
            run_trial,
            n_trials=trials,
            timeout=timeout,
            catch=(TrainingDiverged,),  # a diverged trial fails; the study goes on
            callbacks=[lambda study, trial: progress.on_trial_end(trial, study)],
            gc_after_trial=True,
        )


@contextmanager
def _each_warning_once() -> Iterator[None]:
    """Show a warning once per study, not once per trial (the small-split warning of every run).
    Python's own "once per place" fails here: Optuna resets the warning filters every trial."""
    seen: set[tuple[str, type]] = set()
    with warnings.catch_warnings():
        show = warnings.showwarning

        def once(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
            if (str(message), category) not in seen:
                seen.add((str(message), category))
                show(message, category, *args, **kwargs)

        warnings.showwarning = once
        yield


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value, the tuned settings as applied, best_epoch,
    epochs_run, seconds."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        settings = {k: _value_text(v) if isinstance(v, list) else v for k, v in trial_settings(trial).items()}
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "value": np.nan if trial.value is None else trial.value,
                **settings,
                "best_epoch": trial.user_attrs.get("best_epoch"),
                "epochs_run": trial.user_attrs.get("epochs_run", trial.last_step),
                "seconds": trial.duration.total_seconds() if trial.duration is not None else np.nan,
            }
        )
    return pd.DataFrame(rows)


def _result(study: optuna.Study, objective: str, out: Path | None, importance: bool, seed: int) -> TuneResult:
    best = _best_trial(study)
    best_config = TrainConfig.from_dict(best.user_attrs["config"]).validate() if best is not None else None
    result = TuneResult(
        study=study,
        objective=objective,
        best_config=best_config,
        best_value=None if best is None else best.value,
        best_trial=None if best is None else best.number,
        trials=trials_frame(study),
        out=out,
    )
    if out is None:
        return result
    if best is None:
        warnings.warn("no trial completed: no best_config.json yet", stacklevel=3)
    else:
        result.files["best_config"] = _write_best_config(out, study, best)
    if importance:
        path = _write_importance(study, out / IMPORTANCE, seed)
        if path is not None:
            result.files["importance"] = path
    return result


def _write_best_config(out: Path, study: optuna.Study, best: optuna.trial.FrozenTrial) -> Path:
    """The best trial's config as a run folder's config.json has it (`hapnet train --config`
    reads it): its settings, the versions, the fingerprints of the data and the ontology."""
    from hapnet.training.runs import DATA_FINGERPRINT, ONTOLOGY_FINGERPRINT, versions, write_json

    saved = study.user_attrs.get(STUDY_ATTR, {})
    record = {key: saved[key] for key in (DATA_FINGERPRINT, ONTOLOGY_FINGERPRINT) if key in saved}
    path = out / BEST_CONFIG
    write_json(path, {**best.user_attrs["config"], "versions": versions(), **record})
    return path


def _write_importance(study: optuna.Study, path: Path, seed: int) -> Path | None:
    """Optuna's parameter-importance plot (fANOVA, scikit-learn) as a PNG; a one-line warning
    instead when the study cannot rank its parameters yet."""
    completed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(completed) < 2:
        warnings.warn(
            f"parameter importance needs 2 or more completed trials ({len(completed)} so far): "
            f"{path.name} not written",
            stacklevel=4,
        )
        return None
    # matplotlib and scikit-learn load only when a plot is asked for
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    import optuna

    from hapnet.utils.textio import atomic_path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
            axes = optuna.visualization.matplotlib.plot_param_importances(
                study, evaluator=evaluator, target_name=study.user_attrs.get(STUDY_ATTR, {}).get("objective")
            )
        except (ValueError, RuntimeError) as exc:  # e.g. every trial scored the same: nothing to rank
            reason = error_summary(exc).rstrip(".")
            warnings.warn(f"parameter importance: {reason}; {path.name} not written", stacklevel=4)
            return None
    figure = axes.figure
    try:
        with atomic_path(path, overwrite=True) as tmp:
            figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path
