"""A run folder is self-contained: it keeps the ontology and the split it trained on, so that
evaluate/predict/explain never depend on files that changed since, and never score other patients
or other codes silently."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import build_tiny_run, hapnet

import hapnet as lib
from hapnet.data.splits import split_patients
from hapnet.errors import HapnetError


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("selfcontained")


@pytest.fixture(scope="module")
def run(folder: Path) -> Path:
    return build_tiny_run(folder, "hap", quiet=True)


def copy_run(run: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """The run and its input files copied, with the copied run's config pointing at the copies."""
    ontology = shutil.copy(run.parent / "tiny_ontology.csv", tmp_path / "tiny_ontology.csv")
    data = shutil.copy(run.parent / "visits.csv", tmp_path / "visits.csv")
    copied = shutil.copytree(run, tmp_path / "run")
    config = json.loads((copied / "config.json").read_text())
    config.update(ontology=str(ontology), data=str(data))
    (copied / "config.json").write_text(json.dumps(config))
    return copied, Path(ontology), Path(data)


def test_the_run_keeps_its_ontology_and_split(run: Path):
    assert (run / "ontology.npz").is_file() and (run / "split.csv").is_file()
    loaded = lib.load(run)
    config = json.loads((run / "config.json").read_text())
    assert loaded.ontology.fingerprint() == config["ontology_fingerprint"]
    assert loaded.ontology.ids == lib.load_ontology(run.parent / "tiny_ontology.csv").ids
    split = pd.read_csv(run / "split.csv", dtype=str)
    metrics = json.loads((run / "metrics.json").read_text())
    assert split["split"].value_counts().to_dict() == metrics["split"]
    # the saved test patients are the seed's split of the data, by id
    visits = lib.load_visits(run.parent / "visits.csv", loaded.ontology)
    test = visits.patient_ids[split_patients(len(visits.patient_ids), loaded.config.seed).test]
    assert sorted(split.loc[split["split"] == "test", "patient_id"]) == sorted(test)


def test_evaluate_refuses_data_that_gained_patients(run: Path, tmp_path: Path):
    copied, _, data = copy_run(run, tmp_path)
    assert hapnet("evaluate", copied, "--json").exit_code == 0
    with data.open("a") as handle:
        handle.write("new1,x1,A11\nnew1,x2,A12\nnew2,x3,B11\nnew2,x4,B12\n")
    result = hapnet("evaluate", copied)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "the data changed since run" in result.output and f"--data {data}" in result.output
    # an explicit --data scores every patient of it and says so
    result = hapnet("evaluate", copied, "--data", data, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["patients"] == 62 and "not the run's test split" in payload["scope"]


def test_evaluate_refuses_data_with_new_codes_instead_of_crashing(run: Path, tmp_path: Path):
    copied, ontology, data = copy_run(run, tmp_path)
    with ontology.open("a") as handle:
        handle.write("A14,A1,Code A14\n")
    with data.open("a") as handle:  # A14: in the updated ontology file, not in the run's vocabulary
        handle.write("new1,x1,A14\nnew1,x1,A11\nnew1,x2,A14\nnew1,x2,B11\n")
    result = hapnet("evaluate", copied)
    assert result.exit_code == 2 and "the data changed" in result.output
    result = hapnet("evaluate", copied, "--data", data, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["patients"] == 61 and payload["codes_outside_vocabulary"] == 0
    # A14 is unknown to the run's own ontology: dropped and reported (the file's A1 prefix is 2 chars)
    assert dict(payload["data"])["source rows exact / mapped / unknown"] == "489 / 0 / 2"


def test_a_reordered_ontology_file_changes_nothing(run: Path, tmp_path: Path):
    """Node indices follow the file's rows: the run uses its own copy of the ontology."""
    copied, ontology, _ = copy_run(run, tmp_path)
    header, *rows = ontology.read_text().splitlines()
    ontology.write_text("\n".join([header, *reversed(rows)]) + "\n")
    assert lib.load_ontology(ontology).ids != lib.load(copied).ontology.ids  # the file did change
    with torch.no_grad():
        vectors = lib.load(copied).model.code_embeddings().numpy()
    assert np.allclose(vectors, np.load(copied / "code_embeddings.npy"), atol=1e-6)
    before = json.loads((run / "metrics.json").read_text())["test"]["accuracy"]
    result = hapnet("evaluate", copied, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["test"]["accuracy"] == pytest.approx(before, abs=1e-9)


def test_a_run_from_before_the_saved_ontology_names_a_changed_ontology(run: Path, tmp_path: Path):
    copied, _, _ = copy_run(run, tmp_path)
    (copied / "ontology.npz").unlink()
    config = json.loads((copied / "config.json").read_text())
    config["ontology"] = "icd9cm"  # another built-in ontology: its codes are not the run's
    (copied / "config.json").write_text(json.dumps(config))
    result = hapnet("evaluate", copied)
    assert result.exit_code == 2 and "the ontology differs" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_evaluating_on_the_training_data_explicitly_warns(run: Path):
    result = hapnet("evaluate", run, "--data", run.parent / "visits.csv")
    assert result.exit_code == 0, result.output
    assert "is the data run" in result.output and "training" in result.output


@pytest.mark.parametrize("name", ["checkpoint.pt", "ontology.npz"])
def test_a_pickle_in_place_of_a_run_file_is_refused_and_never_run(run: Path, tmp_path: Path, name: str):
    copied, _, _ = copy_run(run, tmp_path)
    marker = tmp_path / "pwned"
    payload = f"cos\nsystem\n(S'touch {marker}'\ntR."  # os.system("touch ...") when unpickled
    (copied / name).write_bytes(payload.encode())
    result = hapnet("evaluate", copied)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "not a hapnet" in result.output and not marker.exists()


def test_a_checkpoint_of_another_run_is_refused(run: Path, folder: Path, tmp_path: Path):
    other = build_tiny_run(folder, "gram", quiet=True)
    copied, _, _ = copy_run(run, tmp_path)
    shutil.copy(other / "checkpoint.pt", copied / "checkpoint.pt")
    with pytest.raises(HapnetError, match="does not match the run's model"):
        lib.load(copied)


def test_a_small_validation_split_is_warned_about(run: Path, folder: Path, tmp_path: Path):
    result = hapnet(
        "train", "--ontology", folder / "tiny_ontology.csv", "--data", folder / "visits.csv",
        "--epochs", "1", "--dim", "8", "--hidden", "8", "--attention-dim", "4", "--device", "cpu",
        "--out", tmp_path / "r",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "the validation split has 6 patients" in result.output
    assert "nan" not in result.output.lower().replace("nanosec", "")


def test_an_undefined_score_shows_a_dash_not_nan():
    from rich.console import Console

    from hapnet.cli.display import metrics_table

    nan = float("nan")
    metrics = {"k": 20, "valid": {"accuracy_by_group": [nan, 0.5, 0.25, 1.0], "accuracy": 0.5, "loss": 3.0}}
    console = Console(record=True, width=200)
    console.print(metrics_table(metrics, "t"))
    row = next(line for line in console.export_text().splitlines() if "valid" in line)
    assert row.split("│")[2].strip() == "–" and "nan" not in row and "0.5000" in row
