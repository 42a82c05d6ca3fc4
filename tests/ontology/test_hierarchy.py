"""The compiled per-level edge lists (hapnet.ontology.hierarchy) for HAP and GRAM."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hapnet.ontology.graph import ROOT, Ontology
from hapnet.ontology.hierarchy import Hierarchy, Step, ancestor_sets

# Levels: root 0 | A, E, X 1 | B, F, G 2 | C 3 | D 4.  C has parents A and B.
DAG_EDGES = [("", "A"), ("A", "B"), ("B", "C"), ("A", "C"), ("C", "D"), ("", "E"), ("E", "F"), ("X", "G")]


@pytest.fixture
def dag() -> Ontology:
    return Ontology.from_edges("dag", DAG_EDGES)


def candidates(onto: Ontology, step: Step) -> dict[str, list[str]]:
    """{target id: sorted candidate ids}, checking that each target's first candidate is itself."""
    result: dict[str, list[str]] = {}
    for position, target in enumerate(step.targets):
        sources = step.edge_source[step.edge_target == position]
        assert sources[0] == target  # the self candidate comes first
        result[onto.ids[target]] = sorted(onto.ids[s] for s in sources)
    return result


def test_full_hierarchy_steps_by_hand(dag: Ontology) -> None:
    h = Hierarchy.from_ontology(dag)
    assert isinstance(h, Hierarchy) and h.num_nodes == len(dag) == 9
    assert [s.level for s in h.bottom_up] == [3, 2, 1, 0]
    assert [s.level for s in h.top_down] == [1, 2, 3, 4]
    up = {s.level: candidates(dag, s) for s in h.bottom_up}
    assert up[3] == {"C": ["C", "D"]}
    assert up[2] == {"B": ["B", "C"]}
    assert up[1] == {"A": ["A", "B", "C"], "E": ["E", "F"], "X": ["G", "X"]}
    assert up[0] == {ROOT: sorted([ROOT, "A", "E", "X"])}
    down = {s.level: candidates(dag, s) for s in h.top_down}
    assert down[1] == {"A": [ROOT, "A"], "E": [ROOT, "E"], "X": [ROOT, "X"]}
    assert down[2] == {"B": ["A", "B"], "F": ["E", "F"], "G": ["G", "X"]}
    assert down[3] == {"C": ["A", "B", "C"]}
    assert down[4] == {"D": ["C", "D"]}
    assert all(s.num_candidates == len(s.edge_target) for s in h.bottom_up + h.top_down)


@pytest.mark.parametrize(
    ("k", "bottom_up", "top_down"),
    [
        (1, [], []),  # K = 1: no hierarchy
        (2, [3], [4]),  # levels 3..4: parent level 3 (L-1 .. L-K+1), child level 4 (L-K+2 .. L)
        (3, [3, 2], [3, 4]),
        (4, [3, 2, 1], [2, 3, 4]),
        (5, [3, 2, 1, 0], [1, 2, 3, 4]),  # K = L + 1: the full hierarchy
        (None, [3, 2, 1, 0], [1, 2, 3, 4]),
    ],
)
def test_truncated_steps_cover_the_lowest_k_levels(dag: Ontology, k, bottom_up, top_down) -> None:
    h = Hierarchy.from_ontology(dag.truncate(k))
    assert [s.level for s in h.bottom_up] == bottom_up
    assert [s.level for s in h.top_down] == top_down


def test_truncation_drops_candidates_from_below_the_cut(dag: Ontology) -> None:
    h = Hierarchy.from_ontology(dag.truncate(3))  # cut at level 2: A -> C is gone, B -> C stays
    down = {s.level: candidates(dag, s) for s in h.top_down}
    assert down == {3: {"C": ["B", "C"]}, 4: {"D": ["C", "D"]}}
    assert sorted(dag.ids[n] for n in h.nodes_in_hierarchy()) == ["B", "C", "D"]


def test_gram_ancestors_by_hand(dag: Ontology) -> None:
    ids = {n: dag.index(n) for n in ("C", "D", "F", "G")}
    targets = np.array([ids["D"], ids["F"]])
    step = Hierarchy.from_ontology(dag).ancestor_step(targets)
    assert step.targets.tolist() == targets.tolist()
    assert candidates(dag, step) == {"D": sorted(["D", "C", "B", "A", ROOT]), "F": sorted(["F", "E", ROOT])}
    cut = Hierarchy.from_ontology(dag.truncate(2)).ancestor_step(targets)  # levels 3..4 only
    assert candidates(dag, cut) == {"D": ["C", "D"], "F": ["F"]}  # F has no ancestor in range
    assert ancestor_sets(dag.truncate(3))[ids["D"]] == {ids["C"], dag.index("B")}


def per_target(step: Step) -> dict[int, list[int]]:
    return {
        int(t): sorted(step.edge_source[step.edge_target == i].tolist()) for i, t in enumerate(step.targets)
    }


@st.composite
def random_ontologies(draw: st.DrawFn) -> tuple[Ontology, Ontology]:
    """(full, truncated) for a random DAG and a random K."""
    n = draw(st.integers(1, 14))
    edges = [("", "n0")]
    for child in range(1, n):
        parents = draw(st.sets(st.integers(-1, child - 1), min_size=1, max_size=3))
        edges += [("" if p < 0 else f"n{p}", f"n{child}") for p in parents]
    full = Ontology.from_edges("random", edges)
    return full, full.truncate(draw(st.none() | st.integers(1, 6)))


@settings(max_examples=60, deadline=None)
@given(pair=random_ontologies())
def test_steps_equal_a_naive_per_node_loop(pair: tuple[Ontology, Ontology]) -> None:
    """Vectorised per-level edge lists == a plain loop over nodes and the edges in range."""
    full, onto = pair
    cut, depth = onto.cut_level, onto.depth
    everything = list(zip(full.edge_parent.tolist(), full.edge_child.tolist(), strict=True))
    kept = [(p, c) for p, c in everything if full.levels[p] >= cut]  # docs/algorithms.md: levels >= L-K+1
    naive_up, naive_down = {}, {}
    for node in range(len(onto)):
        level = int(onto.levels[node])
        kids = sorted(c for p, c in kept if p == node)
        ups = sorted(p for p, c in kept if c == node)
        if kids:
            naive_up.setdefault(level, {})[node] = sorted([node, *kids])
        if ups:
            naive_down.setdefault(level, {})[node] = sorted([node, *ups])
    h = Hierarchy.from_ontology(onto)
    got_up = {s.level: per_target(s) for s in h.bottom_up}
    got_down = {s.level: per_target(s) for s in h.top_down}
    assert got_up == naive_up and got_down == naive_down
    assert all(cut <= level < depth for level in got_up) and all(cut < level <= depth for level in got_down)
    assert [s.level for s in h.bottom_up] == sorted(got_up, reverse=True)  # deepest parents first
    assert [s.level for s in h.top_down] == sorted(got_down)

    # GRAM: ancestors after truncation == the full graph's ancestors with level >= cut (networkx)
    graph = nx.DiGraph()
    graph.add_nodes_from(range(len(full)))
    graph.add_edges_from(everything)
    for node, ancestors in enumerate(ancestor_sets(onto)):
        assert ancestors == {a for a in nx.ancestors(graph, node) if full.levels[a] >= cut}
