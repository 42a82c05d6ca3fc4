"""Auxiliary targets (the next visit's categories at a level) and visit gaps as batch inputs,
checked on hand-made cases."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch

from hapnet.data.batches import BatchBuilder, visit_gap_features
from hapnet.data.loaders import visits_from_frame, visits_from_lists
from hapnet.data.tasks import category_tasks
from hapnet.data.vocabulary import Vocabulary
from hapnet.errors import HapnetError
from hapnet.ontology.graph import Ontology
from hapnet.ontology.hierarchy import ancestors_at_level

# root -> A, B (level 1) -> A1, A2, B1 (level 2) -> codes 11, 12, 21, 15 (level 3); 15 has parents
# A1 and B1; 19 hangs directly under A (level 2), so it has no level-2 ancestor.
EDGES = [("", "A"), ("", "B"), ("A", "A1"), ("A", "A2"), ("B", "B1")]
EDGES += [("A1", "11"), ("A2", "12"), ("B1", "21"), ("A1", "15"), ("B1", "15"), ("A", "19")]


def ontology() -> Ontology:
    return Ontology.from_edges("dag", EDGES)


def test_ancestors_at_a_level_in_a_dag():
    onto = ontology()
    nodes = [onto.index(c) for c in ("11", "15", "19", "A")]
    offsets, level1 = ancestors_at_level(onto, nodes, 1)
    assert offsets.tolist() == [0, 1, 3, 4, 4]
    assert [onto.ids[i] for i in level1] == ["A", "A", "B", "A"]
    offsets, level2 = ancestors_at_level(onto, nodes, 2)
    assert offsets.tolist() == [0, 1, 3, 3, 3]  # 19 is itself at level 2: no level-2 ancestor
    assert sorted(onto.ids[i] for i in level2[1:3]) == ["A1", "B1"]


def test_next_visit_categories_are_the_distinct_ancestors_of_its_codes():
    onto = ontology()
    data = visits_from_lists([[["11"], ["12", "15", "21"], ["19"]]], onto)
    vocab = Vocabulary.from_nodes(np.unique(data.codes), len(onto))
    level1, level2 = category_tasks(onto, vocab.nodes, [1, 2])
    assert [onto.ids[i] for i in level1.categories] == ["A", "B"]
    assert [onto.ids[i] for i in level2.categories] == ["A1", "A2", "B1"]
    batch = BatchBuilder(data, vocab.code_to_class, [level1, level2]).build(np.array([0]))
    rows, cats = batch.aux_targets["level1"]
    # step 0 predicts {12, 15, 21}: A, A, B, B -> {A, B}; step 1 predicts {19} -> {A}
    assert rows.tolist() == [0, 0, 1] and cats.tolist() == [0, 1, 0]
    rows, cats = batch.aux_targets["level2"]
    # step 0: 12 -> A2, 15 -> A1 and B1, 21 -> B1; step 1: 19 has no level-2 ancestor
    assert rows.tolist() == [0, 0, 0] and cats.tolist() == [0, 1, 2]
    dense = batch.targets(3, "level2")
    assert dense.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]


def test_a_level_without_categories_is_refused():
    onto = ontology()
    with pytest.raises(HapnetError, match="no code of the data has an ancestor at level 3"):
        category_tasks(onto, np.array([onto.index("11")]), [3])
    with pytest.raises(HapnetError, match="levels start at 1"):
        category_tasks(onto, np.array([onto.index("11")]), [0])


def test_visit_gaps_are_log_days_since_the_previous_visit():
    onto = ontology()
    frame = pd.DataFrame(
        {
            "patient": [1, 1, 1, 2, 2],
            "time": pd.to_datetime(
                [
                    "2020-01-01 00:00",
                    "2020-01-04 00:00",
                    "2020-01-11 00:00",
                    "2021-05-01 00:00",
                    "2021-05-01 12:00",
                ],
                format="ISO8601",
            ),
            "visit": [1, 2, 3, 4, 5],
            "code": ["11", "12", "21", "15", "11"],
        }
    )
    data = visits_from_frame(frame, onto)
    gaps = visit_gap_features(data)
    assert np.allclose(gaps, np.log1p([0, 3, 7, 0, 0.5]))
    batch = BatchBuilder(data, np.arange(len(onto)), gaps=True).build(np.array([0, 1]))
    # packed rows, time-major, longest patient first: (p0 t0, p1 t0, p0 t1)
    assert torch.allclose(batch.input_gaps, torch.tensor(np.log1p([0, 0, 3]), dtype=torch.float32))


def test_numeric_times_count_days():
    onto = ontology()
    csv = io.StringIO("patient,time,code\n1,10,a1\n1,12.5,a2\n")
    data = visits_from_frame(pd.read_csv(csv), onto)
    assert np.allclose(visit_gap_features(data), np.log1p([0, 2.5]))


def test_gaps_need_times():
    data = visits_from_lists([[["11"], ["12"]]], ontology())
    with pytest.raises(HapnetError, match="no visit times"):
        visit_gap_features(data)
