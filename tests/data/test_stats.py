"""`hapnet.data_stats`: every figure on a hand-computed case, the level rule, the reference JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hapnet
from hapnet.data.loaders import visits_from_lists
from hapnet.data.stats import DataStats, compute_stats, level_ancestor, load_stats, relative_differences
from hapnet.errors import HapnetError, InputError
from hapnet.ontology.graph import Ontology

# root -> chapters A, B, C (level 1) -> categories A1, A2, B1 (level 2) -> codes; chapter C has
# its codes C1, C2 directly (level 2, no level-2 category: they count under C, like CCS 18).
EDGES = [
    ("A", "A1"), ("A", "A2"), ("B", "B1"), ("A1", "A11"), ("A1", "A12"), ("A2", "A21"),
    ("B1", "B11"), ("B1", "B12"), ("C", "C1"), ("C", "C2"),
]  # fmt: skip


@pytest.fixture(scope="module")
def ontology() -> Ontology:
    return Ontology.from_edges("hand", EDGES)


@pytest.fixture(scope="module")
def stats(ontology: Ontology) -> DataStats:
    patients = [
        [["A11", "B11"], ["A11", "A12"], ["C1", "B11"]],
        [["A21"], ["B12", "A11"]],
        [["C1", "B11", "A12"], ["C2", "B11"]],
        [["A11"]],  # one visit: kept by the load (min_visits=1), left out of every figure
    ]
    data = visits_from_lists(patients, ontology, min_visits=1)
    assert data.num_patients == 4
    return hapnet.data_stats(data)


def test_sizes_and_distributions_by_hand(stats: DataStats) -> None:
    assert (stats.patients_2plus, stats.visits, stats.codes) == (3, 7, 7)
    # codes per visit [2, 2, 2, 1, 2, 3, 2]; "lower" percentiles: sorted[floor(q * (n - 1))]
    cpv = stats.codes_per_visit
    assert (cpv.mean, cpv.p10, cpv.p50, cpv.p90, cpv.max) == (2.0, 1, 2, 2, 3)
    vpp = stats.visits_per_patient  # [3, 2, 2]
    assert vpp.mean == pytest.approx(7 / 3) and (vpp.p50, vpp.p90, vpp.max) == (2, 2, 3)
    assert (vpp.share_2, vpp.share_3) == (pytest.approx(2 / 3), pytest.approx(1 / 3))
    # counts: B11 4, A11 3, A12 2, C1 2, A21 1, B12 1, C2 1 (14 occurrences)
    freq = stats.code_frequency
    assert freq.top1_share == pytest.approx(4 / 14)
    assert freq.top20_share == freq.top100_share == 1.0
    assert (freq.codes_seen_once, freq.codes_seen_le5, freq.median_count) == (3, 7, 2.0)


def test_next_visit_codes_by_hand(stats: DataStats) -> None:
    # later rows: P0 {A11 A12} {C1 B11}, P1 {B12 A11}, P2 {C2 B11} (8 rows)
    nxt = stats.next_visit_codes
    assert nxt.in_previous_visit == 2 / 8  # A11 of P0 visit 2, B11 of P2
    assert nxt.in_any_earlier_visit == 3 / 8  # + B11 of P0's third visit (seen in the first)
    assert nxt.ccs_lvl1_seen_before == 6 / 8  # all but C1 (P0) and B12 (P1)
    # level 2: not C1 (P0), B12 and A11 (P1: only A2 before); C2 counts under C, seen via C1
    assert nxt.ccs_lvl2_seen_before == 5 / 8


def test_level_ancestor_rule(ontology: Ontology) -> None:
    lvl1, lvl2 = level_ancestor(ontology, 1), level_ancestor(ontology, 2)
    idx = ontology.index
    assert [ontology.ids[lvl1[idx(c)]] for c in ("A11", "B12", "C2", "A1")] == ["A", "B", "C", "A"]
    assert [ontology.ids[lvl2[idx(c)]] for c in ("A11", "A21", "B12", "C1", "A1")] == [
        "A1",
        "A2",
        "B1",
        "C",
        "A",
    ]


def test_vectorised_equals_a_plain_loop() -> None:
    """The arrays' figures against a per-patient Python loop on random data."""
    ontology = hapnet.load_ontology("icd9-ccs")
    rng = np.random.default_rng(0)
    leaves = np.flatnonzero(ontology.is_leaf)[:300]
    n_visits = rng.integers(2, 6, 40)
    visits = [np.unique(rng.choice(leaves, rng.integers(1, 8))) for _ in range(n_visits.sum())]
    patient_offsets = np.r_[0, np.cumsum(n_visits)]
    visit_offsets = np.r_[0, np.cumsum([len(v) for v in visits])]
    stats = compute_stats(patient_offsets, visit_offsets, np.concatenate(visits), ontology)
    lvl2 = level_ancestor(ontology, 2)
    prev = earlier = cat = rows = 0
    for p in range(len(n_visits)):
        history = visits[patient_offsets[p] : patient_offsets[p + 1]]
        for t in range(1, len(history)):
            seen = set(np.concatenate(history[:t]).tolist())
            seen_cat = {lvl2[c] for c in seen}
            for code in history[t]:
                rows += 1
                prev += code in set(history[t - 1].tolist())
                earlier += code in seen
                cat += lvl2[code] in seen_cat
    nxt = stats.next_visit_codes
    assert nxt.in_previous_visit == pytest.approx(prev / rows)
    assert nxt.in_any_earlier_visit == pytest.approx(earlier / rows)
    assert nxt.ccs_lvl2_seen_before == pytest.approx(cat / rows)


def test_reference_layout_round_trip_and_differences(tmp_path) -> None:
    reference = load_stats("mimic3")
    assert reference.patients_2plus == 7499 and reference.code_frequency.median_count == 4.0
    assert reference.to_dict()["next_visit_codes"]["ccs_lvl2_seen_before"] == 0.6412
    saved = tmp_path / "ref.json"
    saved.write_text(json.dumps(reference.to_dict()))
    assert load_stats(saved) == reference
    diffs = relative_differences(reference, reference)
    assert len(diffs) == 24 and set(diffs.values()) == {0.0}


def test_bad_inputs(tmp_path, ontology: Ontology) -> None:
    with pytest.raises(InputError, match="not found"):
        load_stats(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"visits": 3}')
    with pytest.raises(InputError, match="not a data-stats JSON"):
        load_stats(tmp_path / "bad.json")
    one_visit = visits_from_lists([[["A11"]]], ontology, min_visits=1)
    with pytest.raises(HapnetError, match="no patient with 2 or more visits"):
        hapnet.data_stats(one_visit)
