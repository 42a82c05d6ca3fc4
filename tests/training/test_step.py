"""One training step, eager or compiled: the model's loss, its gradients and the optimiser's update;
a compile that fails (forward, backward or update) costs one warning per piece and runs eagerly,
never a crash."""

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
from hapnet.training.optim import make_optimizer
from hapnet.training.setup import build_model
from hapnet.training.step import TrainingStep

EDGES = [("", "A"), ("", "B"), ("A", "A1"), ("A", "A2"), ("B", "B1"), ("B", "B2")]
PATIENTS = [[["A1", "B1"], ["A2"], ["B2", "A1"]], [["B1"], ["B2", "A2"]], [["A2"], ["A1"]]]


def setting(model: str = "hap", optimizer: str = "adadelta") -> tuple:
    """The same model (seeded), its optimiser, a batch of 3 patients and the config, every call."""
    onto = Ontology.from_edges("tiny", EDGES)
    data = visits_from_lists(PATIENTS, onto)
    vocab = Vocabulary.from_nodes(np.unique(data.codes), len(onto))
    config = make_config(
        model=model, dim=6, hidden=5, attention_dim=3, dropout=0.0, loss="paper", optimizer=optimizer, lr=0.5
    )
    torch.manual_seed(0)
    model = build_model(config, onto, vocab)
    batch = BatchBuilder(data, vocab.code_to_class).build(np.arange(3))
    return model, make_optimizer(config, model), batch, config


def parameters(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def same(first: list[torch.Tensor], second: list[torch.Tensor]) -> bool:
    return all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


@pytest.mark.parametrize("model_name", ["hap", "gram", "rnn"])
def test_eager_step_is_the_models_loss_gradient_and_update(model_name: str) -> None:
    """With plain SGD (lr 0.5) the update is p - 0.5 * dloss/dp, the loss the model's forward."""
    model, _, batch, config = setting(model_name)
    before = parameters(model)
    expected = next_visit_loss(model(batch)[DIAGNOSIS], batch, config.loss)
    grads = torch.autograd.grad(expected, list(model.parameters()), allow_unused=True)
    loss = TrainingStep(model, torch.optim.SGD(model.parameters(), lr=0.5), config.loss)(batch)
    assert torch.equal(loss, expected)
    for new, old, grad in zip(model.parameters(), before, grads, strict=True):
        assert torch.allclose(new, old if grad is None else old - 0.5 * grad)


def test_a_non_finite_loss_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    model, optimizer, batch, config = setting()
    before = parameters(model)
    nan = torch.tensor(float("nan"))
    monkeypatch.setattr(step_module, "multi_task_loss", lambda *args: (nan, nan))
    loss = TrainingStep(model, optimizer, config.loss)(batch)
    assert loss.isnan() and same(parameters(model), before)


def failing_compile(function, dynamic):  # noqa: ANN001, ANN201 - a stand-in for torch.compile
    def compiled(*args):  # noqa: ANN002, ANN202
        raise RuntimeError("inductor: no C++ compiler\nsecond line")

    return compiled


def test_a_failing_compile_warns_once_per_piece_and_runs_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    model, optimizer, batch, config = setting()
    eager = TrainingStep(model, optimizer, config.loss)(batch)
    expected = parameters(model)
    monkeypatch.setattr(step_module.torch, "compile", failing_compile)
    model, optimizer, batch, config = setting()
    step = TrainingStep(model, optimizer, config.loss, compile=True)
    with pytest.warns(UserWarning) as caught:
        loss = step(batch)
    assert [str(w.message) for w in caught] == [
        f"torch.compile failed for the {piece} (inductor: no C++ compiler); running it eagerly"
        for piece in ("code embedder", "predictor and loss", "optimiser update")
    ]
    assert torch.equal(loss, eager) and same(parameters(model), expected)
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
    model, optimizer, batch, config = setting()
    TrainingStep(model, optimizer, config.loss)(batch)
    expected = parameters(model)

    def compile_with_broken_backward(function, dynamic):  # noqa: ANN001, ANN202
        if getattr(function, "__name__", "") != "_predictor_loss":
            return function
        return lambda *args: tuple(_FailingBackward.apply(t) for t in function(*args))

    monkeypatch.setattr(step_module.torch, "compile", compile_with_broken_backward)
    model, optimizer, batch, config = setting()
    with pytest.warns(UserWarning, match="compiled backward failed"):
        TrainingStep(model, optimizer, config.loss, compile=True)(batch)
    assert same(parameters(model), expected)


@pytest.mark.slow
def test_cli_compile_trains_end_to_end(tmp_path) -> None:  # noqa: ANN001
    """A real torch.compile on this machine: whatever compiles runs compiled, the rest eagerly."""
    folder = tmp_path / "synth"
    hapnet.write_synth(folder, patients=60, seed=1)
    args = ["train", "--data", str(folder), "--epochs", "2", "--dim", "8", "--hidden", "8"]
    args += ["--attention-dim", "4", "--preset", "paper", "--compile"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    metrics = hapnet.load(tmp_path / "run").metrics
    assert np.isfinite(metrics["test"]["loss"])
