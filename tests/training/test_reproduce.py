"""`hapnet reproduce`: the paper's configurations over seeds, the table, resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import hapnet
from hapnet.cli.main import app
from hapnet.data.synth import write_synth
from hapnet.errors import HapnetError
from hapnet.training.config import differing_settings, make_config
from hapnet.training.reproduction import PAPER_CONFIGS, PUBLISHED, finished_seeds, select_configs

runner = CliRunner()
TINY = ["--epochs", "1", "--seeds", "0", "--dim", "8", "--hidden", "8", "--attention-dim", "4"]
TINY += ["--glove-epochs", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synth(tmp_path_factory.mktemp("synth") / "data", "icd9-ccs", patients=120, seed=2)


def run_cli(*args: object):  # noqa: ANN201
    return runner.invoke(app, [str(a) for a in args])


def test_the_ten_paper_configurations() -> None:
    names = "HAP, HAP (lv3), HAP (lv2), GRAM, GRAM (lv3), GRAM (lv2), RNN+, RNN, Rollup+, Rollup"
    assert [c.name for c in PAPER_CONFIGS] == names.split(", ")
    glove = {c.name for c in PAPER_CONFIGS if c.pretrain == "glove"}
    assert glove == {"HAP", "HAP (lv3)", "HAP (lv2)", "GRAM", "GRAM (lv3)", "GRAM (lv2)", "RNN+", "Rollup+"}
    assert [c.levels for c in PAPER_CONFIGS[:3]] == [None, 3, 2]
    assert set(PUBLISHED) <= {c.name for c in PAPER_CONFIGS} and PUBLISHED["HAP"][-1] == 0.3619
    assert [c.key for c in select_configs("rnn, HAP")] == ["hap", "rnn"]  # paper order
    with pytest.raises(HapnetError, match="unknown configuration lstm; valid: hap, hap-lv3"):
        select_configs("hap,lstm")


def test_reproduce_writes_the_table_and_resumes(synth_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "repro"
    result = run_cli("reproduce", "--data", synth_dir, "-o", out, "--configs", "hap,rnn", *TINY)
    assert result.exit_code == 0, result.output
    table = (out / "reproduce.md").read_text()
    assert "| HAP | " in table and "| RNN | " in table and "GRAM" not in table.split("Published")[0]
    assert "Published" in table and "0.3619" in table  # the paper's HAP row beside ours
    report = json.loads((out / "reproduce.json").read_text())
    assert list(report["configs"]) == ["hap", "rnn"] and report["seeds"] == [0]
    hap = report["configs"]["hap"]
    assert hap["pretrain"] == "glove" and hap["published"] == PUBLISHED["HAP"]
    assert 0 <= hap["summary"]["accuracy"]["mean"] <= 1 and len(hap["summary"]["accuracy_by_group"]) == 4
    config = json.loads((out / "hap" / "seed-0" / "config.json").read_text())
    config = config.get("config", config)
    assert (config["preset"], config["optimizer"], config["loss"], config["dim"]) == (
        "paper",
        "adadelta",
        "paper",
        8,
    )

    metrics = [out / key / "seed-0" / "metrics.json" for key in ("hap", "rnn")]
    stamps = [m.stat().st_mtime_ns for m in metrics]
    again = hapnet.reproduce(
        synth_dir, out, seeds=[0], configs="hap,rnn", epochs=1, dim=8, hidden=8, attention_dim=4,
        glove_epochs=1, device="cpu",
    )  # fmt: skip
    assert [m.stat().st_mtime_ns for m in metrics] == stamps  # finished runs are not repeated
    assert finished_seeds(out / "hap", [0, 1]) == [0]
    assert again["configs"]["hap"]["summary"] == hap["summary"]

    before = (out / "reproduce.md").read_text()
    other = [("16" if previous == "--dim" else arg) for previous, arg in zip(["", *TINY], TINY, strict=False)]
    changed = run_cli("reproduce", "--data", synth_dir, "-o", out, "--configs", "rnn", *other)
    assert changed.exit_code == 2 and "other settings (dim differ" in changed.output, changed.output
    assert (out / "reproduce.md").read_text() == before


def test_reproduce_refuses_a_folder_it_did_not_write(synth_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    result = run_cli("reproduce", "--data", synth_dir, "-o", tmp_path, "--configs", "rnn", *TINY)
    assert result.exit_code == 2 and "is not a reproduce folder" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
    result = run_cli("reproduce", "--data", tmp_path / "missing", "-o", tmp_path / "r", *TINY)
    assert result.exit_code == 2 and "no such file" in result.output


def test_reproduce_with_hapnet_defaults(synth_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "repro"
    result = run_cli(
        "reproduce", "--data", synth_dir, "-o", out, "--configs", "rnn", "--preset", "default", *TINY
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "rnn" / "seed-0" / "config.json").read_text())
    config = config.get("config", config)
    # hapnet's defaults differ from the paper's preset in the stopping rule and the output layer
    settings = (config["preset"], config["patience"], config["output"], config["dim"])
    assert settings == ("default", 5, "tied", 8)
    wrong = run_cli("reproduce", "--data", synth_dir, "-o", tmp_path / "r2", "--preset", "fast", *TINY)
    assert wrong.exit_code == 2 and "unknown preset 'fast'" in wrong.output
    assert not (tmp_path / "r2").exists()


def test_settings_that_matter_for_resuming_a_sweep() -> None:
    config = make_config(model="hap", dim=8)
    saved = config.to_dict()
    del saved["glove_epochs"]  # a folder written before a field existed: it counts as its default
    saved.update(device="cuda", seed=3)  # where a run computes is not a setting of the sweep
    assert differing_settings(saved, config) == []
    saved.update(dim=16, lr=0.5)
    assert differing_settings(saved, config) == ["dim", "lr"]
