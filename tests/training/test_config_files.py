"""`--config FILE` (TOML, YAML, JSON; a run's config.json as it is) for train, reproduce and embed:
the file's settings, overridden by what is typed, never by a default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import build_tiny_run, hapnet, write_tiny_data

import hapnet as lib
from hapnet.errors import InputError
from hapnet.training import reproduction
from hapnet.training.config import TrainConfig, make_config
from hapnet.utils.settings_files import read_settings

SETTINGS = {"model": "gram", "epochs": 2, "lr": 0.5, "aux_levels": [1, 2], "dropout": 0.1}
TEXTS = {
    "s.toml": 'model = "gram"\nepochs = 2\nlr = 0.5\naux_levels = [1, 2]\ndropout = 0.1\n',
    "s.yaml": "model: gram\nepochs: 2\nlr: 0.5\naux_levels: [1, 2]\ndropout: 0.1\n",
    "s.json": json.dumps(SETTINGS),
}


@pytest.mark.parametrize("name", TEXTS)
def test_the_three_formats_read_the_same(name: str, tmp_path: Path):
    path = tmp_path / name
    path.write_text(TEXTS[name])
    assert read_settings(path) == SETTINGS
    config = make_config(config_file=path, epochs=3)  # keywords override the file
    assert (config.model, config.epochs, config.lr, config.aux_levels) == ("gram", 3, 0.5, [1, 2])


def test_relative_paths_are_the_files_folder(tmp_path: Path):
    ontology, data = write_tiny_data(tmp_path / "d")
    (tmp_path / "d" / "s.toml").write_text('data = "visits.csv"\nontology = "tiny_ontology.csv"\n')
    config = make_config(config_file=tmp_path / "d" / "s.toml")
    assert Path(config.data) == data.resolve() and Path(config.ontology) == ontology.resolve()


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.toml", "lr = [\n", "not valid TOML"),
        ("bad.yaml", "lr: 1\n  x: [\n", "bad.yaml, line 2: not valid YAML"),
        ("bad.json", '{"lr": 1,\n "x": }', "bad.json, line 2: not valid JSON"),
        ("list.json", "[1, 2]", "expected a table of settings, got a list"),
        ("typo.toml", "epoch = 3\n", "unknown setting 'epoch' (did you mean 'epochs'?)"),
        ("s.ini", "lr = 1\n", "settings files are .json, .toml, .yaml, .yml; got .ini"),
        ("obj.yaml", "lr: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ],
)
def test_bad_settings_files_are_one_line(name: str, text: str, message: str, tmp_path: Path):
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError) as caught:
        make_config(config_file=tmp_path / name)
    assert message in str(caught.value) and len(str(caught.value).splitlines()) == 1
    result = hapnet("train", "--config", tmp_path / name)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_run(tmp_path_factory.mktemp("cfg"), "hap", k=10, quiet=True)


def test_a_runs_config_json_trains_the_same_run_again(run: Path, tmp_path: Path):
    result = hapnet("train", "--config", run / "config.json", "--seed", "4", "-o", tmp_path / "again")
    assert result.exit_code == 0, result.output
    before = json.loads((run / "config.json").read_text())
    after = json.loads((tmp_path / "again" / "config.json").read_text())
    # typed: seed; from the file, not the CLI's defaults: k 10 (default 20), device cpu (default auto)
    assert {key for key in before if before[key] != after.get(key)} == {"seed"}
    assert after["k"] == 10 and after["device"] == "cpu" and after["seed"] == 4


def test_the_library_takes_a_settings_file(run: Path):
    result = lib.train(run / "config.json", epochs=1, quiet=True)
    saved = json.loads((run / "config.json").read_text())
    assert result.config == TrainConfig.from_saved({**saved, "epochs": 1})


def test_embed_reads_its_settings_file(tmp_path: Path):
    ontology, _ = write_tiny_data(tmp_path)
    (tmp_path / "e.yaml").write_text("dim: 12\nepochs: 2\nseed: 3\n")
    out = tmp_path / "e.npy"
    result = hapnet("embed", ontology, "--config", tmp_path / "e.yaml", "--epochs", "1", "-o", out)
    assert result.exit_code == 0, result.output
    table = lib.read_embeddings(out)
    assert table.vectors.shape[1] == 12
    (tmp_path / "bad.yaml").write_text("dims: 12\n")
    result = hapnet("embed", ontology, "--config", tmp_path / "bad.yaml", "-o", tmp_path / "x.npy")
    assert result.exit_code == 2 and "unknown setting 'dims' (did you mean 'dim'?)" in result.output


def test_reproduce_reads_its_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    seen = {}

    def fake_reproduce(**settings):  # noqa: ANN003, ANN202 - records what the CLI passes
        seen.update(settings)
        return {"markdown": "table"}

    monkeypatch.setattr(reproduction, "reproduce", fake_reproduce)
    (tmp_path / "r.toml").write_text('data = "mimic"\nseeds = "0-2"\nconfigs = "hap,rnn"\nepochs = 7\n')
    result = hapnet("reproduce", "--config", tmp_path / "r.toml", "--epochs", "3", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert seen["data"] == "mimic" and seen["seeds"] == "0-2" and seen["configs"] == "hap,rnn"
    assert seen["epochs"] == 3 and "preset" not in seen  # typed wins; the rest: the library's defaults
    (tmp_path / "n.toml").write_text("epochs = 7\n")
    result = hapnet("reproduce", "--config", tmp_path / "n.toml")
    assert result.exit_code == 2 and "give the data with --data" in result.output
