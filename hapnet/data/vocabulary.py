"""The observable codes of a data set, as prediction classes: class index <-> ontology node."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Vocabulary:
    """The observable codes: class index <-> ontology node index."""

    nodes: np.ndarray  # [C] node index of each class
    code_to_class: np.ndarray  # [num_nodes] class index, -1 for nodes that are not observable

    @classmethod
    def from_nodes(cls, nodes: np.ndarray, num_nodes: int) -> Vocabulary:
        nodes = np.asarray(nodes, dtype=np.int64)
        code_to_class = np.full(num_nodes, -1, dtype=np.int64)
        code_to_class[nodes] = np.arange(len(nodes))
        return cls(nodes, code_to_class)

    def __len__(self) -> int:
        return len(self.nodes)
