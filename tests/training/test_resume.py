"""Epoch checkpoints, `--resume` after a kill, NaN stops and atomic run folders.

A run killed (SIGKILL, Ctrl-C, an exception) after epoch k and resumed must end with exactly the
metrics and history of the same run left alone: same seed, same data, same machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import hapnet
from hapnet.cli.main import app
from hapnet.errors import HapnetError
from hapnet.training import step as training_step
from hapnet.training import trainer
from hapnet.training.runs import RESUME, RunWriter
from hapnet.training.trainer import TrainCallbacks, TrainingDiverged

runner = CliRunner()
EPOCHS = 3
LOSS_COLUMNS = ("train_loss", "valid_loss", "valid_accuracy", "test_loss", "test_accuracy")


def run_cli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 3-level ontology of 60 codes and 200 patients: HAP with dropout trains in a second an epoch."""
    folder = tmp_path_factory.mktemp("small")
    lines = ["code,parent"]
    for g in range(4):
        lines.append(f"G{g},")
        for s in range(3):
            lines.append(f"G{g}S{s},G{g}")
            lines.extend(f"C{g}{s}{c},G{g}S{s}" for c in range(5))
    (folder / "onto.csv").write_text("\n".join(lines) + "\n")
    codes = [f"C{g}{s}{c}" for g in range(4) for s in range(3) for c in range(5)]
    rng = np.random.default_rng(0)
    rows = ["patient,visit,code"]
    for p in range(200):
        for v in range(int(rng.integers(2, 5))):
            rows.extend(
                f"{p},{v},{c}" for c in rng.choice(codes, size=int(rng.integers(1, 5)), replace=False)
            )
    (folder / "visits.csv").write_text("\n".join(rows) + "\n")
    return dict(
        model="hap",
        ontology=str(folder / "onto.csv"),
        data=str(folder / "visits.csv"),
        epochs=EPOCHS,
        dim=16,
        hidden=16,
        attention_dim=8,
        dropout=0.4,  # dropout draws from torch's RNG: resuming must restore it
        batch_size=40,
        k=5,
        device="cpu",
    )


@pytest.fixture(scope="module")
def reference(small: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run, never interrupted."""
    out = tmp_path_factory.mktemp("reference") / "run"
    hapnet.train(out=out, **small)
    return out


def assert_same_run(run: Path, reference: Path) -> None:
    """metrics.json valid/test figures and the per-epoch losses are identical (NaN-safe: as JSON)."""
    got, want = (json.loads((p / "metrics.json").read_text()) for p in (run, reference))
    for key in ("test", "valid", "best_epoch"):
        assert json.dumps(got[key]) == json.dumps(want[key]), key
    got_history, want_history = (
        [{c: row[c] for c in LOSS_COLUMNS} for row in read_history(p)] for p in (run, reference)
    )
    assert got_history == want_history


def read_history(run: Path) -> list[dict]:
    import pandas as pd

    return pd.read_csv(run / "history.csv").to_dict("records")


class StopAt(TrainCallbacks):
    """Interrupts training at a given batch of a given epoch, like Ctrl-C would."""

    def __init__(self, epoch: int, batch: int = 1):
        self.epoch, self.batch = epoch, batch

    def on_batch(self, epoch: int, batch_index: int, loss: float) -> None:
        if (epoch, batch_index) == (self.epoch, self.batch):
            raise KeyboardInterrupt


KILL_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys
    import hapnet
    from hapnet.training.runs import RunWriter
    from hapnet.training.trainer import TrainCallbacks

    settings, out, epoch = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])

    def kill(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    class KillAt(TrainCallbacks):
        def on_batch(self, e, index, loss):
            if e == epoch and index == 1:
                kill()

    if epoch > settings["epochs"]:  # everything written, killed just before the rename
        RunWriter.finish = kill
    hapnet.train(out=out, callbacks=KillAt(), **settings)
    """
)


def train_and_kill(settings: dict, out: Path, epoch: int) -> None:
    """`hapnet.train` in a child process that SIGKILLs itself in `epoch` (after the last: at the rename)."""
    child = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, json.dumps(settings), str(out), str(epoch)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr


@pytest.mark.parametrize("kill_epoch", [2, EPOCHS + 1])
def test_sigkilled_run_resumes_to_the_same_metrics(
    kill_epoch: int, small: dict, reference: Path, tmp_path: Path
):
    out = tmp_path / "run"
    train_and_kill(small, out, kill_epoch)
    partial = tmp_path / ".run.partial"
    assert not out.exists()  # a killed run never has the final name
    assert (partial / RESUME).is_file()
    # by the partial folder's path through the CLI, by the final name through the library
    if kill_epoch == 2:
        result = run_cli("train", "--resume", partial)
        assert result.exit_code == 0, result.output
        assert "best epoch" in result.output
    else:
        assert hapnet.train(resume=out).run_dir == out
    assert not partial.exists() and not (out / RESUME).exists()
    assert_same_run(out, reference)


@pytest.mark.parametrize("stop_epoch", [2, 3])
def test_interrupted_run_resumes_to_the_same_metrics(
    stop_epoch: int, small: dict, reference: Path, tmp_path: Path
):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        hapnet.train(out=out, callbacks=StopAt(stop_epoch), **small)
    state = torch.load(tmp_path / ".run.partial" / RESUME, weights_only=True)
    assert state["epoch"] == stop_epoch - 1 and len(state["history"]) == stop_epoch - 1
    result = hapnet.resume(out)
    assert result.run_dir == out and [r["epoch"] for r in result.history] == list(range(1, EPOCHS + 1))
    assert_same_run(out, reference)


def test_resume_restores_the_torch_rng(small: dict, reference: Path, tmp_path: Path, monkeypatch):
    """Without restoring the RNG state, dropout masks differ after resuming: the test above can fail."""
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        hapnet.train(out=out, callbacks=StopAt(2), **small)
    monkeypatch.setattr("hapnet.training.trainer.set_rng_states", lambda states: None)
    hapnet.train(resume=out)
    with pytest.raises(AssertionError):
        assert_same_run(out, reference)


def test_checkpoint_holds_everything_and_loads_weights_only(small: dict, tmp_path: Path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        hapnet.train(out=out, callbacks=StopAt(3), **small)
    state = torch.load(tmp_path / ".run.partial" / RESUME, weights_only=True)
    assert {"epoch", "model", "optimizer", "rng", "history", "best"} <= set(state)
    assert {"torch", "python", "numpy"} <= set(state["rng"])
    assert state["epoch"] == 2 and [r["epoch"] for r in state["history"]] == [1, 2]
    best = state["best"]
    assert best["epoch"] in (1, 2)
    assert best["valid_loss"] == state["history"][best["epoch"] - 1]["valid_loss"]
    assert {"accuracy", "accuracy_by_group", "loss"} <= set(best["test"]) and set(best["state"]) == set(
        state["model"]
    )
    assert state["optimizer"]["state"]  # Adam moments
    config = json.loads((tmp_path / ".run.partial" / "config.json").read_text())
    assert config["epochs"] == EPOCHS


def test_finished_run_cannot_be_resumed(reference: Path):
    result = run_cli("train", "--resume", reference)
    assert result.exit_code == 2 and "finished" in result.output and "Traceback" not in result.output


def test_resume_without_checkpoint_is_one_line_exit_2(small: dict, tmp_path: Path):
    partial = tmp_path / ".run.partial"  # killed before the first epoch ended
    partial.mkdir()
    (partial / "config.json").write_text(json.dumps(small))
    for target in (tmp_path / "run", partial, tmp_path / "nothing-here"):
        result = run_cli("train", "--resume", target)
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert "no checkpoint" in run_cli("train", "--resume", partial).output


def test_interrupted_before_the_first_checkpoint_leaves_nothing(small: dict, tmp_path: Path):
    with pytest.raises(KeyboardInterrupt):
        hapnet.train(out=tmp_path / "run", callbacks=StopAt(1), **small)
    assert list(tmp_path.iterdir()) == []


def test_resume_refuses_to_replace_an_existing_run_without_force(small: dict, tmp_path: Path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(KeyboardInterrupt):
        hapnet.train(out=out, force=True, callbacks=StopAt(2), **small)
    with pytest.raises(HapnetError, match="--force"):
        hapnet.train(resume=out)
    assert (out / "mine.txt").read_text() == "keep me"


def test_resume_takes_no_other_settings(reference: Path):
    with pytest.raises(HapnetError, match="saved settings"):
        hapnet.train(resume=reference, epochs=5)


def nan_at(epoch: int, step: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The training loss becomes NaN at (epoch, step); evaluation losses stay finite."""
    real_loss, real_evaluate = training_step.multi_task_loss, trainer.evaluate_patients
    calls = {"evaluations": 0, "step": 0}

    def evaluate(*args, **kwargs):  # noqa: ANN002, ANN003 - two evaluations (valid, test) end an epoch
        calls["evaluations"] += 1
        calls["step"] = 0
        return real_evaluate(*args, **kwargs)

    def loss(logits, batch, kind, log_vars):  # noqa: ANN001
        objective, value = real_loss(logits, batch, kind, log_vars)
        if torch.is_grad_enabled():
            calls["step"] += 1
            if (1 + calls["evaluations"] // 2, calls["step"]) == (epoch, step):
                return objective * float("nan"), value * float("nan")
        return objective, value

    monkeypatch.setattr(trainer, "evaluate_patients", evaluate)
    monkeypatch.setattr(training_step, "multi_task_loss", loss)


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_the_checkpoint(
    small: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    nan_at(2, 3, monkeypatch)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as error:
        hapnet.train(out=out, **small)
    message = str(error.value)
    assert "nan" in message and "epoch 2, step 3" in message and "--resume" in message
    partial = tmp_path / ".run.partial"
    assert not out.exists()
    state = torch.load(partial / RESUME, weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_nan_loss_in_the_cli_is_one_line_exit_2(small: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    nan_at(1, 2, monkeypatch)
    out = tmp_path / "run"
    settings = ["--model", "hap", "--ontology", small["ontology"], "--data", small["data"], "--epochs", "2"]
    result = run_cli("train", *settings, "--dim", "8", "--hidden", "8", "--device", "cpu", "--out", out)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "epoch 1, step 2" in result.output and "nothing was kept" in result.output
    assert list(tmp_path.iterdir()) == []  # no epoch finished: nothing to keep


def test_absurd_learning_rate_diverges_cleanly(small: dict, tmp_path: Path):
    settings = {**small, "lr": 1e30, "optimizer": "adadelta", "epochs": 2}
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 1, step 2; no epoch completed"):
        hapnet.train(out=out, **settings)
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A save that dies half-way leaves the previous checkpoint readable."""
    from hapnet.training.config import TrainConfig

    writer = RunWriter.start(tmp_path / "run", TrainConfig(), force=False)
    writer.save_resume_state({"epoch": 1})

    def broken_save(obj, path):  # noqa: ANN001
        Path(path).write_bytes(b"half a pickle")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        writer.save_resume_state({"epoch": 2})
    assert writer.load_resume_state() == {"epoch": 1}
    os.remove(writer.work / RESUME)
    assert not writer.has_resume_state()


def test_kill_between_checkpoint_and_history_loses_nothing(
    small: dict, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Killed after the last epoch's checkpoint, before history.csv: resuming still writes every row."""
    real_save_history = RunWriter.save_history

    def save_history(self, history):  # noqa: ANN001
        if len(history) == EPOCHS:
            raise KeyboardInterrupt
        real_save_history(self, history)

    out = tmp_path / "run"
    monkeypatch.setattr(RunWriter, "save_history", save_history)
    with pytest.raises(KeyboardInterrupt):
        hapnet.train(out=out, **small)
    monkeypatch.setattr(RunWriter, "save_history", real_save_history)
    assert len(read_history(tmp_path / ".run.partial")) == EPOCHS - 1
    hapnet.train(resume=out)
    assert len(read_history(out)) == EPOCHS
    assert_same_run(out, reference)


def test_training_again_does_not_discard_an_interrupted_run(small: dict, tmp_path: Path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        hapnet.train(out=out, callbacks=StopAt(2), **small)
    with pytest.raises(HapnetError, match="--resume"):
        hapnet.train(out=out, **small)
    assert (tmp_path / ".run.partial" / RESUME).is_file()
    result = hapnet.train(out=out, force=True, **{**small, "epochs": 1})  # --force starts over
    assert len(result.history) == 1 and not (tmp_path / ".run.partial").exists()


def test_resume_refuses_changed_data_and_accepts_the_same_data_recompressed(
    small: dict, reference: Path, tmp_path: Path
):
    import gzip
    import shutil

    data = shutil.copy(small["data"], tmp_path / "visits.csv")
    settings = {**small, "data": str(data)}
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        hapnet.train(out=out, callbacks=StopAt(2), **settings)
    config = json.loads((tmp_path / ".run.partial" / "config.json").read_text())
    original = Path(data).read_text()
    Path(data).write_text(original + "new,1,C000\nnew,2,C001\n")  # one more patient
    with pytest.raises(HapnetError, match="the data changed since this run started.*new folder"):
        hapnet.train(resume=out)
    result = run_cli("train", "--resume", out)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "data changed" in result.output
    assert (tmp_path / ".run.partial" / RESUME).is_file()  # the checkpoint is kept
    # the same visits, gzipped under the same name: the fingerprint is of the data, not the file
    Path(data).write_bytes(gzip.compress(original.encode()))
    hapnet.train(resume=out)
    assert_same_run(out, reference)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data_fingerprint"] == config["data_fingerprint"]
    assert (
        metrics["data_fingerprint"]
        == json.loads((reference / "metrics.json").read_text())["data_fingerprint"]
    )
    assert len(config["data_fingerprint"]) == 64


def test_data_fingerprint_sees_every_array(small: dict):
    from hapnet.data.fingerprint import data_fingerprint, fingerprint_matches, legacy_data_fingerprint

    ontology = hapnet.load_ontology(small["ontology"])
    data = hapnet.load_visits(small["data"], ontology)
    base = data_fingerprint(data)
    assert data_fingerprint(data.subset(np.arange(data.num_patients))) == base
    changed = [
        data.subset(np.arange(data.num_patients)[::-1]),  # patient order
        data.subset(np.arange(data.num_patients - 1)),  # one patient fewer
    ]
    codes = data.codes.copy()
    codes[0] += 1
    changed.append(
        hapnet.VisitData(
            ontology, data.patient_ids, data.patient_offsets, data.visit_offsets, codes, data.report
        )
    )
    ids = data.patient_ids.astype(object)
    ids[0] = "someone else"
    changed.append(
        hapnet.VisitData(ontology, ids, data.patient_offsets, data.visit_offsets, data.codes, data.report)
    )
    times = np.arange(data.num_visits, dtype=np.float64)
    timed = dataclasses.replace(data, visit_times=times)
    later = times.copy()
    later[-1] += 1.0
    changed += [timed, dataclasses.replace(data, visit_times=later)]
    labels = np.array(["train"] * data.num_patients)
    labelled = dataclasses.replace(data, patient_splits=labels)
    changed += [labelled, dataclasses.replace(data, patient_splits=np.roll(labels, 1).astype("<U8"))]
    changed[-1].patient_splits[0] = "held_out"
    assert len({base, *map(data_fingerprint, changed)}) == 1 + len(changed)
    # a run recorded before this version still matches its data, and only it
    assert fingerprint_matches(legacy_data_fingerprint(data), data)
    assert not fingerprint_matches(legacy_data_fingerprint(changed[2]), data)


def test_nan_validation_loss_stops_before_the_checkpoint_and_the_run_resumes(
    small: dict, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Weights gone bad show first in the validation loss: that epoch is never checkpointed, so
    the suggested --resume continues from the last good epoch (it said "inconsistent checkpoint")."""
    real_evaluate = trainer.evaluate_patients
    calls = {"n": 0}

    def evaluate(*args, **kwargs):  # noqa: ANN002, ANN003 - the 3rd call is epoch 2's validation
        calls["n"] += 1
        result = real_evaluate(*args, **kwargs)
        if calls["n"] == 3:
            result.loss = float("nan")
        return result

    monkeypatch.setattr(trainer, "evaluate_patients", evaluate)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 2, validation; .*--resume"):
        hapnet.train(out=out, quiet=True, **small)
    assert torch.load(tmp_path / ".run.partial" / RESUME, weights_only=True)["epoch"] == 1
    monkeypatch.setattr(trainer, "evaluate_patients", real_evaluate)
    hapnet.resume(out, quiet=True)
    assert_same_run(out, reference)


def test_absurd_learning_rate_in_one_step_leaves_nothing_when_no_epoch_was_good(small: dict, tmp_path: Path):
    # one step per epoch: the step's loss is finite, the weights it leaves are not
    settings = {**small, "lr": 1e30, "optimizer": "adam", "batch_size": 1000, "epochs": 2}
    with pytest.raises(TrainingDiverged, match=r"at epoch 1, validation; no epoch completed"):
        hapnet.train(out=tmp_path / "run", quiet=True, **settings)
    assert list(tmp_path.iterdir()) == []


def test_library_training_shows_progress_unless_quiet(small: dict, capsys: pytest.CaptureFixture):
    hapnet.train(**{**small, "epochs": 1})
    shown = capsys.readouterr().err
    assert "valid loss" in shown and "best" in shown
    hapnet.train(quiet=True, **{**small, "epochs": 1})
    assert capsys.readouterr().err == ""
