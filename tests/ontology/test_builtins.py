"""Every built-in ontology loads with the expected counts and its quirks handled.

Built once per test session into the session's HAPNET_CACHE_DIR (tests/conftest.py), then read
from that cache.
"""

from __future__ import annotations

import numpy as np
import pytest

from hapnet.ontology.builtins import BUILTINS, load_ontology
from hapnet.ontology.graph import EXACT, MAPPED, ROOT, UNKNOWN, Ontology


@pytest.fixture(scope="module")
def builtin() -> dict[str, Ontology]:
    return {name: load_ontology(name) for name in BUILTINS}


def parent_ids(onto: Ontology, node: str) -> list[str]:
    return sorted(onto.ids[p] for p in onto.parents(onto.index(node)))


def test_every_builtin_is_a_valid_leveled_dag(builtin: dict[str, Ontology]) -> None:
    assert sorted(builtin) == ["icd10cm", "icd10cm-ccsr", "icd9-ccs", "icd9-icd10", "icd9cm"]
    for name, onto in builtin.items():
        summary = onto.summary()
        assert onto.ids[0] == ROOT and onto.levels[0] == 0 and summary["name"] == name
        assert sum(summary["per_level"]) == summary["nodes"] == len(onto) == len(set(onto.ids))
        assert (onto.levels[onto.edge_parent] < onto.levels[onto.edge_child]).all()
        # longest path: every non-root node has a parent exactly one level up
        best = np.zeros(len(onto), dtype=np.int64)
        np.maximum.at(best, onto.edge_child, onto.levels[onto.edge_parent] + 1)
        assert (best[1:] == onto.levels[1:]).all()


def test_icd9_ccs(builtin: dict[str, Ontology]) -> None:
    onto = builtin["icd9-ccs"]
    summary = onto.summary()
    assert summary["leaves"] == 15_072 and summary["nodes"] == 15_800
    assert summary["per_level"] == [1, 18, 1_724, 3_740, 7_734, 2_583]  # levels 0..5
    assert summary["multi_parent"] == 0 and summary["max_children"] == 1_589
    residual = onto.index("CCS:18")
    assert onto.levels[residual] == 1 and len(onto.children(residual)) == 1_589
    assert set(onto.levels[onto.children(residual)].tolist()) == {2}  # codes hang at level 2
    assert np.bincount(onto.levels[onto.is_leaf]).tolist() == [0, 0, 1_589, 3_374, 7_526, 2_583]
    assert parent_ids(onto, "0389") == ["CCS:1.1.2.6"]
    # code descriptions come from ICD-9-CM v32; category labels from CCS
    assert onto.descriptions[onto.index("0389")] == "Unspecified septicemia"
    assert onto.descriptions[onto.index("CCS:7.1")] == "Hypertension"
    assert onto.descriptions[onto.index("0420")] == ""  # retired before FY2015
    assert sum(1 for i in np.flatnonzero(onto.is_leaf) if not onto.descriptions[i]) == 27
    cut = onto.truncate(3).summary()  # levels 3, 4, 5
    assert cut["per_level"] == [0, 0, 0, 3_740, 7_734, 2_583] and cut["standalone_below_cut"] == 1_589


def test_icd9cm(builtin: dict[str, Ontology]) -> None:
    summary = builtin["icd9cm"].summary()
    assert summary["leaves"] == 14_567 and summary["nodes"] == 17_727 and summary["depth"] == 5
    assert summary["per_level"][:2] == [1, 19]  # 19 chapters
    assert parent_ids(builtin["icd9cm"], "0389") == ["038"]


def test_icd10cm(builtin: dict[str, Ontology]) -> None:
    onto = builtin["icd10cm"]
    summary = onto.summary()
    assert summary["nodes"] == 98_494  # 98,505 package entries - 12 empty header blocks + root
    assert summary["leaves"] == 74_719 and summary["depth"] == 7 and summary["multi_parent"] == 0
    assert summary["per_level"][:3] == [1, 22, 285]  # 22 chapters, 285 blocks
    # a name that is both a block and a category: two nodes, block above category
    assert parent_ids(onto, "BLOCK:B10") == ["CHAPTER:1"]
    assert parent_ids(onto, "B10") == ["BLOCK:B10"]
    assert parent_ids(onto, "B100") == ["B10"]
    assert parent_ids(onto, "B20") == ["BLOCK:B20"] and onto.is_leaf[onto.index("B20")]
    assert "BLOCK:C00-C96" not in onto and "C00-C96" not in onto  # empty header block dropped
    blocks = [i for i, node in enumerate(onto.ids) if node.startswith("BLOCK:")]
    assert not onto.is_leaf[blocks].any()
    assert parent_ids(onto, "T814") == ["T81"] and parent_ids(onto, "T81") == ["BLOCK:T80-T88"]
    assert onto.descriptions[onto.index("I10")] == "Essential (primary) hypertension"
    found = onto.resolve("T81.4XXA")
    assert (found.status, onto.ids[found.index]) == (MAPPED, "T814")


def test_icd10cm_ccsr(builtin: dict[str, Ontology]) -> None:
    onto = builtin["icd10cm-ccsr"]
    summary = onto.summary()
    assert summary["multi_parent"] == 8_751 and summary["max_parents"] == 6
    assert summary["leaves"] == 74_549 and summary["per_level"] == [1, 22, 543, 74_549]
    assert summary["edges"] == 86_288 + 543 + 22
    assert parent_ids(onto, "I10") == ["CCSR:CIR007"] and parent_ids(onto, "CCSR:CIR007") == ["CCSR:CIR"]
    assert "CCSR:XXX000" not in onto and "CCSR:XXX" not in onto and "XXX000" not in onto
    assert all(node.startswith("CCSR:") for node in onto.ids[1 : 1 + 22 + 543])


def test_icd9_icd10(builtin: dict[str, Ontology]) -> None:
    onto, icd9, icd10 = builtin["icd9-icd10"], builtin["icd9-ccs"], builtin["icd10cm"]
    assert [onto.ids[c] for c in onto.children(0)] == ["ICD9", "ICD10"]
    assert [onto.descriptions[onto.index(s)] for s in ("ICD9", "ICD10")] == ["ICD-9-CM", "ICD-10-CM"]
    assert len(onto) == len(icd9) + len(icd10) - 2 + 1 + 2
    assert onto.summary()["leaves"] == 15_072 + 74_719 and onto.depth == 8
    assert all(node.startswith(("ICD9:", "ICD10:")) for node in onto.ids[3:])
    for system, part in (("ICD9", icd9), ("ICD10", icd10)):
        rename = [system] + [f"{system}:{node}" for node in part.ids[1:]]
        expected = {(rename[p], rename[c]) for p, c in zip(part.edge_parent, part.edge_child, strict=True)}
        got = {(onto.ids[p], onto.ids[c]) for p, c in zip(onto.edge_parent, onto.edge_child, strict=True)}
        assert expected <= got
        for node in ("CCS:7.1", "4019") if system == "ICD9" else ("CHAPTER:9", "BLOCK:I10-I1A", "I10"):
            full = onto.index(f"{system}:{node}")
            assert onto.levels[full] == part.levels[part.index(node)] + 1
            assert onto.descriptions[full] == part.descriptions[part.index(node)]
    found = onto.resolve("icd10:t81.4xxa")
    assert (found.code, found.status, onto.ids[found.index]) == ("ICD10:T814XXA", MAPPED, "ICD10:T814")
    assert onto.resolve("ICD9:401.9").status == EXACT
    assert onto.resolve("4019").status == UNKNOWN  # codes must carry their system here
    assert onto.resolve("ICD10:ZZZ").status == UNKNOWN


def test_builtins_come_back_from_the_cache_unchanged(builtin: dict[str, Ontology]) -> None:
    for name in ("icd9-ccs", "icd9cm"):
        fresh, cached = BUILTINS[name].build(), load_ontology(name)
        assert fresh.ids == cached.ids == builtin[name].ids
        assert fresh.descriptions == cached.descriptions
        assert np.array_equal(fresh.edge_parent, cached.edge_parent)
        assert np.array_equal(fresh.edge_child, cached.edge_child)
        assert np.array_equal(fresh.levels, cached.levels)
