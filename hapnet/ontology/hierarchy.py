"""The compiled form of an ontology: the edge lists HAP's and GRAM's attention runs on.

Each `Step` is one vectorised attention round: every target attends over its candidates
(itself included), grouped by `edge_target`. Arrays are numpy so that building them needs no
torch; the models turn them into tensors once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hapnet.ontology.graph import Ontology


@dataclass
class Step:
    """One attention round: `targets[edge_target[e]]` attends to node `edge_source[e]`."""

    level: int
    targets: np.ndarray  # int64 [T] node indices updated by this step (distinct)
    edge_target: np.ndarray  # int64 [C] position in `targets` of each candidate's target
    edge_source: np.ndarray  # int64 [C] node index of each candidate (self candidates first)

    @property
    def num_candidates(self) -> int:
        return len(self.edge_source)

    def keep(self, active: np.ndarray) -> Step:
        """The part of this step whose targets are `active` (a bool mask over `targets`), in the
        same order, self candidates still first."""
        keep = active[self.edge_target]
        position = np.full(len(self.targets), -1, dtype=np.int64)
        position[active] = np.arange(int(active.sum()))
        edge_target = position[self.edge_target[keep]]
        return Step(self.level, self.targets[active], edge_target, self.edge_source[keep])


def _step(level: int, targets_of_edges: np.ndarray, sources_of_edges: np.ndarray) -> Step:
    targets, position = np.unique(targets_of_edges, return_inverse=True)
    self_pos = np.arange(len(targets), dtype=np.int64)
    return Step(
        level=level,
        targets=targets.astype(np.int64),
        edge_target=np.concatenate([self_pos, position.astype(np.int64)]),
        edge_source=np.concatenate([targets, sources_of_edges]).astype(np.int64),
    )


@dataclass
class Hierarchy:
    """HAP's bottom-up and top-down steps, per level, for a (possibly truncated) ontology."""

    num_nodes: int
    bottom_up: list[Step]  # parent levels L-1 down to the cut
    top_down: list[Step]  # child levels cut+1 up to L
    ontology: Ontology
    _ancestors: list[frozenset[int]] | None = field(default=None, repr=False)

    @classmethod
    def from_ontology(cls, ontology: Ontology) -> Hierarchy:
        parent_level = ontology.levels[ontology.edge_parent]
        child_level = ontology.levels[ontology.edge_child]
        bottom_up = []
        for level in range(ontology.depth - 1, ontology.cut_level - 1, -1):
            mask = parent_level == level
            if mask.any():
                bottom_up.append(_step(level, ontology.edge_parent[mask], ontology.edge_child[mask]))
        top_down = []
        for level in range(ontology.cut_level + 1, ontology.depth + 1):
            mask = child_level == level
            if mask.any():
                top_down.append(_step(level, ontology.edge_child[mask], ontology.edge_parent[mask]))
        return cls(len(ontology), bottom_up, top_down, ontology)

    def ancestor_step(self, targets: np.ndarray) -> Step:
        """GRAM's single round: each target attends over itself and all its ancestors in range."""
        if self._ancestors is None:  # 0.2 s on icd10cm: computed once per hierarchy
            self._ancestors = ancestor_sets(self.ontology)
        ancestors = self._ancestors
        targets = np.asarray(targets, dtype=np.int64)
        position = [np.full(len(ancestors[t]), i, dtype=np.int64) for i, t in enumerate(targets)]
        source = [np.fromiter(ancestors[t], dtype=np.int64) for t in targets]
        return Step(
            level=-1,
            targets=targets,
            edge_target=np.concatenate([np.arange(len(targets), dtype=np.int64), *position]),
            edge_source=np.concatenate([targets, *source]),
        )

    def nodes_in_hierarchy(self) -> np.ndarray:
        """Nodes touched by at least one edge (the rest keep their base embedding)."""
        onto = self.ontology
        return np.unique(np.concatenate([onto.edge_parent, onto.edge_child]))


def ancestor_sets(ontology: Ontology) -> list[frozenset[int]]:
    """For every node, the set of its ancestors using the ontology's (truncated) edges."""
    offsets, parents = ontology._parents_csr
    result: list[frozenset[int]] = [frozenset()] * len(ontology)
    # Nodes are sorted by level, so every parent is finished before its children.
    for node in range(len(ontology)):
        ups = parents[offsets[node] : offsets[node + 1]]
        if len(ups) == 1:
            p = int(ups[0])
            result[node] = result[p] | {p}
        elif len(ups) > 1:
            acc: set[int] = set()
            for p in ups:
                acc.add(int(p))
                acc |= result[p]
            result[node] = frozenset(acc)
    return result


def ancestors_at_level(
    ontology: Ontology, nodes: np.ndarray, level: int, above: list[frozenset[int]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ancestors at `level` of each of `nodes`, as CSR (offsets [len(nodes)+1], ancestors).

    A node at `level` or above has none; in a DAG a node may have several. Uses the ontology's
    (truncated) edges; levels are longest paths from the root. `above`: `ancestor_sets(ontology)`
    when the caller already has it (several levels of one ontology).
    """
    nodes = np.asarray(nodes, dtype=np.int64)
    above = ancestor_sets(ontology) if above is None else above
    lists = [sorted(a for a in above[n] if ontology.levels[a] == level) for n in nodes]
    offsets = np.zeros(len(nodes) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in lists], out=offsets[1:])
    flat = np.fromiter((a for x in lists for a in x), dtype=np.int64, count=int(offsets[-1]))
    return offsets, flat
