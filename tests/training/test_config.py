"""Settings have one source: the CLI's defaults are the library's, and the torch-free choice
tuples the CLI reads equal the ones the models implement."""

from __future__ import annotations

import inspect
import typing

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import hapnet
from hapnet.cli import embed as cli_embed
from hapnet.cli import train as cli_train
from hapnet.cli.main import app
from hapnet.data.batches import BatchBuilder
from hapnet.data.loaders import visits_from_lists
from hapnet.embeddings.config import EmbedConfig
from hapnet.errors import HapnetError
from hapnet.models import losses
from hapnet.ontology.graph import Ontology
from hapnet.training import config


def test_loss_choices_are_the_implemented_losses() -> None:
    assert config.LOSSES == losses.LOSSES
    onto = Ontology.from_edges("t", [("", "A"), ("A", "A1"), ("A", "A2")])
    data = visits_from_lists([[["A1"], ["A2", "A1"]]], onto)
    batch = BatchBuilder(data, np.arange(len(onto))).build(np.array([0]))
    for kind in config.LOSSES:  # each choice runs, and the loss is finite
        assert torch.isfinite(losses.next_visit_loss(torch.zeros(1, len(onto)), batch, kind))
    with pytest.raises(ValueError, match="unknown loss"):
        losses.next_visit_loss(torch.zeros(1, len(onto)), batch, "hinge")
    with pytest.raises(HapnetError, match="--loss"):
        config.make_config(loss="hinge")


def test_cli_train_defaults_are_train_configs() -> None:
    defaults = config.TrainConfig()
    parameters = inspect.signature(cli_train.train).parameters
    checked = 0
    for name, parameter in parameters.items():
        if hasattr(defaults, name) and parameter.default is not None:
            assert parameter.default == getattr(defaults, name), name
            checked += 1
    assert checked >= 7  # ontology, model, pretrain, seed, k, device, compile, unknown
    # options left None are filled by the config: the paper preset still applies to them
    assert all(parameters[name].default is None for name in ("epochs", "lr", "optimizer", "loss", "dim"))


def test_cli_embed_shows_the_library_defaults() -> None:
    option = typing.get_type_hints(cli_embed.embed, include_extras=True)["dim"].__metadata__[0]
    assert f"default {EmbedConfig().dim}" in option.help


def test_train_help_shows_each_default_and_the_papers_value() -> None:
    """Help texts are rich markup: a default written in [brackets] would vanish from the help."""
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    paper = config.PRESETS["paper"]
    defaults = config.TrainConfig()
    for option in ("patience", "output"):
        assert f"(default {getattr(defaults, option)}; --preset paper: {paper[option]})" in text, option
    assert f"(default {defaults.dim})" in text  # the same in both
    assert f"(default {defaults.optimizer})" in text


def test_unknown_settings_are_refused_with_the_closest_name() -> None:
    with pytest.raises(HapnetError, match=r"unknown setting 'epoch' \(did you mean 'epochs'\?\)"):
        hapnet.train(epoch=1)
    with pytest.raises(HapnetError, match="for several seeds use hapnet.train_seeds"):
        hapnet.train(seeds="0-1")
    with pytest.raises(HapnetError, match="unknown setting 'colour'"):
        config.make_config(colour="red")


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"lr": float("inf")}, "--lr must be a positive number, got inf"),
        ({"lr": float("nan")}, "--lr must be a positive number, got nan"),
        ({"seed": -1}, "--seed must be 0 or more, got -1"),
    ],
)
def test_settings_no_run_can_use_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(HapnetError, match=message):
        config.make_config(**settings)
