"""`hapnet tune` / `hapnet.tune`: the search space, the objective (validation only), pruning,
resuming from an SQLite storage, best_config.json, the CLI. Short trials on the tiny data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from tiny import write_tiny_data
from typer.testing import CliRunner

import hapnet
from hapnet.cli.main import app
from hapnet.errors import HapnetError
from hapnet.training import trainer
from hapnet.training.config import TrainConfig, make_config, parse_levels
from hapnet.training.evaluation import Evaluation
from hapnet.training.tune import (
    BEST_CONFIG,
    DEFAULT_TRIALS,
    IMPORTANCE,
    LEARNING_RATES,
    OBJECTIVES,
    PRUNER_STARTUP_TRIALS,
    PRUNER_WARMUP_EPOCHS,
    SPACES,
    LearningRate,
    TuneCallbacks,
    parse_timeout,
    resolve_space,
    sample_settings,
    trial_budget,
)

pytestmark = pytest.mark.filterwarnings("ignore:the validation split")  # 60 patients: said, known
runner = CliRunner()
DOCS = Path(__file__).parents[2] / "docs" / "tuning.md"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The base settings of every study here: HAP on the tiny data, 2 epochs."""
    ontology, data = write_tiny_data(tmp_path_factory.mktemp("tiny"))
    return dict(model="hap", data=str(data), ontology=str(ontology), epochs=2, k=3, device="cpu")


def tiny_cli(settings: dict) -> list[str]:
    return [
        "tune",
        *("--data", settings["data"], "--ontology", settings["ontology"], "--epochs", "2", "-k", "3"),
        *("--device", "cpu", "--threads", "1", "--space", "tiny"),
    ]


class EpochCounter(TuneCallbacks):
    """The epochs each trial trained (the trainer's own hook, seen through tune's)."""

    def __init__(self) -> None:
        self.epochs: dict[int, list[int]] = {}

    def on_epoch_start(self, number: int, epoch: int) -> None:
        self.epochs.setdefault(number, []).append(epoch)


# ----------------------------------------------------------------------------- settings, no training
@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("2h", 7200), ("45", 45), ("1.5h", 5400), (12.5, 12.5)]
)
def test_timeout_reads_seconds_minutes_hours(text: str | float, seconds: float) -> None:
    assert parse_timeout(text) == seconds


@pytest.mark.parametrize("text", ["5x", "0", "-1", "", "h", "2 days", "nan", True])
def test_a_bad_timeout_is_refused(text: str) -> None:
    with pytest.raises(HapnetError, match="--timeout"):
        parse_timeout(text)


def test_a_timeout_alone_runs_trials_until_it_is_over() -> None:
    assert trial_budget(None, None) == DEFAULT_TRIALS
    assert trial_budget(None, 60.0) is None  # Optuna: no count, the timeout ends the study
    assert trial_budget(5, 60.0) == 5
    for bad in (0, -1, 2.5, True):
        with pytest.raises(HapnetError, match="--trials"):
            trial_budget(bad, None)


@pytest.mark.parametrize(
    ("optimizer", "position", "lr"),
    [
        ("adam", 0.0, 1e-4),
        ("adam", 1.0, 1e-2),
        ("adam", 0.5, 1e-3),
        ("adadelta", 0.0, 0.1),
        ("adadelta", 1.0, 2.0),
    ],
)
def test_the_learning_rate_lies_in_its_optimizers_log_range(
    optimizer: str, position: float, lr: float
) -> None:
    space = {"optimizer": SPACES["default"]["optimizer"], "lr": SPACES["default"]["lr"]}
    trial = optuna.trial.FixedTrial({"optimizer": optimizer, "lr_position": position})
    settings = sample_settings(trial, space, TrainConfig())
    assert settings == {"optimizer": optimizer, "lr": pytest.approx(lr, rel=1e-12)}
    assert LEARNING_RATES[optimizer][0] <= settings["lr"] <= LEARNING_RATES[optimizer][1]


def test_a_trial_samples_every_setting_of_the_space_as_the_config_takes_it() -> None:
    params = {
        "optimizer": "adadelta",
        "lr_position": 0.5,
        "dropout": 0.25,
        "dim": 16,
        "hidden": 8,
        "attention_dim": 4,
        "batch_size": 32,
        "loss": "bce",
        "output": "free",
        "aux_levels": "1,2",
        "pretrain": "none",
    }
    settings = sample_settings(optuna.trial.FixedTrial(params), SPACES["tiny"], TrainConfig())
    assert settings["aux_levels"] == [1, 2] and settings["lr"] == pytest.approx(math.sqrt(0.1 * 2.0))
    assert {k: v for k, v in settings.items() if k not in ("aux_levels", "lr")} == {
        k: v for k, v in params.items() if k not in ("aux_levels", "lr_position")
    }
    TrainConfig.from_dict(settings).validate()  # every sampled value is a valid setting


def test_the_loss_is_tuned_only_where_scores_of_different_losses_compare() -> None:
    assert "loss" not in resolve_space("default", "valid_loss")
    assert "loss" in resolve_space("default", "valid_accuracy")
    with pytest.raises(HapnetError, match="do not compare"):
        resolve_space({"loss": SPACES["default"]["loss"]}, "valid_loss")
    with pytest.raises(HapnetError, match="not a training setting"):
        resolve_space({"learning_rate": LearningRate(LEARNING_RATES)}, "valid_loss")


def test_docs_describe_every_parameter_of_the_space() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for name, space in SPACES.items():
        assert f"`{name}`" in text, name
        for setting, param in space.items():
            assert f"`{setting}`" in text, setting
            values = param.values if hasattr(param, "values") else []
            assert all(f"{v}" in text for v in values), (setting, values)
    for optimizer, (low, high) in LEARNING_RATES.items():
        assert f"{optimizer} {low:g} to {high:g}" in text
    assert "`lr_position`" in text
    assert all(f"`{name}`" in text for name in OBJECTIVES)
    assert f"n_startup_trials={PRUNER_STARTUP_TRIALS}" in text
    assert f"n_warmup_steps={PRUNER_WARMUP_EPOCHS}" in text


# ----------------------------------------------------------------------------- the objective
def test_the_objective_is_the_best_epochs_validation_score_and_never_the_test_split(
    tiny: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every trial's value is its run's validation loss, each epoch's report its validation loss;
    scrambling every test evaluation changes neither the values nor what the sampler chose."""
    evaluate, train = trainer._evaluate, trainer.train
    runs: list = []

    def scrambled_test(seed: int):  # noqa: ANN202
        rng = np.random.default_rng(seed)

        def scrambled(session, patients, full=False):  # noqa: ANN001, ANN202
            result = evaluate(session, patients, full)
            if patients is not session.split.test:
                return result
            groups = list(rng.uniform(size=len(result.accuracy["accuracy_by_group"])))
            accuracy = {**result.accuracy, "accuracy": rng.uniform(), "accuracy_by_group": groups}
            return Evaluation(float(rng.uniform(0, 100)), accuracy, result.tasks)

        return scrambled

    def recorded_train(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        runs.append(train(*args, **kwargs))
        return runs[-1]

    monkeypatch.setattr(trainer, "train", recorded_train)
    results = []
    for seed in (1, 2):
        monkeypatch.setattr(trainer, "_evaluate", scrambled_test(seed))
        results.append(hapnet.tune(trials=2, space="tiny", quiet=True, **tiny))
    first, second = (result.study.get_trials() for result in results)
    assert [t.params for t in first] == [t.params for t in second]
    assert [t.value for t in first] == [t.value for t in second]
    assert runs[0].history[-1]["test_loss"] != runs[2].history[-1]["test_loss"]  # the scrambling took
    for trial, run in zip(first + second, runs, strict=True):
        assert trial.value == run.metrics["valid"]["loss"]
        assert trial.intermediate_values == {r["epoch"]: r["valid_loss"] for r in run.history}
        assert run.run_dir is None  # trials write no run folder
    assert not [c for c in results[0].trials.columns if "test" in c]
    assert not [k for t in first for k in (*t.user_attrs, *t.params) if "test" in k]


def test_valid_accuracy_is_maximised(tiny: dict) -> None:
    result = hapnet.tune(trials=2, space="tiny", objective="valid_accuracy", quiet=True, **tiny)
    assert result.study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert result.best_value == max(result.trials["value"])
    assert result.best_config.k == 3 and result.best_config.loss in SPACES["tiny"]["loss"].values


# ----------------------------------------------------------------------------- pruning
def test_a_pruned_trial_stops_training_and_leaves_nothing(tiny: dict, tmp_path: Path) -> None:
    """A pruner that prunes every trial at its first report: each trial trains one epoch of its 3."""
    counter = EpochCounter()
    with pytest.warns(UserWarning, match="no trial completed"):
        result = hapnet.tune(
            trials=2,
            space="tiny",
            out=tmp_path / "tune",
            pruner=optuna.pruners.ThresholdPruner(upper=0.0),  # any validation loss is above 0
            callbacks=counter,
            **{**tiny, "epochs": 3},
        )
    trials = result.study.get_trials()
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    assert [list(t.intermediate_values) for t in trials] == [[1], [1]]
    assert counter.epochs == {0: [1], 1: [1]}
    assert result.best_config is None and list(result.trials["state"]) == ["PRUNED", "PRUNED"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["study.db", "tune", "tune.json"]


def test_the_median_pruner_stops_a_trial_worse_than_the_median(tiny: dict, tmp_path: Path) -> None:
    """Queued into the study before `tune` continues it: a fast learner (Adam, lr 1e-2), then a
    slow one (Adadelta, lr 0.1) whose first epoch scores worse: the median pruner stops the second."""
    storage = f"sqlite:///{tmp_path / 'queued.db'}"
    study = optuna.create_study(storage=storage, study_name="queued")
    common = dict(dropout=0.0, dim=16, hidden=16, attention_dim=8, batch_size=16, output="tied")
    common.update(aux_levels="none", pretrain="none")
    study.enqueue_trial({**common, "optimizer": "adam", "lr_position": 1.0})
    study.enqueue_trial({**common, "optimizer": "adadelta", "lr_position": 0.0})
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    counter = EpochCounter()
    result = hapnet.tune(
        trials=2, space="tiny", storage=storage, study_name="queued", pruner=pruner, callbacks=counter, **tiny
    )
    fast, slow = result.study.get_trials()
    assert (fast.state.name, slow.state.name) == ("COMPLETE", "PRUNED")
    assert slow.intermediate_values[1] > fast.intermediate_values[1]
    assert counter.epochs == {0: [1, 2], 1: [1]}
    assert result.best_trial == 0 and result.best_config.optimizer == "adam"


# ----------------------------------------------------------------------------- storage, resume, outputs
def test_a_study_in_sqlite_continues_and_refuses_other_settings(tiny: dict, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = hapnet.tune(trials=2, space="tiny", storage=storage, study_name="s", quiet=True, **tiny)
    again = hapnet.tune(trials=1, space="tiny", storage=storage, study_name="s", quiet=True, **tiny)
    trials = optuna.load_study(study_name="s", storage=storage).get_trials()
    assert [t.number for t in trials] == [0, 1, 2] and len(again.trials) == 3
    assert trials[2].params not in (trials[0].params, trials[1].params)  # not the first draws again
    assert [t.params for t in trials[:2]] == [t.params for t in first.study.get_trials()[:2]]
    assert len(first.trials) == 2  # the result's table: the trials when that call ended
    with pytest.raises(HapnetError, match="epochs 2 there, 3 here"):
        out = tmp_path / "new" / "tune"
        hapnet.tune(trials=1, space="tiny", storage=storage, study_name="s", out=out, **{**tiny, "epochs": 3})
    assert not (tmp_path / "new").exists()  # refused: the folders it made are gone
    with pytest.raises(HapnetError, match="optimises valid_loss"):
        hapnet.tune(
            trials=1, space="tiny", storage=storage, study_name="s", objective="valid_accuracy", **tiny
        )
    assert len(optuna.load_study(study_name="s", storage=storage).get_trials()) == 3


def test_best_config_json_is_the_best_trials_config(tiny: dict, tmp_path: Path) -> None:
    result = hapnet.tune(trials=2, space="tiny", out=tmp_path / "t", quiet=True, **tiny)
    best = result.study.best_trial
    saved = json.loads((tmp_path / "t" / BEST_CONFIG).read_text())
    config = TrainConfig.from_saved(saved)
    assert config == result.best_config == TrainConfig.from_dict(best.user_attrs["config"])
    assert result.best_value == best.value == min(t.value for t in result.study.get_trials())
    low, high = LEARNING_RATES[best.params["optimizer"]]
    assert config.lr == pytest.approx(low * (high / low) ** best.params["lr_position"])
    for setting in (
        "optimizer",
        "dropout",
        "dim",
        "hidden",
        "attention_dim",
        "batch_size",
        "output",
        "pretrain",
    ):
        assert getattr(config, setting) == best.params[setting], setting
    assert config.aux_levels == parse_levels(best.params["aux_levels"])
    assert (config.epochs, config.data, config.seed) == (2, tiny["data"], 0)  # the base config's
    assert saved["data_fingerprint"] and saved["ontology_fingerprint"]  # as a run's config.json
    assert make_config(config_file=tmp_path / "t" / BEST_CONFIG) == config  # `hapnet train --config`


def test_importance_needs_two_completed_trials(tiny: dict, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="2 or more completed trials"):
        result = hapnet.tune(trials=1, space="tiny", out=tmp_path / "t", importance=True, quiet=True, **tiny)
    assert (tmp_path / "t" / BEST_CONFIG).is_file() and not (tmp_path / "t" / IMPORTANCE).exists()
    assert "importance" not in result.files


def test_tune_refuses_bad_arguments_before_training(tiny: dict, tmp_path: Path) -> None:
    for bad, message in [
        (dict(trials=0), "--trials"),
        (dict(objective="test_loss"), "--objective"),
        (dict(space="huge"), "--space"),
        (dict(timeout="soon"), "--timeout"),
        (dict(importance=True, out=None), "importance: give out"),
        (dict(storage="sqlite:///" + str(tmp_path / "nowhere" / "s.db")), "no such folder"),
    ]:
        with pytest.raises(HapnetError, match=message):
            hapnet.tune(**{"space": "tiny", "out": tmp_path / "t", **bad}, **tiny)
    (tmp_path / "mine").mkdir()
    with pytest.raises(HapnetError, match="not a hapnet tune folder"):
        hapnet.tune(space="tiny", out=tmp_path / "mine", **tiny)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


# ----------------------------------------------------------------------------- the CLI
def test_cli_tunes_continues_and_writes_its_outputs(tiny: dict, tmp_path: Path) -> None:
    out = tmp_path / "tune"
    result = runner.invoke(app, [*tiny_cli(tiny), "--trials", "2", "-o", str(out), "--importance"])
    assert result.exit_code == 0, result.output
    assert "Trials" in result.stdout and "best config:" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "best_config.json",
        "importance.png",
        "study.db",
        "tune.json",
    ]
    assert (out / IMPORTANCE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table_rows = [line for line in result.stdout.splitlines() if "complete" in line and "│" in line]
    assert len(table_rows) == 2

    again = runner.invoke(
        app, [*tiny_cli(tiny), "--trials", "1", "-o", str(out)]
    )  # the same study: continued
    assert again.exit_code == 0, again.output
    study = optuna.load_study(study_name="hap-valid-loss", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.get_trials()) == 3
    best = TrainConfig.from_saved(json.loads((out / BEST_CONFIG).read_text()))
    assert best == TrainConfig.from_dict(study.best_trial.user_attrs["config"])

    other = runner.invoke(app, [*tiny_cli(tiny), "--trials", "1", "-o", str(out), "--study-name", "other"])
    assert other.exit_code == 2 and "holds study 'hap-valid-loss'" in other.stderr
    bad = runner.invoke(app, [*tiny_cli(tiny), "--timeout", "5x", "-o", str(tmp_path / "new")])
    assert bad.exit_code == 2 and bad.stderr.strip().splitlines() == [
        "error: --timeout '5x': expected seconds or a duration such as 90s, 30m, 2h"
    ]
    assert not (tmp_path / "new").exists()
