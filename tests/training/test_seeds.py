"""`train_seeds`: seeds as text or numbers, damaged files of a finished sweep refused in one line,
and a sweep that fails before any seed finished leaves nothing it created."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny import write_tiny_data

import hapnet
from hapnet.errors import HapnetError, InputError
from hapnet.training import seeds as sweeps
from hapnet.training.config import TrainConfig, make_config
from hapnet.training.runs import check_metrics
from hapnet.training.seeds import as_seeds, parse_seeds, summarize, train_seeds

SETTINGS = dict(
    model="rnn", pretrain="none", epochs=1, dim=8, hidden=8, attention_dim=4, batch_size=16, device="cpu"
)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    ontology, data = write_tiny_data(tmp_path_factory.mktemp("tiny"))
    return make_config(ontology=str(ontology), data=str(data), **SETTINGS)


@pytest.fixture(scope="module")
def sweep(config: TrainConfig, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished sweep of seeds 0 and 1, asked for as text through the library."""
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    with pytest.warns(UserWarning, match="validation split"):
        result = hapnet.train_seeds(config, "0-1", out)
    assert result.summary["seeds"] == [0, 1] and [m["seed"] for m in result.metrics] == [0, 1]
    return out


def files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- seeds
def test_seeds_as_text_or_whole_numbers() -> None:
    assert as_seeds("0-2") == [0, 1, 2] and as_seeds("0,2,5") == [0, 2, 5]
    assert as_seeds([3, 1, 3]) == [3, 1] and as_seeds((np.int64(2), 0)) == [2, 0]


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ([1.5], "seeds: 1.5 is not a whole number"),
        (["0"], "seeds: '0' is not a whole number"),
        ([True], "seeds: True is not a whole number"),
        ([2, -1], "seeds: -1 is negative"),
        ([], "seeds: no seed given"),
        (3, "seeds: expected a list of whole numbers or a text like 0-4, got 3"),
        ({0, 1}, "seeds: expected a list"),
        ("zero", "--seeds 'zero': expected a range like 0-4"),
        ("4-0", "--seeds '4-0': no seed given"),
        ("0-99999999999", "--seeds '0-99999999999': 0-99999999999 is more than 10,000 seeds"),
    ],
)
def test_other_seeds_are_refused_in_one_line(seeds: object, message: str) -> None:
    with pytest.raises(HapnetError, match=message.replace("(", r"\(").replace("+", r"\+")) as caught:
        as_seeds(seeds)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


def test_train_seeds_refuses_bad_seeds_before_creating_anything(config: TrainConfig, tmp_path: Path) -> None:
    with pytest.raises(HapnetError, match="seeds: 2.5 is not a whole number"):
        train_seeds(config, [2.5], tmp_path / "sweep")  # type: ignore[list-item]
    assert list(tmp_path.iterdir()) == []
    assert parse_seeds("3, 1,3") == [3, 1]


# ----------------------------------------------------------------------------- metrics files
def good_metrics() -> dict:
    return {
        "k": 20,
        "seed": 0,
        "best_epoch": 2,
        "test": {"accuracy": 0.5, "accuracy_by_group": [0.1, 0.2, 0.3, 0.4]},
    }


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda m: [m], "a JSON list, expected an object"),
        (lambda m: {"test": 3}, "no `test` results"),
        (lambda m: {**m, "k": "20"}, "`k` is not a whole number"),
        (lambda m: {**m, "best_epoch": True}, "`best_epoch` is not a whole number"),
        (lambda m: {k: v for k, v in m.items() if k != "seed"}, "`seed` is not a whole number"),
        (lambda m: {**m, "test": {"accuracy": 0.5}}, "`test.accuracy_by_group` is not 4 numbers"),
        (
            lambda m: {**m, "test": {**m["test"], "accuracy_by_group": [1, 2]}},
            "`test.accuracy_by_group` is not 4 numbers",
        ),
        (lambda m: {**m, "test": {**m["test"], "accuracy": None}}, "`test.accuracy` is not a number"),
        (
            lambda m: {**m, "test": {**m["test"], "tasks": {"level1": 3}}},
            "`test.tasks` is not a score table per task",
        ),
    ],
)
def test_metrics_of_the_wrong_shape_are_refused(change, problem: str) -> None:  # noqa: ANN001
    assert check_metrics("m.json", good_metrics()) == good_metrics()
    nan_groups = {**good_metrics(), "test": {"accuracy": 0.5, "accuracy_by_group": [float("nan")] * 4}}
    assert check_metrics("m.json", nan_groups) is nan_groups  # an empty group's accuracy is NaN
    with pytest.raises(InputError) as caught:
        check_metrics("run/metrics.json", change(good_metrics()))
    assert str(caught.value) == f"run/metrics.json: not a hapnet metrics file ({problem})"


def test_runs_with_different_tasks_make_no_table() -> None:
    with_tasks = good_metrics()
    with_tasks["test"] = {**with_tasks["test"], "tasks": {"level1": {"accuracy": 0.5, "loss": 1.0}}}
    assert summarize([with_tasks, with_tasks])["tasks"]["level1"]["accuracy"]["mean"] == 0.5
    with pytest.raises(HapnetError, match="different auxiliary tasks"):
        summarize([with_tasks, good_metrics()])


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "Expecting property name"),
        ("[]", "a JSON list, expected an object"),
        ('{"test": 3}', "no `test` results"),
    ],
)
def test_a_damaged_metrics_file_of_a_finished_seed_is_one_line(
    sweep: Path, config: TrainConfig, tmp_path: Path, content: str, problem: str
) -> None:
    out = tmp_path / "sweep"
    shutil.copytree(sweep, out)
    (out / "seed-1" / "metrics.json").write_text(content)
    before = files(out)
    with pytest.raises(HapnetError) as caught:
        train_seeds(config, [0, 1], out)
    message = str(caught.value)
    assert message.startswith(f"{out / 'seed-1' / 'metrics.json'}: not a hapnet metrics file (")
    assert problem in message and message.endswith("use --force to train the sweep again")
    assert files(out) == before  # refused before anything was written


def test_a_damaged_sweep_manifest_is_one_line(sweep: Path, config: TrainConfig, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    shutil.copytree(sweep, out)
    for text, why in (
        ('["not", "a", "manifest"]', "a JSON list, expected an object"),
        ('{"config": 3}', "no `config` object"),
    ):
        (out / "seeds.json").write_text(text)
        with pytest.raises(
            InputError, match=rf"seeds.json: not a hapnet seed sweep manifest \({why}\); use --force"
        ):
            train_seeds(config, [0, 1], out)


def test_finished_seeds_are_reused_and_force_trains_again(
    sweep: Path, config: TrainConfig, tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    shutil.copytree(sweep, out)
    (out / "seed-0" / "metrics.json").write_text("{broken")
    kept = (out / "seed-1" / "metrics.json").read_bytes()
    with pytest.warns(UserWarning, match="validation split"):
        result = train_seeds(config, "0", out, force=True)
    assert result.metrics[0]["seed"] == 0 and json.loads((out / "seed-0" / "metrics.json").read_text())
    assert (out / "seed-1" / "metrics.json").read_bytes() == kept  # not in this sweep: untouched


# ----------------------------------------------------------------------------- failures
@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_a_sweep_that_fails_before_any_seed_leaves_nothing_it_created(
    config: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    def fail(*args, **kwargs):  # noqa: ANN002, ANN003
        raise error

    monkeypatch.setattr(sweeps, "train", fail)
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(type(error)):
        train_seeds(config, [0, 1], tmp_path / "new" / "deeper" / "sweep")
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]  # new/ and below: gone


def test_a_failed_sweep_keeps_what_was_there_and_what_can_resume(
    sweep: Path, config: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "sweep"
    shutil.copytree(sweep, out)

    def interrupted(seed_config: TrainConfig, out: Path, **kwargs) -> None:  # noqa: ANN003
        partial = out.parent / f".{out.name}.partial"  # an epoch was checkpointed, then Ctrl-C
        partial.mkdir()
        (partial / "resume.pt").write_bytes(b"state")
        raise KeyboardInterrupt

    monkeypatch.setattr(sweeps, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_seeds(config, [0, 1, 2], out)  # the folder existed: nothing of it is removed
    assert (out / "seed-0" / "metrics.json").is_file() and (out / ".seed-2.partial" / "resume.pt").is_file()
    new = tmp_path / "new"
    with pytest.raises(KeyboardInterrupt):
        train_seeds(config, [5], new)  # a new folder, but seed 5 can resume: kept
    assert (new / ".seed-5.partial" / "resume.pt").is_file() and (new / "seeds.json").is_file()


def test_a_sweep_under_a_file_is_refused_before_training(config: TrainConfig, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="notes.txt is a file, not a folder"):
        train_seeds(config, [0], tmp_path / "notes.txt" / "sweep")
    with pytest.raises(InputError, match="notes.txt: is a file, not a folder"):
        train_seeds(config, [0], tmp_path / "notes.txt", force=True)  # --force never replaces a file
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
