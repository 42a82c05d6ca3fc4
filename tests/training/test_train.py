"""End-to-end training: the CLI and the library on tiny data of every supported kind."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from testdata import DATA
from typer.testing import CliRunner

import hapnet
from hapnet.cli.main import app
from hapnet.data.synth import write_synth
from hapnet.models.registry import MODELS

TINY = ["--epochs", "2", "--dim", "16", "--hidden", "16", "--attention-dim", "8", "--device", "cpu"]
runner = CliRunner()


def run_cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synth(tmp_path_factory.mktemp("synth") / "data", "icd9-ccs", patients=300, seed=1)


@pytest.fixture(scope="module")
def hap_run(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "hap"
    result = run_cli("train", "--data", synth_dir, "--model", "hap", *TINY, "--out", out)
    assert result.exit_code == 0, result.output
    return out


def test_run_folder_has_everything(hap_run: Path):
    for name in (
        "config.json",
        "metrics.json",
        "history.csv",
        "vocab.csv",
        "checkpoint.pt",
        "code_embeddings.npy",
    ):
        assert (hap_run / name).is_file(), name
    metrics = json.loads((hap_run / "metrics.json").read_text())
    assert {"k", "seed", "model", "best_epoch", "train_seconds_per_epoch", "test", "valid"} <= set(metrics)
    assert len(metrics["train_seconds_per_epoch"]) == 2
    assert len(metrics["test"]["accuracy_by_group"]) == 4
    assert 0 < metrics["test"]["accuracy"] <= 1
    config = json.loads((hap_run / "config.json").read_text())
    assert config["model"] == "hap" and config["versions"]["torch"] == torch.__version__
    state = torch.load(hap_run / "checkpoint.pt", weights_only=True)
    assert any(key.startswith("embedder.") for key in state)


def test_evaluate_reproduces_the_test_metrics(hap_run: Path):
    metrics = json.loads((hap_run / "metrics.json").read_text())
    result = run_cli("evaluate", hap_run, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)
    assert evaluated["test"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-9)
    assert evaluated["test"]["loss"] == pytest.approx(metrics["test"]["loss"], rel=1e-5)
    at_5 = json.loads(run_cli("evaluate", hap_run, "--json", "--k", "5").stdout)
    assert at_5["k"] == 5 and at_5["test"]["accuracy"] < evaluated["test"]["accuracy"]


def test_load_gives_the_trained_model(hap_run: Path):
    run = hapnet.load(hap_run)
    import numpy as np

    saved = np.load(hap_run / "code_embeddings.npy")
    with torch.no_grad():
        assert np.allclose(run.model.code_embeddings().numpy(), saved, atol=1e-6)


def test_existing_run_folder_is_not_overwritten(hap_run: Path, synth_dir: Path):
    before = (hap_run / "metrics.json").read_text()
    result = run_cli("train", "--data", synth_dir, *TINY, "--out", hap_run)
    assert result.exit_code == 2 and "already exists" in result.output
    assert (hap_run / "metrics.json").read_text() == before


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("pretrain", ["none", "glove"])
def test_every_model_trains_through_the_library(model: str, pretrain: str, synth_dir: Path):
    result = hapnet.train(
        model=model,
        pretrain=pretrain,
        data=str(synth_dir),
        epochs=1,
        dim=8,
        hidden=8,
        attention_dim=4,
        glove_epochs=2,
        device="cpu",
    )
    assert result.metrics["model"] == model and 0 <= result.metrics["test"]["accuracy"] <= 1


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_truncated_levels_train(levels: int, synth_dir: Path):
    result = hapnet.train(
        model="gram", levels=levels, data=str(synth_dir), epochs=1, dim=8, hidden=8, attention_dim=4
    )
    assert result.metrics["levels"] == levels


def test_same_seed_same_metrics(synth_dir: Path):
    settings = dict(
        model="hap", data=str(synth_dir), epochs=2, dim=8, hidden=8, attention_dim=4, device="cpu"
    )
    first, second = hapnet.train(**settings), hapnet.train(**settings)
    assert first.metrics["test"] == second.metrics["test"]
    assert [r["train_loss"] for r in first.history] == [r["train_loss"] for r in second.history]


def upper_case_mimic3(target: Path) -> Path:
    target.mkdir()
    for name in ("ADMISSIONS", "DIAGNOSES_ICD"):
        with gzip.open(DATA / "mimic3-demo" / f"{name}.csv.gz", "rt") as source:
            header, rest = source.read().split("\n", 1)
        with gzip.open(target / f"{name}.csv.gz", "wt") as out:
            out.write(header.upper() + "\n" + rest)
    return target


def test_mimic3_demo_lower_and_upper_case_train_the_same(tmp_path: Path):
    upper = upper_case_mimic3(tmp_path / "MIMIC3")
    outcomes = []
    for data in (DATA / "mimic3-demo", upper):
        out = tmp_path / f"run-{data.name}"
        result = run_cli("train", "--data", data, "--model", "gram", *TINY, "--out", out)
        assert result.exit_code == 0, result.output
        assert "patients" in result.output  # the data report
        outcomes.append(json.loads((out / "metrics.json").read_text())["test"])
    assert outcomes[0] == outcomes[1]


def test_mimic4_demo_trains_with_both_code_systems(tmp_path: Path):
    out = tmp_path / "run"
    result = run_cli("train", "--data", DATA / "mimic4-demo", "--ontology", "icd9-icd10", *TINY, "--out", out)
    assert result.exit_code == 0, result.output
    codes = (out / "vocab.csv").read_text()
    assert "ICD9:" in codes and "ICD10:" in codes


def test_long_csv_with_column_override(tmp_path: Path, synth_dir: Path):
    import pandas as pd

    frame = pd.read_csv(synth_dir / "visits.csv.gz", dtype=str)
    frame = frame.rename(columns={"patient": "person", "visit": "enc", "time": "when", "code": "dx"})
    path = tmp_path / "visits.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "run"
    result = run_cli(
        "train",
        "--data",
        path,
        "--columns",
        "patient=person,visit=enc,time=when,code=dx",
        *TINY,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    assert (out / "metrics.json").exists()


def test_seeds_give_a_mean_std_table(tmp_path: Path, synth_dir: Path):
    out = tmp_path / "sweep"
    result = run_cli("train", "--data", synth_dir, "--model", "rnn", *TINY, "--seeds", "0-1", "--out", out)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1]
    assert "±" in (out / "summary.md").read_text()
    seeds = [json.loads((out / f"seed-{s}" / "metrics.json").read_text())["seed"] for s in (0, 1)]
    assert seeds == [0, 1]

    # Run again: the finished seeds are reused as they are.
    stamp = (out / "seed-0" / "metrics.json").stat().st_mtime_ns
    assert (
        run_cli(
            "train", "--data", synth_dir, "--model", "rnn", *TINY, "--seeds", "0-1", "--out", out
        ).exit_code
        == 0
    )
    assert (out / "seed-0" / "metrics.json").stat().st_mtime_ns == stamp
    # Other settings, or other data under the same name, are refused: no mixed table.
    other = run_cli("train", "--data", synth_dir, "--model", "gram", *TINY, "--seeds", "0-1", "--out", out)
    assert other.exit_code == 2 and "other settings" in other.output
    changed = tmp_path / "changed.csv"
    frame = pd.read_csv(synth_dir / "visits.csv.gz", dtype=str)
    frame.iloc[:-40].to_csv(changed, index=False)  # the last patients are gone
    sweep = json.loads((out / "seeds.json").read_text())
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    (moved / "seeds.json").write_text(
        json.dumps({**sweep, "config": {**sweep["config"], "data": str(changed)}})
    )
    result = run_cli("train", "--data", changed, "--model", "rnn", *TINY, "--seeds", "0-1", "--out", moved)
    assert result.exit_code == 2 and "other data" in result.output, result.output


@pytest.mark.parametrize(
    "content, message",
    [
        ("patient,visit,code\n1,1,4019\n1,2,4280\n", "2+ visits"),
        ("patient,visit,code\n" + "".join(f"{p},{v},ZZZ99\n" for p in range(20) for v in range(3)), "code"),
        ("who,what\n1,2\n", "column"),
    ],
)
def test_bad_data_is_one_line_exit_2_and_leaves_nothing(tmp_path: Path, content: str, message: str):
    path = tmp_path / "visits.csv"
    path.write_text(content)
    out = tmp_path / "run"
    result = run_cli("train", "--data", path, *TINY, "--out", out)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and message in result.output
    assert not out.exists()
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_threads_option_trains_with_that_many_threads_and_restores_them(
    synth_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    seen = []
    real_train = hapnet.training.trainer.train

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(torch.get_num_threads())
        return real_train(*args, **kwargs)

    monkeypatch.setattr("hapnet.training.trainer.train", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = run_cli("train", "--data", synth_dir, *TINY, "--threads", "1", "--out", tmp_path / "run")
        assert result.exit_code == 0, result.output
        assert seen == [1] and torch.get_num_threads() == 2
        result = run_cli("train", "--data", synth_dir, *TINY, "--threads", "0", "--out", tmp_path / "zero")
        assert result.exit_code == 2 and "--threads must be at least 1" in result.output
        assert not (tmp_path / "zero").exists()
    finally:
        torch.set_num_threads(before)


def test_missing_data_path_is_one_line_exit_2(tmp_path: Path):
    result = run_cli("train", "--data", tmp_path / "nope", *TINY, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_unknown_model_lists_the_registry(tmp_path: Path):
    result = run_cli("train", "--model", "transformer", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "hap" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--k", "0"], "--k must be at least 1, got 0"),
        (["--k", "-3"], "--k must be at least 1, got -3"),
        (["--device", "gpu0"], "--device 'gpu0': expected auto, cpu, cuda or cuda:N"),
    ],
)
def test_evaluate_refuses_bad_k_and_devices_in_one_line(hap_run: Path, args: list[str], message: str):
    result = run_cli("evaluate", hap_run, *args)
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_train_refuses_an_unknown_device_before_any_work(synth_dir: Path, tmp_path: Path):
    result = run_cli("train", "--data", synth_dir, *TINY[:-2], "--device", "tpu", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "--device 'tpu'" in result.output
    assert not (tmp_path / "r").exists()


def test_evaluate_on_a_folder_that_is_not_a_run(tmp_path: Path):
    result = run_cli("evaluate", tmp_path)
    assert result.exit_code == 2 and "not a hapnet run folder" in result.output


def test_evaluate_on_other_data(hap_run: Path, synth_dir: Path, tmp_path: Path):
    other = shutil.copytree(synth_dir, tmp_path / "other")
    result = run_cli("evaluate", hap_run, "--data", other, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["patients"] == 300 and "all 300 patients" in payload["scope"]
    assert "not the run's test split" in payload["scope"]
    assert "is the data run" in result.stderr  # a copy of the training data: the scores include it
