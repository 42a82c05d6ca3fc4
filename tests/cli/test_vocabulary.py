"""One vocabulary across the CLI and the library (issue #22): `-k/--k` for every count of results,
refused below 1 in one line; every option of every command documented, with its default, and
every boolean a flag; `help(hapnet)` lists the public API and every public name has a docstring."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import typer
from tiny import build_tiny_run
from typer.testing import CliRunner

import hapnet
from hapnet.cli.main import app
from hapnet.cli.train import presets_help
from hapnet.embeddings.formats import EmbeddingTable, write_embeddings
from hapnet.perf.settings import BENCH_DEFAULTS
from hapnet.training.config import PRESETS

runner = CliRunner()
K_COMMANDS = ("train", "evaluate", "predict", "explain", "neighbors")
# Shared options whose help lives in cli/common.py; it should name the default too (issue #22).
DEFAULT_PENDING = {"--columns"}


def commands(group: typer.core.TyperGroup | None = None, path: tuple[str, ...] = ()) -> Iterator:
    """(command path, click command) of every command, sub-apps (`ontology`) walked into."""
    group = group or typer.main.get_command(app)
    for name, command in group.commands.items():
        if isinstance(command, typer.core.TyperGroup):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


ALL = dict(commands())


def test_every_command_is_walked() -> None:
    names = {" ".join(path) for path in ALL}
    assert {*K_COMMANDS, "embed", "bench", "reproduce", "synth", "ontology show", "ontology list"} <= names


@pytest.mark.parametrize("path", list(ALL), ids=" ".join)
def test_help_documents_every_option_with_its_default_and_flags_as_flags(path: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert not re.search(r"\bBOOL(EAN)?\b", result.output), result.output
    assert "[default: None]" not in result.output and "(default None)" not in result.output
    for param in ALL[path].params:
        label = "/".join(param.opts) or param.name
        assert (param.help or "").strip(), f"{' '.join(path)} {label}: no help text"
        if param.param_type_name != "option":
            continue
        if param.type_descriptor.annotation is bool:  # a flag: takes no value
            assert param.is_flag, f"{' '.join(path)} {label}: a boolean that takes a value"
            continue
        shown = param.default is not None and param.show_default
        if not (param.required or shown or set(param.opts) & DEFAULT_PENDING):
            assert "default" in param.help.lower(), f"{' '.join(path)} {label}: default not shown"


def test_the_number_of_results_is_k_everywhere() -> None:
    for name in K_COMMANDS:
        options = {opt for param in ALL[(name,)].params for opt in param.opts}
        assert {"-k", "--k"} <= options and "--top" not in options, name
    assert not any("--top" in param.opts for command in ALL.values() for param in command.params)
    for function in (hapnet.predict_next_visit, hapnet.evaluate, hapnet.neighbors):
        assert (
            "k" in inspect.signature(function).parameters
            and "top" not in inspect.signature(function).parameters
        )
    from hapnet.inspect.explain import Explanation

    assert list(inspect.signature(Explanation.as_dict).parameters) == ["self", "k"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_run(tmp_path_factory.mktemp("tiny"), "rnn")


@pytest.mark.parametrize("command", K_COMMANDS)
@pytest.mark.parametrize("k", ["0", "-2"])
def test_k_below_one_is_refused_in_one_line(command: str, k: str, run_dir: Path, tmp_path: Path) -> None:
    table = tmp_path / "e.csv"
    write_embeddings(EmbeddingTable(codes=["A", "B", "C"], vectors=np.eye(3, dtype=np.float32)), table)
    args = {
        "train": ["--out", tmp_path / "run", "--device", "cpu"],
        "evaluate": [run_dir, "--device", "cpu"],
        "predict": [run_dir, "--history", "A11", "--device", "cpu"],
        "explain": [run_dir, "A11", "--device", "cpu"],
        "neighbors": [table, "A"],
    }[command]
    result = runner.invoke(app, [command, *map(str, args), "--k", k])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --k must be at least 1"), result.stderr
    if command != "train":
        assert f"got {k}" in lines[0]
    assert not (tmp_path / "run").exists()


def test_preset_help_is_generated_from_presets() -> None:
    text = presets_help()
    for name, settings in PRESETS.items():
        assert f"{name}: " in text
        for key, value in settings.items():
            shown = ",".join(map(str, value)) or "none" if isinstance(value, list) else str(value)
            assert f"{key} {shown}" in text, key
    assert "[" not in text  # rich would read [..] as markup and drop it


def test_bench_help_shows_the_library_defaults() -> None:
    """The torch-free defaults the help shows are the ones the function has."""
    signature = inspect.signature(hapnet.bench).parameters
    assert all(signature[name].default == value for name, value in BENCH_DEFAULTS.items())
    text = " ".join(p.help for p in ALL[("bench",)].params if p.help)
    assert f"(default {BENCH_DEFAULTS['repeats']})" in text and f"(default {BENCH_DEFAULTS['clock']})" in text


def test_dim_help_says_why_embed_and_train_differ() -> None:
    train = next(p for p in ALL[("train",)].params if p.name == "dim").help
    embed = next(p for p in ALL[("embed",)].params if p.name == "dim").help
    assert "paper" in train and f"default {hapnet.TrainConfig().dim}" in train
    assert "reconstruction" in embed and f"default {hapnet.EmbedConfig().dim}" in embed


def test_predict_and_explain_default_to_the_device_evaluate_uses() -> None:
    def device(name: str) -> str:
        return next(p for p in ALL[(name,)].params if p.name == "device").default

    assert device("predict") == device("explain") == device("evaluate") == hapnet.TrainConfig().device


# ----------------------------------------------------------------------------- help(hapnet)
def test_module_docstring_lists_every_public_name() -> None:
    listed = {line.split()[0] for line in hapnet.__doc__.splitlines() if line.startswith("    ")}
    missing = [name for name in hapnet.__all__ if name not in listed]
    assert not missing, f"not in hapnet's docstring: {missing}"


@pytest.mark.parametrize("name", hapnet.__all__)
def test_every_public_name_has_its_own_docstring(name: str) -> None:
    value = getattr(hapnet, name)
    if not (inspect.isclass(value) or callable(value)):
        return  # data (BUILTINS, MODELS, PAPER_CONFIGS): described in the module docstring
    doc = value.__dict__.get("__doc__") if inspect.isclass(value) else value.__doc__
    assert doc and doc.strip(), name
    assert not doc.startswith(f"{value.__name__}("), f"{name}: only the dataclass signature"


def test_lazy_names_come_from_the_module_named() -> None:
    for name, module in hapnet._LAZY.items():
        assert getattr(importlib.import_module(module), name) is getattr(hapnet, name)
