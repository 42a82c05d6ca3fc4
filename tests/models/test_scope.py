"""Ontology scope "observed" (the papers' DAG: observed codes and their ancestors): pruning by
hand, and every model on the pruned ontology equals the same model on an ontology that never had
the other nodes (two paths, values and gradients)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_embedders import random_dag

from hapnet.data.vocabulary import Vocabulary
from hapnet.errors import HapnetError
from hapnet.models.embedder import EmbedderConfig
from hapnet.models.registry import MODELS, build_embedder
from hapnet.ontology.graph import Ontology
from hapnet.ontology.hierarchy import Hierarchy
from hapnet.training.config import TrainConfig, differing_settings, make_config
from hapnet.training.setup import build_model

DTYPE = torch.float64


def with_extras() -> Ontology:
    """root | A, B, C | A1, A2 (under A), B1 (under B), X (under A and B) | x1 (under X)."""
    edges = [("", "A"), ("", "B"), ("", "C"), ("A", "A1"), ("A", "A2"), ("B", "B1")]
    edges += [("A", "X"), ("B", "X"), ("X", "x1")]
    return Ontology.from_edges("extras", edges)


def edge_names(onto: Ontology) -> set[tuple[str, str]]:
    return {(onto.ids[p], onto.ids[c]) for p, c in zip(onto.edge_parent, onto.edge_child, strict=True)}


def test_prune_keeps_exactly_the_paths_to_the_observed_nodes() -> None:
    onto = with_extras()
    pruned = onto.prune(np.array([onto.index("A1"), onto.index("x1")]))
    root = onto.ids[0]
    # x1 keeps both of X's parents (a DAG); A2, B1 and C lose their edges; indices do not change.
    assert edge_names(pruned) == {(root, "A"), (root, "B"), ("A", "A1"), ("A", "X"), ("B", "X"), ("X", "x1")}
    assert pruned.ids == onto.ids and np.array_equal(pruned.levels, onto.levels)
    # An observed category keeps its path up but not its children.
    only_b = onto.prune(np.array([onto.index("B")]))
    assert edge_names(only_b) == {(root, "B")}


def test_prune_after_truncate_stays_within_the_levels() -> None:
    onto = with_extras().truncate(2)  # levels 2 and 3 take part: A-level edges are cut
    pruned = onto.prune(np.array([onto.index("x1"), onto.index("A1")]))
    assert edge_names(pruned) == {("X", "x1")}


def _kept_ontology(onto: Ontology, observed: list[str]) -> Ontology:
    """The same DAG built from scratch with only the observed nodes and their ancestors."""
    pruned = onto.prune(np.array([onto.index(c) for c in observed]))
    return Ontology.from_edges(
        "kept",
        [
            (pruned.ids[p] if p else "", pruned.ids[c])
            for p, c in zip(pruned.edge_parent, pruned.edge_child, strict=True)
        ],
    )


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("seed", [0, 1])
def test_observed_scope_equals_a_model_built_without_the_other_nodes(name: str, seed: int) -> None:
    onto = random_dag(seed, size=40)
    rng = np.random.default_rng(seed)
    observed = sorted(rng.choice(np.arange(1, len(onto)), size=12, replace=False).tolist())
    observed_ids = [onto.ids[i] for i in observed]
    config = EmbedderConfig(dim=6, attention_dim=4, init_std=1.0)
    torch.manual_seed(seed)
    pruned = onto.prune(np.array(observed))
    compact = build_embedder(
        name,
        Hierarchy.from_ontology(pruned),
        np.array(observed),
        EmbedderConfig(6, 4, 1.0, base_nodes="used"),
    ).to(DTYPE)
    kept = _kept_ontology(onto, observed_ids)
    reference = build_embedder(
        name, Hierarchy.from_ontology(kept), np.array([kept.index(c) for c in observed_ids]), config
    )
    reference = reference.to(DTYPE)

    # Fewer rows than nodes (unless every node is in use), one per node of the kept DAG.
    used = compact.base_nodes
    assert len(used) == len(kept) and len(used) <= len(onto)
    assert sorted(onto.ids[i] for i in used) == sorted(kept.ids)
    # Same parameters: base rows matched by node id, attention weights copied.
    with torch.no_grad():
        for node, row in zip(used, compact.rows(used), strict=True):
            reference.base.weight[kept.index(onto.ids[node])] = compact.base.weight[row]
        for (key, param), (key2, other) in zip(
            compact.named_parameters(), reference.named_parameters(), strict=True
        ):
            assert key == key2
            if key != "base.weight":
                other.copy_(param)
    g, g_ref = compact(), reference()
    assert torch.allclose(g, g_ref, atol=1e-12)
    weights = torch.randn_like(g)
    (g * weights).sum().backward()
    (g_ref * weights).sum().backward()
    order = torch.tensor([kept.index(onto.ids[node]) for node in used])
    assert torch.allclose(compact.base.weight.grad, reference.base.weight.grad[order], atol=1e-12)
    # Every-node views: NaN exactly for the nodes outside the observed codes and their ancestors.
    every = compact.all_node_embeddings().detach()
    outside = np.setdiff1d(np.arange(len(onto)), used)
    assert torch.isnan(every[outside]).all() and not torch.isnan(every[used]).any()
    assert torch.allclose(every[observed], g.detach(), atol=1e-12)


def test_a_node_without_an_embedding_is_named_when_explained() -> None:
    onto = with_extras()
    observed = np.array([onto.index("A1")])
    model = build_embedder(
        "hap",
        Hierarchy.from_ontology(onto.prune(observed)),
        observed,
        EmbedderConfig(4, 2, base_nodes="used"),
    )
    assert model.explain(observed).shape == (1, len(onto))
    with pytest.raises(HapnetError, match="'C' has no embedding in this model"):
        model.explain([onto.index("C")])
    with pytest.raises(HapnetError, match="initial vectors have shape"):
        model.init_base(torch.zeros(len(model.base_nodes), 4))
    vectors = torch.arange(len(onto) * 4, dtype=torch.float32).view(len(onto), 4)
    model.init_base(vectors)  # vectors of every node: the table takes its nodes' rows
    assert torch.equal(model.base.weight.detach(), vectors[model.base_nodes])


def test_training_config_scope_sizes_the_table_and_old_runs_load_as_full() -> None:
    onto = with_extras()
    vocab = Vocabulary.from_nodes(np.array([onto.index("A1"), onto.index("x1")]), len(onto))
    observed = build_model(make_config(dim=4, hidden=4, attention_dim=2), onto, vocab)
    full = build_model(make_config(dim=4, hidden=4, attention_dim=2, ontology_scope="full"), onto, vocab)
    assert observed.embedder.base.weight.shape[0] == 6  # root, A, B, X, A1, x1
    assert full.embedder.base.weight.shape[0] == len(onto) == 9
    assert make_config(preset="paper").ontology_scope == "observed"
    with pytest.raises(HapnetError, match="--ontology-scope must be one of observed, full"):
        make_config(ontology_scope="some")
    # config.json written before the setting existed: those runs used the full ontology.
    saved = {k: v for k, v in TrainConfig().to_dict().items() if k != "ontology_scope"}
    assert TrainConfig.from_saved(saved).ontology_scope == "full"
    assert differing_settings(saved, TrainConfig()) == ["ontology_scope"]
    assert differing_settings(saved, TrainConfig(ontology_scope="full")) == []


def test_cli_records_the_scope_and_trains_on_it(tmp_path: Path) -> None:
    from tiny import write_tiny_data
    from typer.testing import CliRunner

    from hapnet.cli.main import app

    ontology, data = write_tiny_data(tmp_path)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--ontology", str(ontology), "--epochs", "1", "--dim", "8"]
    args += [
        "--hidden",
        "8",
        "--attention-dim",
        "4",
        "--ontology-scope",
        "full",
        "--device",
        "cpu",
        "-o",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["ontology_scope"] == "full"
    bad = CliRunner().invoke(app, [*args[:-2], "--ontology-scope", "all", "-o", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--ontology-scope must be one of observed, full" in bad.output
