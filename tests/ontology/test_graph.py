"""The Ontology model (levels, validation, resolve, truncate) and the file loaders."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from testdata import ONTOLOGY_FILES as DATA

from hapnet.errors import InputError
from hapnet.ontology.builtins import load_ontology, read_cached_ontology, save_ontology
from hapnet.ontology.formats import parse_ontology_text
from hapnet.ontology.graph import EXACT, MAPPED, ROOT, UNKNOWN, Ontology
from hapnet.utils.cache import cache_dir


def edge_set(onto: Ontology) -> set[tuple[str, str]]:
    return {(onto.ids[p], onto.ids[c]) for p, c in zip(onto.edge_parent, onto.edge_child, strict=True)}


def level_of(onto: Ontology) -> dict[str, int]:
    return {node: int(level) for node, level in zip(onto.ids, onto.levels, strict=True)}


# The DAG of tests/data/ontology/dag.csv. C has parents A (level 1) and B (level 2): its shortest
# path from the root has length 2, its longest 3, so C is on level 3 and D on level 4.
DAG_EDGES = [("", "A"), ("A", "B"), ("B", "C"), ("A", "C"), ("C", "D"), ("", "E"), ("E", "F"), ("X", "G")]
DAG_LEVELS = {ROOT: 0, "A": 1, "E": 1, "X": 1, "B": 2, "F": 2, "G": 2, "C": 3, "D": 4}


@pytest.fixture
def dag() -> Ontology:
    return Ontology.from_edges("dag", DAG_EDGES, {"A": "Alpha", "D": "Delta"})


# ----------------------------------------------------------------------------- building
def test_levels_are_longest_paths_not_shortest(dag: Ontology) -> None:
    assert level_of(dag) == DAG_LEVELS
    graph = nx.DiGraph(list(edge_set(dag)))
    assert nx.shortest_path_length(graph, ROOT, "C") == 2  # the case where the two differ
    assert dag.depth == 4


def test_nodes_sorted_by_level_root_first(dag: Ontology) -> None:
    assert dag.ids[0] == ROOT
    assert list(dag.levels) == sorted(dag.levels)
    assert dag.level_offsets.tolist() == [0, 1, 4, 7, 8, 9]
    assert (dag.levels[dag.edge_parent] < dag.levels[dag.edge_child]).all()


def test_edges_roots_and_undeclared_parents(dag: Ontology) -> None:
    # A, E have an empty parent; X is named as G's parent but never declared: all hang under the root.
    assert edge_set(dag) == {
        (ROOT, "A"),
        (ROOT, "E"),
        (ROOT, "X"),
        ("A", "B"),
        ("B", "C"),
        ("A", "C"),
        ("C", "D"),
        ("E", "F"),
        ("X", "G"),
    }
    assert dag.descriptions[dag.index("A")] == "Alpha"
    assert dag.descriptions[dag.index("X")] == ""
    assert dag.descriptions[0] == "dag"


def test_summary_figures(dag: Ontology) -> None:
    summary = dag.summary()
    assert summary["nodes"] == 9 == sum(summary["per_level"])
    assert summary["per_level"] == [1, 3, 3, 1, 1]
    assert summary["edges"] == 9
    assert summary["leaves"] == 3  # D, F, G
    assert summary["multi_parent"] == 1  # C
    assert summary["max_parents"] == 2
    assert summary["max_children"] == 3  # the root: A, E, X


def test_navigation(dag: Ontology) -> None:
    c, d = dag.index("C"), dag.index("D")
    assert sorted(dag.ids[p] for p in dag.parents(c)) == ["A", "B"]
    assert [dag.ids[x] for x in dag.children(c)] == ["D"]
    assert [dag.ids[a] for a in dag.ancestors(d)] == ["C", "B", "A", ROOT]
    paths = sorted([dag.ids[n] for n in path] for path in dag.paths_to_root(d))
    assert paths == [["D", "C", "A", ROOT], ["D", "C", "B", "A", ROOT]]


def test_duplicate_edges_are_merged() -> None:
    onto = Ontology.from_edges("dup", [("A", "B"), ("A", "B"), ("", "A"), ("A", "B")])
    assert onto.num_edges == 2
    assert len(onto) == 3


def test_self_loop_is_an_error() -> None:
    with pytest.raises(InputError, match="self-loop: 'A'"):
        Ontology.from_edges("loop", [("A", "A")])


def test_cycle_is_an_error_naming_its_nodes() -> None:
    with pytest.raises(InputError, match="cycle") as info:
        Ontology.from_edges("cyc", [("", "R"), ("R", "A"), ("A", "B"), ("B", "C"), ("C", "A")])
    message = str(info.value)
    assert all(node in message for node in ("A", "B", "C"))
    assert "R" not in message.split("cycle", 1)[1]


def test_reserved_root_id_is_an_error() -> None:
    with pytest.raises(InputError, match="reserved"):
        Ontology.from_edges("bad", [(ROOT, "A")])


@st.composite
def random_dags(draw: st.DrawFn) -> list[tuple[str, str]]:
    """(parent, child) rows of a random DAG; parent "" = a row that only declares the child."""
    n = draw(st.integers(1, 12))
    edges = [("", "n0")]
    for child in range(1, n):
        parents = draw(st.sets(st.integers(-1, child - 1), min_size=1, max_size=3))
        edges += [("" if p < 0 else f"n{p}", f"n{child}") for p in parents]
    return draw(st.permutations(edges))


@settings(max_examples=60, deadline=None)
@given(random_dags())
def test_levels_match_a_naive_longest_path(edges: list[tuple[str, str]]) -> None:
    onto = Ontology.from_edges("random", edges)
    parents: dict[str, set[str]] = {child: {p for p, c in edges if c == child and p} for _, child in edges}
    parents = {child: ups or {ROOT} for child, ups in parents.items()}  # no parent: under the root

    def naive(node: str) -> int:
        return 0 if node == ROOT else 1 + max(naive(p) for p in parents[node])

    assert level_of(onto) == {node: naive(node) for node in onto.ids}
    assert {(p, c) for c, ups in parents.items() for p in ups} == edge_set(onto)


# ----------------------------------------------------------------------------- resolve
def test_resolve_exact_mapped_unknown() -> None:
    onto = Ontology.from_edges("icd", [("", "T81"), ("T81", "T814"), ("", "0389")])
    assert onto.resolve("T81.4").status == EXACT
    assert onto.resolve(" 038.9 ").index == onto.index("0389")
    mapped = onto.resolve("t81.4xxa")
    assert (mapped.code, mapped.status, onto.ids[mapped.index]) == ("T814XXA", MAPPED, "T814")
    assert onto.ids[onto.resolve("T819").index] == "T81"
    assert onto.resolve("T8").status == UNKNOWN  # shorter than an ICD category
    assert onto.resolve("Z99").index == -1
    assert onto.resolve("<root>").status == UNKNOWN  # the artificial root is never a code
    indices, counts = onto.resolve_many(["T814", "T814XXA", "T81.4XXA", "Z99", "0389"])
    t814, c0389 = onto.index("T814"), onto.index("0389")
    assert indices.tolist() == [t814, t814, t814, -1, c0389]
    assert counts == {EXACT: 2, MAPPED: 2, UNKNOWN: 1}


def test_resolve_does_not_truncate_category_ids() -> None:
    onto = Ontology.from_edges("ccs", [("", "CCS:7"), ("CCS:7", "CCS:7.1"), ("CCS:7.1", "4019")])
    assert onto.resolve("ccs:7.1").status == EXACT
    assert onto.resolve("CCS:7.1.9").status == UNKNOWN


# ----------------------------------------------------------------------------- truncate
def test_truncate_keeps_indices_and_drops_edges_from_below_the_cut(dag: Ontology) -> None:
    full = {k: dag.truncate(k) for k in (1, 2, 3, 5, 9)}
    assert full[5] is dag and full[9] is dag and dag.truncate(None) is dag  # K >= L + 1: everything
    assert full[1].num_edges == 0  # K = 1: no hierarchy at all
    assert edge_set(full[2]) == {("C", "D")}  # levels 3..4
    assert edge_set(full[3]) == {("B", "C"), ("C", "D")}  # levels 2..4: A -> C starts below the cut
    for k, onto in full.items():
        assert onto.ids == dag.ids and (onto.levels == dag.levels).all()
        assert onto.cut_level == max(0, dag.depth - k + 1)
    assert full[2].summary()["per_level"] == [0, 0, 0, 1, 1]
    assert full[3].summary()["nodes"] == 5  # B, F, G, C, D
    assert full[3].summary()["standalone_below_cut"] == 0
    assert full[2].summary()["standalone_below_cut"] == 2  # F and G keep their own embedding
    with pytest.raises(Exception, match="at least 1"):
        dag.truncate(0)


def test_truncated_parents_and_children_views(dag: Ontology) -> None:
    cut = dag.truncate(3)
    c = dag.index("C")
    assert [cut.ids[p] for p in cut.parents(c)] == ["B"]
    assert cut.ancestors(dag.index("D")) == [dag.index("C"), dag.index("B")]


# ----------------------------------------------------------------------------- files
def test_generic_csv_file(tmp_path: Path) -> None:
    onto = load_ontology(DATA / "dag.csv")
    assert level_of(onto) == DAG_LEVELS
    assert onto.name == "dag" and onto.source == str(DATA / "dag.csv")
    assert onto.descriptions[onto.index("G")] == "Eta"
    assert onto.truncate(2).num_edges == load_ontology(DATA / "dag.csv", levels=2).num_edges == 1


def test_gzip_file_equals_plain(tmp_path: Path) -> None:
    gz = tmp_path / "dag.csv.gz"
    gz.write_bytes(gzip.compress((DATA / "dag.csv").read_bytes()))
    plain, packed = load_ontology(DATA / "dag.csv"), load_ontology(gz)
    assert plain.ids == packed.ids and edge_set(plain) == edge_set(packed)


def test_bom_crlf_quoted_commas() -> None:
    onto = load_ontology(DATA / "bom_crlf.csv")
    assert "CODE" not in onto and "\ufeffCODE" not in onto
    assert onto.descriptions[onto.index("I10")] == "Essential (primary) hypertension, unspecified"
    assert onto.descriptions[onto.index("CIR")] == "Circulatory, system"
    assert onto.ids[onto.parents(onto.index("T814XXA"))[0]] == "T81"  # dotted lower-case code normalised
    assert not any("\r" in d for d in onto.descriptions)


def test_latin1_falls_back_with_a_warning(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="not valid UTF-8, read as latin-1"):
        onto = load_ontology(DATA / "latin1.csv")
    assert onto.descriptions[onto.index("A")] == "Café au lait"
    with pytest.warns(UserWarning, match="latin-1"):  # the cached second load still warns
        load_ontology(DATA / "latin1.csv")


def test_ccs_multilevel_file() -> None:
    onto = load_ontology(DATA / "ccs_small.csv")
    assert onto.depth == 5
    levels = level_of(onto)
    assert levels["0389"] == levels["0038"] == 5  # 4 CCS levels
    assert levels["0010"] == 4  # level 4 blank
    assert levels["4019"] == levels["2500"] == 3  # levels 3, 4 blank
    assert levels["E9803"] == levels["V700"] == 2  # residual group: codes right under CCS:18
    assert onto.ids[onto.parents(onto.index("E9803"))[0]] == "CCS:18"
    assert onto.descriptions[onto.index("CCS:1.1.2")] == "Septicemia (except in labor) [2.]"
    assert onto.descriptions[onto.index("CCS:3")].startswith("Endocrine, nutritional; and metabolic")
    assert edge_set(onto) >= {("CCS:1.1.2", "CCS:1.1.2.6"), ("CCS:1.1.2.6", "0389"), ("CCS:7.1", "4019")}
    assert onto.summary()["per_level"] == [1, 4, 3 + 2, 2 + 2, 1 + 1, 2]
    assert len(onto) == 1 + 4 + 3 + 2 + 1 + 7  # root, CCS level-1..4 categories, codes


def test_generic_csv_several_parents_and_aliases() -> None:
    text = "id,parent_id,label\nA,,a\nB,,b\nC,A,c\nC,B,c\nC,A,c\n"
    onto = parse_ontology_text(text, "mem.csv", "mem")
    assert edge_set(onto) == {(ROOT, "A"), (ROOT, "B"), ("A", "C"), ("B", "C")}
    assert onto.descriptions[onto.index("C")] == "c"


@pytest.mark.parametrize(
    ("text", "reason", "line"),
    [
        ("", "empty file", None),
        ("\n \n", "empty file", None),
        ("code,parent,description\n", "header only", None),
        ("a,b,c\n1,2,3\n", "wrong columns 'a,b,c'", 1),
        ("code,parent\nA,\nB,A\nC\n", "expected 2 fields, found 1", 4),
        ("code,parent\nA,\n,A\n", "empty code", 3),
        ("code,parent\nA,B\nB,C\nC,A\n", "cycle", None),
        ("code,parent\nA,a\n", "self-loop", 2),
        ("'ICD-9-CM CODE','CCS LVL 1','CCS LVL 1 LABEL'\n", "header only", None),
        (
            "'ICD-9-CM CODE','CCS LVL 1'\n'0010','1','x','1.1','y',' ',' ',' ',' '\n'0011','1'\n",
            "truncated CCS row",
            3,
        ),
    ],
)
def test_bad_text_is_one_input_error(text: str, reason: str, line: int | None) -> None:
    with pytest.raises(InputError) as info:
        parse_ontology_text(text, "bad.csv", "bad")
    assert reason in info.value.reason
    assert info.value.source == "bad.csv" and info.value.line == line
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- cache
def test_cache_round_trip_equals_the_built_ontology(tmp_path: Path, dag: Ontology) -> None:
    path = tmp_path / "dag.npz"
    save_ontology(dag, path)
    back = read_cached_ontology(path)
    assert (back.name, back.ids, back.descriptions) == (dag.name, dag.ids, dag.descriptions)
    for field in ("edge_parent", "edge_child", "levels"):
        assert np.array_equal(getattr(back, field), getattr(dag, field))


def test_file_cache_is_used_and_keyed_by_content(tmp_path: Path) -> None:
    target = tmp_path / "dag.csv"
    shutil.copy(DATA / "dag.csv", target)
    before = set(cache_dir().glob("ontology-*-file-*.npz"))
    first = load_ontology(target)
    written = set(cache_dir().glob("ontology-*-file-*.npz")) - before
    assert len(written) <= 1  # 0 when another test cached the same content and name already
    assert edge_set(load_ontology(target)) == edge_set(first)
    target.write_text(target.read_text() + "H,D,Theta\n")
    changed = load_ontology(target)  # new content: rebuilt, never a stale cached answer
    assert changed.depth == 5 and "H" in changed and "H" not in first


def test_missing_source_names_the_builtins() -> None:
    with pytest.raises(InputError, match="not a built-in ontology .*icd9-icd10"):
        load_ontology("no-such-ontology")
