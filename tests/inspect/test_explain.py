"""`explain_code` and `hapnet explain`: the weights reproduce the embeddings, relations by hand."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import build_tiny_run, hapnet

from hapnet.errors import HapnetError
from hapnet.inspect.explain import code_weights, explain_code, relations
from hapnet.training.runs import load


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module")
def runs(tiny: Path) -> dict[str, Path]:
    built = {model: build_tiny_run(tiny, model) for model in ("hap", "gram", "rnn", "rollup")}
    built["hap-lv2"] = build_tiny_run(tiny, "hap", levels=2, name="hap-lv2")
    return built


def float64_embedder(run):  # noqa: ANN001, ANN201
    return copy.deepcopy(run.model.embedder).double().eval()


def weights_of(run, codes: list[str]) -> np.ndarray:  # noqa: ANN001
    return np.stack([code_weights(run, run.ontology.index(c)) for c in codes])


# ----------------------------------------------------------------------------- weights
@pytest.mark.parametrize("model", ["hap", "gram", "rnn", "rollup", "hap-lv2"])
def test_weights_times_base_embeddings_reproduce_every_final_embedding(
    runs: dict[str, Path], model: str
) -> None:
    run = load(runs[model])
    embedder = float64_embedder(run)
    with torch.no_grad():
        final = embedder().numpy()  # [classes, dim], the embeddings the predictor uses
        base = np.nan_to_num(embedder.base_embeddings().numpy())  # nodes without one weigh 0
    weights = weights_of(run, run.codes)
    assert np.allclose(weights.sum(1), 1.0, atol=1e-12) and (weights >= 0).all()
    np.testing.assert_allclose(weights @ base, final, rtol=1e-9, atol=1e-12)


def test_hap_weights_of_a_category_reproduce_its_embedding_too(runs: dict[str, Path]) -> None:
    run = load(runs["hap"])
    embedder = float64_embedder(run)
    with torch.no_grad():
        every_node = embedder.all_node_embeddings().numpy()
    for code in ("A1", "C21", "B"):
        node = run.ontology.index(code)
        np.testing.assert_allclose(
            code_weights(run, node) @ np.nan_to_num(embedder.base_embeddings().detach().numpy()),
            every_node[node],
        )


def test_hap_weights_equal_a_naive_composition_of_both_passes(runs: dict[str, Path]) -> None:
    """Second computation path: M = I, then per attention step M[t] <- sum_j alpha_tj M[j]; W = M."""
    run = load(runs["hap"])
    steps = float64_embedder(run).attention()
    assert [s["pass"] for s in steps][:1] == ["bottom-up"] and steps[-1]["pass"] == "top-down"
    n = len(run.ontology)
    composed = np.eye(n)
    for step in steps:
        new_rows = {}
        for target in np.unique(step["target"]):
            mine = step["target"] == target
            assert step["weight"][mine].sum() == pytest.approx(1.0)  # a softmax per target
            new_rows[target] = sum(
                w * composed[s] for s, w in zip(step["source"][mine], step["weight"][mine], strict=True)
            )
        for target, row in new_rows.items():  # a step's targets never read each other
            composed[target] = row
    codes = ["A11", "B12", "C211", "A1", "C"]
    np.testing.assert_allclose(
        weights_of(run, codes), composed[[run.ontology.index(c) for c in codes]], atol=1e-12
    )
    # Every node of the ontology reaches every code (through the root): HAP's "everyone sees everyone".
    assert (composed[run.ontology.index("A11")] > 0).all()


def test_gram_attends_over_the_code_and_its_ancestors_only(runs: dict[str, Path]) -> None:
    run = load(runs["gram"])
    explanation = explain_code(run, "B12")
    assert set(explanation.nodes["code"]) == {"B12", "A1", "B1", "A", "B", "<ROOT>"}
    assert explanation.nodes["weight"].sum() == pytest.approx(1.0, abs=1e-12)
    assert set(explanation.nodes["relation"]) == {"self", "ancestor"}
    assert f"{explanation.label}: attention over B12 and its 5 ancestors" in explanation.summary


def test_rnn_and_rollup_are_said_plainly(runs: dict[str, Path]) -> None:
    rnn = explain_code(load(runs["rnn"]), "A11")
    assert rnn.nodes[["code", "weight"]].values.tolist() == [["A11", 1.0]]
    assert rnn.summary == "RNN+: no ontology; the embedding of A11 is its own base embedding."
    rollup = load(runs["rollup"])
    one = explain_code(rollup, "C211")
    assert one.nodes[["code", "relation", "weight"]].values.tolist() == [["C21", "ancestor", 1.0]]
    assert one.summary == "Rollup+: the embedding of C211 is the base embedding of its parent C21."
    two = explain_code(rollup, "B12")  # two parents: their mean
    assert sorted(two.nodes[["code", "weight"]].values.tolist()) == [["A1", 0.5], ["B1", 0.5]]
    # With only the lowest 2 levels, A11 has no edge in range: its own embedding.
    lv2 = explain_code(load(runs["hap-lv2"]), "A11")
    assert lv2.nodes["code"].tolist() == ["A11"] and lv2.label == "HAP (lv2, GloVe)"
    assert lv2.summary == (
        "HAP (lv2, GloVe): A11 has no edge within the levels used; its embedding is its own base embedding."
    )


# ----------------------------------------------------------------------------- relations
def named_relations(run, code: str) -> dict[str, set[str]]:  # noqa: ANN001
    found: dict[str, set[str]] = {}
    for node, relation in enumerate(relations(run.ontology, run.ontology.index(code))):
        found.setdefault(relation, set()).add(run.ontology.ids[node])
    return found


def test_relations_by_hand(runs: dict[str, Path]) -> None:
    run = load(runs["hap"])
    a11 = named_relations(run, "A11")
    assert a11["self"] == {"A11"} and a11["ancestor"] == {"A1", "A", "<ROOT>"}
    assert a11["sibling"] == {"A12", "A13", "B12"} and a11["cousin"] == {"A2", "A21", "A22"}
    assert "descendant" not in a11 and "B11" in a11["other"] and "C211" in a11["other"]
    b12 = named_relations(run, "B12")  # two parents: A1 and B1
    assert b12["ancestor"] == {"A1", "B1", "A", "B", "<ROOT>"}
    assert b12["sibling"] == {"A11", "A12", "A13", "B11"}
    assert b12["cousin"] == {"A2", "A21", "A22", "B2", "B21", "B22", "B23"}
    c21 = named_relations(run, "C21")
    assert c21["descendant"] == {"C211", "C212"} and c21["cousin"] == {"C1", "C11", "C12"}
    assert "sibling" not in c21


def test_explanation_is_sorted_and_totals_by_relation(runs: dict[str, Path]) -> None:
    explanation = explain_code(load(runs["hap"]), "a11")  # ids normalise like data codes
    assert explanation.code == "A11" and explanation.in_vocabulary and explanation.level == 3
    weights = explanation.nodes["weight"].to_numpy()
    assert (np.diff(weights) <= 0).all() and len(weights) == len(load(runs["hap"]).ontology)
    totals = explanation.by_relation()
    assert sum(t["weight"] for t in totals.values()) == pytest.approx(1.0)
    assert (
        totals["self"]["nodes"] == 1 and totals["ancestor"]["nodes"] == 3 and totals["sibling"]["nodes"] == 3
    )
    with pytest.raises(HapnetError, match="'Z99': not a node of ontology tiny_ontology"):
        explain_code(load(runs["hap"]), "Z99")


def test_as_dict_lists_the_k_largest_weights(runs: dict[str, Path]) -> None:
    result = explain_code(runs["gram"], "B12")  # a folder works as a loaded Run does
    assert len(result.as_dict()["nodes"]) == len(result.nodes) == 6
    top2 = result.as_dict(k=2)["nodes"]
    assert [n["code"] for n in top2] == result.nodes["code"].head(2).tolist()
    assert top2[0]["weight"] >= top2[1]["weight"] >= result.nodes["weight"].iloc[2]
    with pytest.raises(HapnetError, match=r"^--k must be at least 1, got 0$"):
        result.as_dict(k=0)


# ----------------------------------------------------------------------------- CLI
def test_cli_explain_table_json_and_png(runs: dict[str, Path], tmp_path: Path) -> None:
    result = hapnet("explain", runs["hap"], "B12", "--k", "5", "--device", "auto")
    assert result.exit_code == 0, result.output
    assert (
        "Weight by relation" in result.stdout
        and "Top 5 nodes" in result.stdout
        and "sibling" in result.stdout
    )
    png = tmp_path / "b12.png"
    result = hapnet("explain", runs["gram"], "B12", "--json", "--png", png)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["code"] == "B12" and len(data["nodes"]) == 6 and data["png"] == str(png)
    assert sum(n["weight"] for n in data["nodes"]) == pytest.approx(1.0)
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 5000
    result = hapnet("explain", runs["gram"], "B12", "--png", png)  # never overwritten silently
    assert (
        result.exit_code == 2
        and result.stderr.strip() == f"error: {png}: already exists (use --force to overwrite)"
    )
    assert hapnet("explain", runs["gram"], "B12", "--png", png, "--force").exit_code == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["no/such/run", "A11"], "error: no/such/run: not a hapnet run folder"),
        (["{run}", "Z99"], "error: 'Z99': not a node of ontology tiny_ontology"),
        (["{run}", "A11", "--k", "0"], "error: --k must be at least 1, got 0"),
    ],
)
def test_cli_explain_bad_input_is_exit_2_one_line(
    runs: dict[str, Path], args: list[str], message: str
) -> None:
    result = hapnet("explain", *[a.replace("{run}", str(runs["hap"])) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
