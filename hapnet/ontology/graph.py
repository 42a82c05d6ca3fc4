"""The ontology as a leveled DAG: one artificial root, category nodes and code nodes.

Nodes are stored sorted by level (root first), so every level is a contiguous index range.
Level = length of the longest path from the root, so every parent sits on a lower level than
each of its children (what level-by-level propagation needs; see docs/algorithms.md).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

import networkx as nx
import numpy as np

from hapnet.errors import HapnetError, InputError
from hapnet.ontology.codes import icd_prefixes, normalize_code

ROOT = "<ROOT>"

EXACT, MAPPED, UNKNOWN = "exact", "mapped", "unknown"


@dataclass(frozen=True)
class Resolution:
    """Where a raw code lands in the ontology: `index` is -1 when unknown."""

    code: str
    index: int
    status: str  # EXACT, MAPPED (nearest ancestor by ICD prefix) or UNKNOWN


@dataclass
class Ontology:
    """A leveled DAG. Build it with `Ontology.from_edges`; node 0 is the root."""

    name: str
    ids: list[str]
    descriptions: list[str]
    edge_parent: np.ndarray  # int64 [E], parent index of each edge
    edge_child: np.ndarray  # int64 [E], child index of each edge
    levels: np.ndarray  # int64 [N], longest path from the root
    cut_level: int = 0  # set by truncate(): nodes below this level take no part
    source: str = ""
    _index: dict[str, int] = field(default=None, repr=False)  # type: ignore[assignment]
    # Children counts before truncate() (which drops every edge out of a node below the cut).
    _full_num_children: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self._index is None:
            self._index = {node: i for i, node in enumerate(self.ids)}

    # ----------------------------------------------------------------- building
    @classmethod
    def from_edges(
        cls,
        name: str,
        edges: Iterable[tuple[str, str]],
        descriptions: dict[str, str] | None = None,
        *,
        source: str = "",
    ) -> Ontology:
        """Build from (parent, child) id pairs; a parent of "" only declares the child.

        Duplicate edges are merged; parents named but never declared become nodes; nodes with
        no parent (top level) hang under the root. Self-loops and cycles raise `InputError`
        naming the nodes.
        """
        descriptions = descriptions or {}
        graph = nx.DiGraph()
        graph.add_nodes_from(descriptions)
        for parent, child in edges:
            if parent == child:
                raise InputError(source or name, f"self-loop: {child!r} is its own parent")
            if parent:
                graph.add_edge(parent, child)
            else:
                graph.add_node(child)
        if ROOT in graph:
            raise InputError(source or name, f"{ROOT!r} is reserved for the artificial root")
        if graph.number_of_nodes() == 0:
            raise InputError(source or name, "no nodes")
        tops = [n for n, indegree in graph.in_degree() if indegree == 0]
        graph.add_edges_from((ROOT, n) for n in tops)
        try:
            order = list(nx.topological_sort(graph))
        except nx.NetworkXUnfeasible:  # only then look for the cycle to name it (slower)
            cycle = nx.find_cycle(graph)
            nodes = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
            raise InputError(source or name, f"cycle (parent -> child): {nodes}") from None

        level = {ROOT: 0}
        for node in order[1:]:  # the root comes first: it is the only node without a parent
            level[node] = 1 + max(level[p] for p in graph.predecessors(node))
        # Root first, then by level; within a level, the order the nodes were first seen.
        first_seen = {n: i for i, n in enumerate(graph.nodes)}
        ids = sorted(level, key=lambda n: (level[n], first_seen[n]))
        index = {n: i for i, n in enumerate(ids)}
        edge_array = np.array([(index[p], index[c]) for p, c in graph.edges], dtype=np.int64)
        order = np.lexsort((edge_array[:, 0], edge_array[:, 1]))  # by child, then parent
        edge_array = edge_array[order]
        return cls(
            name=name,
            ids=ids,
            descriptions=[descriptions.get(n, "") if n != ROOT else name for n in ids],
            edge_parent=edge_array[:, 0].copy(),
            edge_child=edge_array[:, 1].copy(),
            levels=np.array([level[n] for n in ids], dtype=np.int64),
            source=source,
            _index=index,
        )

    # ----------------------------------------------------------------- basic facts
    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self) -> str:
        """sha256 of the nodes in index order (ids, levels) and the edges: two ontologies with the
        same fingerprint give every code the same node index, so a model's weights mean the same."""
        digest = hashlib.sha256()
        ids = "\n".join(self.ids).encode()
        for part in (ids, self.levels, self.edge_parent, self.edge_child):
            raw = part if isinstance(part, bytes) else np.ascontiguousarray(part, dtype=np.int64).tobytes()
            digest.update(len(raw).to_bytes(8, "little") + raw)  # lengths keep the parts apart
        return digest.hexdigest()

    def __contains__(self, node_id: str) -> bool:
        return node_id in self._index

    def find(self, node_id: str) -> int | None:
        """Index of a node id as written or after normalisation (no prefix mapping), else None."""
        found = self._index.get(node_id)
        if found is None:
            found = self._index.get(normalize_code(node_id))
        return found

    def index(self, node_id: str) -> int:
        """Index of a node id as written or after normalisation; `HapnetError` names it if absent."""
        found = self.find(node_id)
        if found is None:
            raise HapnetError(f"{self.source or self.name}: unknown code {node_id!r}")
        return found

    @property
    def num_edges(self) -> int:
        return len(self.edge_parent)

    @property
    def depth(self) -> int:
        """The largest level (L in docs/algorithms.md)."""
        return int(self.levels.max())

    @cached_property
    def num_children(self) -> np.ndarray:
        return np.bincount(self.edge_parent, minlength=len(self))

    @property
    def _children_before_truncation(self) -> np.ndarray:
        return self.num_children if self._full_num_children is None else self._full_num_children

    @cached_property
    def num_parents(self) -> np.ndarray:
        return np.bincount(self.edge_child, minlength=len(self))

    @cached_property
    def first_parent(self) -> np.ndarray:
        """[N] each node's first parent (in edge order; a DAG node with several parents uses its
        first); 0, the root, for the root itself."""
        first = np.zeros(len(self), dtype=np.int64)
        first[self.edge_child[::-1]] = self.edge_parent[::-1]  # reversed: the first edge writes last
        return first

    @cached_property
    def is_leaf(self) -> np.ndarray:
        leaf = self.num_children == 0
        leaf[0] = False  # the root is never a code, even with no children
        return leaf

    @cached_property
    def level_offsets(self) -> np.ndarray:
        """Nodes of level l are indices level_offsets[l] .. level_offsets[l+1]-1."""
        counts = np.bincount(self.levels, minlength=self.depth + 1)
        return np.concatenate([[0], np.cumsum(counts)])

    def per_level(self) -> list[int]:
        """Count of nodes taking part at each level 0..depth (levels below the cut count 0)."""
        counts = np.bincount(self.levels, minlength=self.depth + 1)
        counts[: self.cut_level] = 0
        return counts.tolist()

    def summary(self) -> dict:
        """The figures `hapnet ontology info` prints."""
        active = self.levels >= self.cut_level
        per_level = self.per_level()
        # Leaves of the full ontology below the cut: codes with no ancestor in range.
        full_leaf = self._children_before_truncation == 0
        full_leaf[0] = False
        return {
            "name": self.name,
            "source": self.source,
            "nodes": int(sum(per_level)),
            "edges": self.num_edges,
            "leaves": int((self.is_leaf & active).sum()),
            "depth": self.depth,
            "per_level": per_level,
            "multi_parent": int((self.num_parents > 1).sum()),
            "max_parents": int(self.num_parents.max()),
            "max_children": int(self.num_children.max()),
            "cut_level": self.cut_level,
            "standalone_below_cut": int((full_leaf & ~active).sum()),
        }

    # ----------------------------------------------------------------- navigation
    @cached_property
    def _children_csr(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(self.edge_parent, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(self.num_children)])
        return offsets, self.edge_child[order]

    @cached_property
    def _parents_csr(self) -> tuple[np.ndarray, np.ndarray]:
        # edges are sorted by child already (from_edges), keep that invariant in truncate()
        offsets = np.concatenate([[0], np.cumsum(self.num_parents)])
        return offsets, self.edge_parent

    def children(self, i: int) -> np.ndarray:
        offsets, targets = self._children_csr
        return targets[offsets[i] : offsets[i + 1]]

    def parents(self, i: int) -> np.ndarray:
        offsets, targets = self._parents_csr
        return targets[offsets[i] : offsets[i + 1]]

    def ancestors(self, i: int) -> list[int]:
        """All ancestors of node i (root included unless truncated away), nearest levels first."""
        seen: set[int] = set()
        frontier = list(self.parents(i))
        while frontier:
            node = frontier.pop()
            if node not in seen:
                seen.add(int(node))
                frontier.extend(self.parents(node))
        return sorted(seen, key=lambda n: (-self.levels[n], n))

    def paths_to_root(self, i: int, limit: int = 20) -> list[list[int]]:
        """Every path from node i up to a top node (at most `limit` of them), i first."""
        paths: list[list[int]] = []

        def walk(node: int, path: list[int]) -> None:
            if len(paths) >= limit:
                return
            ups = self.parents(node)
            if len(ups) == 0:
                paths.append(path)
            for parent in ups:
                walk(int(parent), path + [int(parent)])

        walk(i, [i])
        return paths

    # ----------------------------------------------------------------- codes from data
    def resolve(self, code: str) -> Resolution:
        """Exact node, else the nearest ancestor by ICD prefix truncation, else unknown."""
        normalized = normalize_code(code)
        exact = self._index.get(normalized)
        if exact is not None and exact != 0:
            return Resolution(normalized, exact, EXACT)
        for prefix in icd_prefixes(normalized):
            found = self._index.get(prefix)
            if found is not None and found != 0:
                return Resolution(normalized, found, MAPPED)
        return Resolution(normalized, -1, UNKNOWN)

    def resolve_many(self, codes: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
        """Resolve distinct raw codes: node indices (-1 unknown) and counts per status."""
        results = [self.resolve(code) for code in codes]
        counts = Counter(r.status for r in results)
        indices = np.array([r.index for r in results], dtype=np.int64)
        return indices, {s: counts.get(s, 0) for s in (EXACT, MAPPED, UNKNOWN)}

    # ----------------------------------------------------------------- truncation
    def truncate(self, levels: int | None) -> Ontology:
        """Keep only the lowest K levels (docs/algorithms.md): nodes with level >= L - K + 1 take part.

        Node indices do not change; edges whose parent lies below the cut are dropped, so nodes
        below the cut (and codes left without an ancestor in range) keep their own embedding.
        K = L + 1, or None, is the full hierarchy; K = 1 leaves no edge at all.
        """
        if levels is None:
            return self
        if levels < 1:
            raise HapnetError(f"--levels must be at least 1, got {levels}")
        cut = max(0, self.depth - levels + 1)
        if cut <= self.cut_level:
            return self
        keep = self.levels[self.edge_parent] >= cut
        return Ontology(
            name=self.name,
            ids=self.ids,
            descriptions=self.descriptions,
            edge_parent=self.edge_parent[keep],
            edge_child=self.edge_child[keep],
            levels=self.levels,
            cut_level=cut,
            source=self.source,
            _index=self._index,
            _full_num_children=self._children_before_truncation,
        )

    def prune(self, observed: np.ndarray) -> Ontology:
        """Keep only the edges on paths from the root to the `observed` nodes (codes seen in the
        data): the observed codes and their ancestors take part, every other node has no edge.

        This is the DAG the papers' code trains on (HAP's and GRAM's build_trees.py keep only
        the codes found in the data). Node indices do not change; apply after `truncate`.
        """
        keep = np.zeros(len(self), dtype=bool)
        keep[np.asarray(observed, dtype=np.int64)] = True
        child_level = self.levels[self.edge_child]
        for level in range(self.depth, self.cut_level, -1):  # children before their parents
            edges = child_level == level
            keep[self.edge_parent[edges & keep[self.edge_child]]] = True
        edges = keep[self.edge_child]
        return replace(
            self,
            edge_parent=self.edge_parent[edges],
            edge_child=self.edge_child[edges],
            _full_num_children=self._children_before_truncation,
        )
