"""The naive reference port (hapnet.perf.naive) against our models in float64, and `hapnet bench`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from testdata import ONTOLOGY_FILES
from typer.testing import CliRunner

import hapnet
from hapnet.cli.main import app
from hapnet.data.batches import BatchBuilder
from hapnet.data.loaders import visits_from_lists
from hapnet.data.vocabulary import Vocabulary
from hapnet.models.embedder import EmbedderConfig
from hapnet.models.gram import GRAMEmbedder
from hapnet.models.hap import HAPEmbedder
from hapnet.models.losses import next_visit_loss
from hapnet.models.predictor import DIAGNOSIS, NextVisitModel
from hapnet.ontology.graph import Ontology
from hapnet.ontology.hierarchy import Hierarchy, Step
from hapnet.perf.flops import attention_step_flops, propagation_flops
from hapnet.perf.naive import (
    NaiveGRAM,
    NaiveHAP,
    NaiveNextVisitModel,
    naive_loss,
    pad_matrix,
    padded_candidates,
)

CCS_SMALL = ONTOLOGY_FILES / "ccs_small.csv"
SMALL = EmbedderConfig(dim=6, attention_dim=4, init_std=1.0)
runner = CliRunner()


def small_dag() -> Ontology:
    """Fan-ins 1 to 4 per level, a node with two parents (X9), a level gap (D4 hangs at level 2)."""
    edges = [("", "A"), ("", "B"), ("A", "A1"), ("A", "A2"), ("B", "B1"), ("B", "D4")]
    edges += [("A1", "A11"), ("A1", "B22"), ("A1", "C33"), ("A1", "X9"), ("A2", "X9"), ("A2", "E5")]
    edges += [("B1", "F6")]
    return Ontology.from_edges("small", edges)


def test_padded_candidates_by_hand() -> None:
    # targets 10, 11; candidates: self first, then 10 <- 3, 4 and 11 <- 5 (edges given interleaved)
    step = Step(
        level=1,
        targets=np.array([10, 11]),
        edge_target=np.array([0, 1, 0, 1, 0]),
        edge_source=np.array([10, 11, 3, 5, 4]),
    )
    targets, nodes, mask = padded_candidates(step)
    assert targets.tolist() == [10, 11]
    assert nodes.tolist() == [[10, 3, 4], [11, 5, 0]]
    assert mask.tolist() == [[True, True, True], [True, True, False]]


@pytest.mark.parametrize("levels", [None, 3, 2])
@pytest.mark.parametrize(("ours_class", "naive_class"), [(HAPEmbedder, NaiveHAP), (GRAMEmbedder, NaiveGRAM)])
def test_naive_embeddings_and_gradients_equal_ours(levels, ours_class, naive_class) -> None:  # noqa: ANN001
    onto = small_dag()
    hierarchy = Hierarchy.from_ontology(onto.truncate(levels))
    vocab = np.array([onto.index(c) for c in ["X9", "A11", "D4", "F6", "E5", "B1"]])
    torch.manual_seed(0)
    ours = ours_class(hierarchy, vocab, SMALL).double()
    naive = naive_class(hierarchy, vocab, SMALL).double()
    naive.load_from(ours)
    g, g_naive = ours(), naive()
    assert torch.allclose(g, g_naive)
    assert not torch.allclose(g, ours.base.weight[torch.from_numpy(vocab)])  # attention did something
    weights = torch.randn_like(g)
    (grad,) = torch.autograd.grad((g * weights).sum(), ours.base.weight)
    (grad_naive,) = torch.autograd.grad((g_naive * weights).sum(), naive.base.weight)
    assert torch.allclose(grad, grad_naive)


@pytest.mark.parametrize("name", ["hap", "gram"])
def test_naive_model_gives_our_logits_loss_and_gradients(name: str) -> None:
    onto = small_dag()
    patients = [
        [["A11", "X9"], ["D4"], ["E5", "F6", "A11"]],
        [["F6"], ["X9", "C33"]],
        [["B22", "C33", "D4"], ["A11"], ["E5"], ["X9", "F6"]],
    ]
    data = visits_from_lists(patients, onto)
    vocab = Vocabulary.from_nodes(np.unique(data.codes), len(onto))
    hierarchy = Hierarchy.from_ontology(onto)
    embedders = {"hap": (HAPEmbedder, NaiveHAP), "gram": (GRAMEmbedder, NaiveGRAM)}[name]
    torch.manual_seed(1)
    ours = NextVisitModel(embedders[0](hierarchy, vocab.nodes, SMALL), len(vocab), 6, 5, 0.4).double().eval()
    naive = NaiveNextVisitModel(embedders[1](hierarchy, vocab.nodes, SMALL), len(vocab), 6, 5, 0.4)
    naive.double().eval()
    naive.load_from(ours)

    chosen = np.arange(data.num_patients)
    batch = BatchBuilder(data, vocab.code_to_class).build(chosen)
    x, y, mask = pad_matrix(data, vocab.code_to_class, chosen, len(vocab))
    assert x.shape == (3, 3, 7) and mask.sum() == batch.num_steps == 6
    logits = ours(batch)[DIAGNOSIS]
    naive_logits = naive(x.double())
    assert torch.allclose(logits, naive_logits[mask])
    for kind in ("paper", "softmax"):
        loss = next_visit_loss(logits, batch, kind)
        assert torch.allclose(loss, naive_loss(naive_logits, y, mask, kind))
    loss = next_visit_loss(logits, batch, "paper")
    loss_naive = naive_loss(naive_logits, y, mask, "paper")
    (grad,) = torch.autograd.grad(loss, ours.embedder.base.weight)
    (grad_naive,) = torch.autograd.grad(loss_naive, naive.embedder.base.weight)
    assert torch.allclose(grad, grad_naive)


def tiny_bench(**options):  # noqa: ANN003, ANN201
    settings = dict(dim=8, attention_dim=4, hidden=8, batch_size=20, patients=60, repeats=1, device="cpu")
    settings.update(ontology=str(CCS_SMALL), matmul_size=256)
    return hapnet.bench(**{**settings, **options})


def test_bench_times_ours_and_naive_on_the_same_model() -> None:
    threads = torch.get_num_threads()
    result = tiny_bench(threads=1)
    assert torch.get_num_threads() == threads  # restored
    assert result["machine"]["threads"] == 1 and result["machine"]["matmul_gflops"] > 0
    assert result["data"]["batch_patients"] == 20
    rows = {(r["model"], r["part"]): r for r in result["rows"]}
    assert set(rows) == {(m, p) for m in ("hap", "gram") for p in ("propagation", "train_step")}
    for row in rows.values():
        assert row["ours_s"] > 0 and row["naive_s"] > 0
        assert row["speedup"] == pytest.approx(row["naive_s"] / row["ours_s"])
        assert row["gflop"] > 0 and row["naive_max_abs_diff"] < 1e-5 and row["spread"] >= 1
    # the training step includes the propagation: more FLOPs
    assert rows[("hap", "train_step")]["gflop"] > rows[("hap", "propagation")]["gflop"]


def test_bench_cli_table_json_and_bad_model() -> None:
    tiny = ["--dim", "8", "--attention-dim", "4", "--hidden", "8", "--batch-size", "10", "--patients", "30"]
    tiny += ["--repeats", "1", "--device", "cpu", "--model", "gram", "--ontology", str(CCS_SMALL)]
    tiny += ["--matmul-size", "256", "--threads", "1"]
    result = runner.invoke(app, ["bench", *tiny, "--json", "--no-naive"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    assert [r["part"] for r in rows] == ["propagation", "train_step"] and rows[0]["naive_s"] is None
    result = runner.invoke(app, ["bench", *tiny])
    assert result.exit_code == 0, result.output
    assert "speed-up" in result.output and "train step" in result.output
    result = runner.invoke(app, ["bench", "--model", "lstm"])
    assert result.exit_code == 2 and "choose hap, gram or both" in result.output


def test_hap_flops_count_only_what_the_outputs_need() -> None:
    onto = small_dag()
    hierarchy = Hierarchy.from_ontology(onto)
    every = np.arange(len(onto))
    full = sum(attention_step_flops(s, 6, 4, True) for s in hierarchy.bottom_up + hierarchy.top_down)
    assert propagation_flops("hap", hierarchy, every, 6, 4) == full
    # F6 needs all of bottom-up (the root reads A and B) but top-down only for B, B1 and F6: one
    # target and two candidates each (itself, its parent): keys 2*2*d*a + query 2*d*a + scores
    # 2*3a + sums 2*2d = 96 + 48 + 24 + 24 = 192 FLOPs per step at d=6, a=4
    bottom_up = sum(attention_step_flops(s, 6, 4, True) for s in hierarchy.bottom_up)
    assert propagation_flops("hap", hierarchy, np.array([onto.index("F6")]), 6, 4) == bottom_up + 3 * 192
