"""Auxiliary prediction tasks: the next visit's ancestor categories at chosen ontology levels.

Task "level2" asks which level-2 categories (CCS level 2 on icd9-ccs) the next visit's codes fall
under: the targets of a step are the distinct level-2 ancestors of its target codes. In a DAG a
code may have several ancestors at a level; a code at or above the level has none there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hapnet.errors import HapnetError
from hapnet.ontology.graph import Ontology
from hapnet.ontology.hierarchy import ancestor_sets, ancestors_at_level
from hapnet.utils.arrays import concat_ranges, range_owners, sorted_unique


@dataclass(frozen=True)
class CategoryTask:
    """Class -> categories at one level, as CSR over the prediction classes."""

    name: str  # "level2": the head's name in the model, metrics and history
    level: int
    categories: np.ndarray  # [K] ontology node of each category (sorted)
    offsets: np.ndarray  # [C+1] categories of class c: members[offsets[c]:offsets[c+1]]
    members: np.ndarray  # category indices 0..K-1

    @property
    def num_categories(self) -> int:
        return len(self.categories)

    def expand(self, rows: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, class) target pairs -> distinct (row, category) pairs, sorted by row."""
        counts = np.diff(self.offsets)[classes]
        categories = self.members[concat_ranges(self.offsets[classes], counts)]
        keys = sorted_unique(rows[range_owners(counts)] * self.num_categories + categories)
        return keys // self.num_categories, keys % self.num_categories


def task_name(level: int) -> str:
    return f"level{level}"


def category_tasks(ontology: Ontology, class_nodes: np.ndarray, levels: list[int]) -> list[CategoryTask]:
    """One task per level, over the categories that hold at least one of the classes' codes."""
    tasks = []
    above = ancestor_sets(ontology) if levels else None
    for level in levels:
        if level < 1:
            raise HapnetError(f"--aux-levels: level {level} is the root or above; levels start at 1")
        offsets, ancestors = ancestors_at_level(ontology, class_nodes, level, above)
        if len(ancestors) == 0:
            raise HapnetError(
                f"--aux-levels: no code of the data has an ancestor at level {level} in ontology "
                f"{ontology.name} (its deepest level is {ontology.depth})"
            )
        categories, members = np.unique(ancestors, return_inverse=True)
        tasks.append(CategoryTask(task_name(level), level, categories, offsets, members.reshape(-1)))
    return tasks
