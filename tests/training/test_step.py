"""One training step, eager or compiled: the same loss and gradients as the model's forward, and a
compile that fails (forward or backward) costs one warning and runs eagerly, never a crash."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import hapnet
from hapnet.cli.main import app
from hapnet.data.batches import BatchBuilder
from hapnet.data.loaders import visits_from_lists
from hapnet.data.vocabulary import Vocabulary
from hapnet.models.losses import next_visit_loss
from hapnet.models.predictor import DIAGNOSIS
from hapnet.ontology.graph import Ontology
from hapnet.training import step as step_module
from hapnet.training.config import make_config
from hapnet.training.setup import build_model
from hapnet.training.step import TrainingStep

EDGES = [("", "A"), ("", "B"), ("A", "A1"), ("A", "A2"), ("B", "B1"), ("B", "B2")]
PATIENTS = [[["A1", "B1"], ["A2"], ["B2", "A1"]], [["B1"], ["B2", "A2"]], [["A2"], ["A1"]]]


def setting(model: str = "hap") -> tuple:
    onto = Ontology.from_edges("tiny", EDGES)
    data = visits_from_lists(PATIENTS, onto)
    vocab = Vocabulary.from_nodes(np.unique(data.codes), len(onto))
    config = make_config(model=model, dim=6, hidden=5, attention_dim=3, dropout=0.0, loss="paper")
    torch.manual_seed(0)
    return (
        build_model(config, onto, vocab),
        BatchBuilder(data, vocab.code_to_class).build(np.arange(3)),
        config,
    )


def gradients(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("model_name", ["hap", "gram", "rnn"])
def test_eager_step_is_the_models_loss_and_gradients(model_name: str) -> None:
    model, batch, config = setting(model_name)
    loss = TrainingStep(model, config.loss)(batch)
    ours = gradients(model)
    model.zero_grad(set_to_none=True)
    expected = next_visit_loss(model(batch)[DIAGNOSIS], batch, config.loss)
    expected.backward()
    assert torch.equal(loss, expected)
    assert all(torch.equal(a, b) for a, b in zip(ours, gradients(model), strict=True))


def failing_compile(function, dynamic):  # noqa: ANN001, ANN201 - a stand-in for torch.compile
    def compiled(*args):  # noqa: ANN002, ANN202
        raise RuntimeError("inductor: no C++ compiler\nsecond line")

    return compiled


def test_a_failing_compile_warns_once_per_piece_and_runs_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    model, batch, config = setting()
    eager = TrainingStep(model, config.loss)(batch)
    expected = gradients(model)
    model.zero_grad(set_to_none=True)
    monkeypatch.setattr(step_module.torch, "compile", failing_compile)
    step = TrainingStep(model, config.loss, compile=True)
    with pytest.warns(UserWarning) as caught:
        loss = step(batch)
    messages = [str(w.message) for w in caught]
    assert messages == [
        "torch.compile failed for the code embedder (inductor: no C++ compiler); running it eagerly",
        "torch.compile failed for the predictor and loss (inductor: no C++ compiler); running it eagerly",
    ]
    assert torch.equal(loss, eager)
    assert all(torch.equal(a, b) for a, b in zip(gradients(model), expected, strict=True))
    model.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        step(batch)


class _FailingBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        raise RuntimeError("compiled backward failed")


def test_a_failing_compiled_backward_redoes_the_step_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    model, batch, config = setting()
    TrainingStep(model, config.loss)(batch)
    expected = gradients(model)
    model.zero_grad(set_to_none=True)

    def compile_with_broken_backward(function, dynamic):  # noqa: ANN001, ANN202
        return lambda *args: (
            _FailingBackward.apply(function(*args))
            if function.__name__ == "_predictor_loss"
            else function(*args)
        )

    monkeypatch.setattr(step_module.torch, "compile", compile_with_broken_backward)
    with pytest.warns(UserWarning, match="compiled backward failed"):
        TrainingStep(model, config.loss, compile=True)(batch)
    assert all(torch.equal(a, b) for a, b in zip(gradients(model), expected, strict=True))


@pytest.mark.slow
def test_cli_compile_trains_end_to_end(tmp_path) -> None:  # noqa: ANN001
    """A real torch.compile on this machine: whatever compiles runs compiled, the rest eagerly."""
    folder = tmp_path / "synth"
    hapnet.write_synth(folder, patients=60, seed=1)
    args = ["train", "--data", str(folder), "--epochs", "2", "--dim", "8", "--hidden", "8"]
    args += ["--attention-dim", "4", "--compile", "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    metrics = hapnet.load(tmp_path / "run").metrics
    assert np.isfinite(metrics["test"]["loss"])
