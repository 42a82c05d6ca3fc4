"""Early stopping, the tied output, auxiliary category heads and visit gaps, end to end through
the CLI and the library on tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from tiny import hapnet as run_cli

import hapnet
from hapnet.data.synth import write_synth
from hapnet.models.registry import MODELS
from hapnet.training import trainer
from hapnet.training.evaluation import Evaluation

TINY = ["--dim", "16", "--hidden", "16", "--attention-dim", "8", "--device", "cpu"]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synth(tmp_path_factory.mktemp("synth") / "data", "icd9-ccs", patients=200, seed=2)


def scripted_validation(losses: list[float], monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation losses follow `losses`, epoch by epoch (the test split gets the same)."""
    calls = {"n": 0}

    def evaluate(*args, **kwargs):  # noqa: ANN002, ANN003 - valid then test, every epoch
        epoch = min(calls["n"] // 2, len(losses) - 1)  # then once more at the end, on the best state
        calls["n"] += 1
        return Evaluation(losses[epoch], {"accuracy": 0.1 * epoch, "accuracy_by_group": [0.0] * 4})

    monkeypatch.setattr(trainer, "evaluate_patients", evaluate)


def test_patience_stops_after_that_many_epochs_without_a_lower_validation_loss(
    synth_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    scripted_validation([3.0, 2.0, 2.5, 2.0, 2.6, 1.0, 0.5], monkeypatch)
    common = dict(data=str(synth_dir), dim=8, hidden=8, attention_dim=4, device="cpu", epochs=7)
    result = hapnet.train(patience=3, **common)
    # best epoch 2 (2.0; the equal 2.0 of epoch 4 is not lower); epochs 3, 4, 5 do not improve
    assert len(result.history) == 5 and result.metrics["best_epoch"] == 2
    assert result.metrics["stopped_early"] and result.metrics["epochs_run"] == 5
    scripted_validation([3.0, 2.0, 2.5, 2.0, 2.6, 1.0, 0.5], monkeypatch)
    result = hapnet.train(patience=0, **common)  # 0: every epoch
    assert len(result.history) == 7 and result.metrics["best_epoch"] == 7
    assert not result.metrics["stopped_early"]


def test_the_paper_preset_trains_every_epoch_unless_given_a_patience():
    assert hapnet.make_config(preset="paper").patience == 0
    assert hapnet.make_config(preset="paper", patience=4).patience == 4
    assert hapnet.make_config().patience > 0


def test_tied_output_auxiliary_levels_and_time_input_end_to_end(synth_dir: Path, tmp_path: Path):
    out = tmp_path / "run"
    result = run_cli(
        "train", "--data", synth_dir, "--model", "gram", *TINY, "--epochs", "2", "--output", "tied",
        "--aux-levels", "1,2", "--time-input", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Auxiliary tasks" in result.output and "level2" in result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["test"]["tasks"]) == {"level1", "level2"}
    assert 0 < metrics["test"]["tasks"]["level1"]["accuracy@5"] <= 1
    history = pd.read_csv(out / "history.csv")
    assert {"weight_diagnosis", "weight_level1", "weight_level2"} <= set(history.columns)
    assert (history["weight_level1"] != 1.0).all()  # learned: they moved from exp(0)
    # The saved run loads and scores its test split exactly as training did.
    again = hapnet.evaluate(out)
    assert again["test"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])
    assert again["test"]["tasks"]["level2"]["loss"] == pytest.approx(
        metrics["test"]["tasks"]["level2"]["loss"]
    )
    assert hapnet.load(out).model.gru.input_size == 17  # d + the visit gap


def test_equal_task_weights_learn_no_weight(synth_dir: Path):
    common = dict(data=str(synth_dir), dim=8, hidden=8, attention_dim=4, device="cpu", epochs=1)
    result = hapnet.train(model="rnn", aux_levels=[1], task_weights="equal", **common)
    assert result.model.task_log_vars is None and "weight_level1" not in result.history[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--aux-levels", "one"], "--aux-levels: expected levels such as 1,2,3"),
        (["--aux-levels", "9"], "no code of the data has an ancestor at level 9"),
        (["--aux-levels", "1,1"], "--aux-levels must be distinct levels"),
        (["--output", "shared"], "--output must be one of free, tied"),
        (["--patience", "-1"], "--patience must be 0"),
        (["--task-weights", "fixed"], "--task-weights must be one of learned, equal"),
    ],
)
def test_bad_options_are_one_line(synth_dir: Path, tmp_path: Path, args: list[str], message: str):
    result = run_cli("train", "--data", synth_dir, *TINY, "--epochs", "1", *args, "--out", tmp_path / "r")
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_time_input_needs_visit_times(tmp_path: Path):
    data = tmp_path / "visits.csv"
    rows = ["patient,visit,code"] + [
        f"{p},{v},{c}" for p in range(12) for v in (1, 2) for c in ("4019", "25000")
    ]
    data.write_text("\n".join(rows) + "\n")
    result = run_cli("train", "--data", data, *TINY, "--epochs", "1", "--time-input", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "no visit times" in result.output, result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("model", sorted(MODELS))
def test_every_model_of_the_registry_takes_every_option(synth_dir: Path, model: str):
    common = dict(data=str(synth_dir), dim=8, hidden=8, attention_dim=4, device="cpu", epochs=1)
    for output in ("free", "tied"):
        result = hapnet.train(model=model, output=output, aux_levels=[1], time_input=True, **common)
        assert set(result.metrics["test"]["tasks"]) == {"level1"}
        assert 0 < result.metrics["test"]["accuracy"] <= 1


def test_more_levels_than_the_ontology_has_are_refused(synth_dir: Path, tmp_path: Path):
    result = run_cli("train", "--data", synth_dir, *TINY, "--levels", "99", "--out", tmp_path / "r")
    assert (
        result.exit_code == 2
        and "--levels 99: ontology icd9-ccs has levels 0..5, so at most 6" in result.output
    )
    assert not (tmp_path / "r").exists()
