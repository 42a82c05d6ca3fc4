"""Code embedders (HAP, GRAM, RNN = plain, Rollup) and the model registry `MODELS`.

An embedder is an `nn.Module` built from `(hierarchy, vocab, config)`: `forward()` returns the
final embeddings g [len(vocab), dim] of the observable codes `vocab` (ontology node indices).
Every embedder also has `init_base(vectors)` (GloVe initialisation of the base embeddings e of all
nodes), `all_node_embeddings()` (g for every node, for `hapnet embed`) and `explain(nodes)` (g as
a weighted sum of base embeddings, for `hapnet explain`). The algorithms: docs/algorithms.md.

The CLI and the library both read `MODELS`; `register_model` adds a model to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hapnet.errors import HapnetError
from hapnet.hierarchy import Hierarchy, Step
from hapnet.propagation import (
    AttentionScorer,
    Candidates,
    EdgeIndex,
    attend,
    attend_candidates,
    gather_rows,
    weighted_sum,
)


@dataclass
class EmbedderConfig:
    dim: int = 400  # d: embedding size (the paper's 400)
    attention_dim: int = 100  # a: attention size (the paper's 100)
    init_std: float = 0.1  # base embeddings start as N(0, init_std^2) unless GloVe-initialised
    # Which nodes get a base embedding: "all", or "used": the observable codes and the nodes on the
    # hierarchy's edges (with an ontology pruned to the observed codes, nothing else is ever read).
    base_nodes: str = "all"


class CodeEmbedder(nn.Module):
    """What every embedder shares: base embeddings e (one row per node in `base_nodes`, all nodes
    by default) and the vocab as a buffer. Node indices go through `rows` to reach the table."""

    # True where embedding some codes costs much less than embedding them all (the attention
    # models): training then embeds only the codes of each batch's visits (`embed`).
    subset_is_cheaper = False

    def __init__(self, hierarchy: Hierarchy, vocab: np.ndarray, config: EmbedderConfig):
        super().__init__()
        self.hierarchy = hierarchy
        self.config = config
        self.num_nodes = hierarchy.num_nodes
        vocab = np.asarray(vocab, dtype=np.int64)
        if vocab.ndim != 1 or len(vocab) == 0:
            raise HapnetError("the vocabulary of observable codes is empty")
        if vocab.min() < 0 or vocab.max() >= self.num_nodes:
            raise HapnetError(f"vocabulary node index out of range 0..{self.num_nodes - 1}")
        self.vocab_nodes = vocab
        if config.base_nodes == "used":
            self.base_nodes = np.union1d(vocab, hierarchy.nodes_in_hierarchy())
        elif config.base_nodes == "all":
            self.base_nodes = np.arange(self.num_nodes)
        else:
            raise ValueError(f"base_nodes must be 'all' or 'used', got {config.base_nodes!r}")
        self._row_of = np.full(self.num_nodes, -1, dtype=np.int64)
        self._row_of[self.base_nodes] = np.arange(len(self.base_nodes))
        _index_buffer(self, "vocab_rows", self.rows(vocab))
        self.base = nn.Embedding(len(self.base_nodes), config.dim)
        nn.init.normal_(self.base.weight, std=config.init_std)

    def rows(self, nodes: Sequence[int] | np.ndarray) -> np.ndarray:
        """Row of the base table of each node (`HapnetError` for a node without a base embedding)."""
        nodes = np.asarray(nodes, dtype=np.int64)
        rows = self._row_of[nodes]
        if len(rows) and rows.min() < 0:
            missing = self.hierarchy.ontology.ids[nodes[rows < 0][0]]
            raise HapnetError(
                f"{missing!r} has no embedding in this model: it holds only the codes seen in its "
                "training data and their ancestors (ontology_scope 'observed')"
            )
        return rows

    @torch.no_grad()
    def init_base(self, vectors: Tensor) -> None:
        """Set the base embeddings from vectors of all nodes (GloVe initialisation), [num_nodes, dim]."""
        expected = (self.num_nodes, self.base.weight.shape[1])
        if tuple(vectors.shape) != expected:
            raise HapnetError(f"initial vectors have shape {tuple(vectors.shape)}, expected {expected}")
        if len(self.base_nodes) < self.num_nodes:
            vectors = vectors[torch.from_numpy(self.base_nodes).to(vectors.device)]
        self.base.weight.copy_(vectors)

    def embed(self, classes: np.ndarray) -> Tensor:
        """g of the codes `vocab[classes]` (distinct positions), [len(classes), dim]: the same
        rows as `forward()`, computed with as little work as the model allows."""
        return self().index_select(0, torch.from_numpy(classes).to(self.base.weight.device))

    def base_embeddings(self) -> Tensor:
        """Base embeddings e of every node, [num_nodes, dim]; NaN rows for the nodes without one."""
        return self._every_node(self.base.weight)

    def all_node_embeddings(self) -> Tensor:
        """Final embeddings g of every node, [num_nodes, dim]; NaN rows for the nodes without a
        base embedding (not in `base_nodes`)."""
        raise NotImplementedError

    def _every_node(self, g: Tensor, fill: float = float("nan")) -> Tensor:
        """[num_nodes, dim] from g of `base_nodes` (in order), `fill` for the other nodes."""
        if len(self.base_nodes) == self.num_nodes:
            return g
        out = g.new_full((self.num_nodes, g.shape[1]), fill)
        return out.index_copy(0, torch.from_numpy(self.base_nodes).to(g.device), g)

    def explain(self, nodes: Sequence[int] | np.ndarray) -> Tensor:
        """W [len(nodes), num_nodes] with g_c = sum_j W[c, j] e_j (attention weights as computed)."""
        raise NotImplementedError

    def _nodes(self, nodes: Sequence[int] | np.ndarray) -> np.ndarray:
        nodes = np.asarray(nodes, dtype=np.int64).reshape(-1)
        if len(nodes) and (nodes.min() < 0 or nodes.max() >= self.num_nodes):
            raise HapnetError(f"node index out of range 0..{self.num_nodes - 1}")
        self.rows(nodes)  # every node explained must have an embedding
        return nodes


def _index_buffer(module: nn.Module, name: str, array: np.ndarray | None) -> None:
    """Register an int64 index array as a non-persistent buffer (None stays None)."""
    tensor = None if array is None else torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
    module.register_buffer(name, tensor, persistent=False)


# ============================================================================= plain and rollup
class PlainEmbedder(CodeEmbedder):
    """RNN (and RNN+ with GloVe): g_c = e_c, no ontology."""

    def forward(self) -> Tensor:
        return self.base.weight.index_select(0, self.vocab_rows)

    def all_node_embeddings(self) -> Tensor:
        return self._every_node(self.base.weight)

    def explain(self, nodes: Sequence[int] | np.ndarray) -> Tensor:
        nodes = self._nodes(nodes)
        weight = self.base.weight.new_zeros((len(nodes), self.num_nodes))
        weight[np.arange(len(nodes)), nodes] = 1
        return weight


def _parent_weights(hierarchy: Hierarchy, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rollup's (position, source node, weight) triples: the mean of each node's immediate parents
    in range, or the node itself when it has none (root, nodes below the cut, K = 1)."""
    offsets, parents = hierarchy.ontology._parents_csr
    counts = offsets[nodes + 1] - offsets[nodes]
    own = counts == 0
    positions = np.repeat(np.arange(len(nodes)), np.where(own, 1, counts))
    starts = np.repeat(offsets[nodes], counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    sources = np.empty(len(positions), dtype=np.int64)
    has_parent = ~own[positions]
    sources[has_parent] = parents[starts + within]
    sources[~has_parent] = nodes[own]
    weights = 1.0 / np.where(own, 1, counts)[positions]
    return positions, sources, weights


class RollupEmbedder(CodeEmbedder):
    """Rollup: g_c = e of c's immediate parent; the prediction targets stay the exact codes.

    A code with several parents (a DAG such as CCSR) gets the mean of its parents' embeddings,
    so every parent counts and the result does not depend on edge order. A code with no parent in
    range (truncated away, K = 1) keeps its own embedding.
    """

    def __init__(self, hierarchy: Hierarchy, vocab: np.ndarray, config: EmbedderConfig):
        super().__init__(hierarchy, vocab, config)
        positions, sources, weights = _parent_weights(hierarchy, self.vocab_nodes)
        _index_buffer(self, "positions", positions)
        _index_buffer(self, "sources", self.rows(sources))
        self.register_buffer("weights", torch.from_numpy(weights), persistent=False)
        self._single = len(positions) == len(self.vocab_nodes)  # one source per code: no sum

    def _rollup(
        self, positions: Tensor, sources: Tensor, weights: Tensor, count: int, single: bool
    ) -> Tensor:
        e = self.base.weight
        rows = e.index_select(0, sources)  # base-table rows
        if single:
            return rows
        return rows.new_zeros((count, e.shape[1])).index_add(0, positions, rows * weights.to(e).unsqueeze(1))

    def forward(self) -> Tensor:
        return self._rollup(self.positions, self.sources, self.weights, len(self.vocab_nodes), self._single)

    def all_node_embeddings(self) -> Tensor:
        positions, sources, weights = _parent_weights(self.hierarchy, self.base_nodes)
        device = self.base.weight.device
        g = self._rollup(
            torch.from_numpy(positions).to(device),
            torch.from_numpy(self.rows(sources)).to(device),
            torch.from_numpy(weights).to(device),
            len(self.base_nodes),
            False,
        )
        return self._every_node(g)

    def explain(self, nodes: Sequence[int] | np.ndarray) -> Tensor:
        nodes = self._nodes(nodes)
        positions, sources, weights = _parent_weights(self.hierarchy, nodes)
        out = self.base.weight.new_zeros((len(nodes), self.num_nodes))
        out.index_put_(
            (torch.from_numpy(positions).to(out.device), torch.from_numpy(sources).to(out.device)),
            torch.from_numpy(weights).to(out),
            accumulate=True,
        )
        return out


# ============================================================================= GRAM
class _AncestorIndex(nn.Module):
    """GRAM's attention round on compact rows: `rows` are the base rows of the distinct nodes in
    use, once each."""

    def __init__(self, step: Step, embedder: CodeEmbedder):
        super().__init__()
        nodes, local = np.unique(step.edge_source, return_inverse=True)
        self.step = step  # node indices, for explanations
        self.every_row = len(nodes) == len(embedder.base_nodes)  # then rows == arange: no gather
        _index_buffer(self, "rows", embedder.rows(nodes))
        _index_buffer(self, "query_rows", np.searchsorted(nodes, step.targets))
        self.edges = EdgeIndex(step.edge_target, local.reshape(-1), len(step.targets))


class GRAMEmbedder(CodeEmbedder):
    """GRAM: g_c = sum over j in {c} ∪ Anc(c) of alpha_cj e_j, alpha_c. = softmax_j f(e_c, e_j).

    Anc(c) comes from `hierarchy.ancestor_step`, so truncation (--levels) is already applied.
    """

    subset_is_cheaper = True

    def __init__(self, hierarchy: Hierarchy, vocab: np.ndarray, config: EmbedderConfig):
        super().__init__(hierarchy, vocab, config)
        self.attention = AttentionScorer(config.dim, config.attention_dim)
        self.index = _AncestorIndex(hierarchy.ancestor_step(self.vocab_nodes), self)
        self._all_nodes: _AncestorIndex | None = None

    def _run(self, index: _AncestorIndex) -> tuple[Tensor, Tensor]:
        weight = self.base.weight
        rows = weight if index.every_row else weight.index_select(0, index.rows)  # e of nodes in use
        return attend(index.edges, rows.index_select(0, index.query_rows), rows, self.attention)

    def forward(self) -> Tensor:
        return self._run(self.index)[0]

    def embed(self, classes: np.ndarray) -> Tensor:
        wanted = np.zeros(len(self.vocab_nodes), dtype=bool)
        wanted[classes] = True
        index = _AncestorIndex(self.index.step.keep(wanted), self).to(self.base.weight.device)
        g = self._run(index)[0]  # rows in vocab order
        rank = np.argsort(np.argsort(classes, kind="stable"), kind="stable")  # of each class
        if np.array_equal(rank, np.arange(len(rank))):
            return g
        return g.index_select(0, torch.from_numpy(rank).to(g.device))

    def all_node_embeddings(self) -> Tensor:
        if self._all_nodes is None:
            self._all_nodes = _AncestorIndex(self.hierarchy.ancestor_step(self.base_nodes), self)
        return self._every_node(self._run(self._all_nodes.to(self.base.weight.device))[0])

    @torch.no_grad()
    def explain(self, nodes: Sequence[int] | np.ndarray) -> Tensor:
        nodes = self._nodes(nodes)
        index = _AncestorIndex(self.hierarchy.ancestor_step(nodes), self).to(self.base.weight.device)
        _, alpha = self._run(index)
        out = alpha.new_zeros((len(nodes), self.num_nodes))
        where = [
            torch.from_numpy(a).to(alpha.device) for a in (index.step.edge_target, index.step.edge_source)
        ]
        out.index_put_(tuple(where), alpha, accumulate=True)
        return out


# ============================================================================= HAP
UP, DOWN = "up", "down"  # HAP's two scorers: f_up (bottom-up), f_down (top-down)
QUERY, KEY = "query", "key"


@dataclass
class _Table:
    """Rows of embeddings the plan keeps in one tensor: a piece of base embeddings, or one step's
    output."""

    nodes: np.ndarray  # node index of each row
    from_base: bool


@dataclass
class _Group:
    """Candidates of one step whose embeddings live in one table."""

    table: int
    source: np.ndarray | None  # row of the table per candidate (None: all rows, in order)
    target: np.ndarray | None  # target position per candidate, sorted (None: row i -> target i)


@dataclass
class _PlanStep:
    scorer: str  # UP or DOWN
    level: int
    targets: np.ndarray  # node indices, in output-row order
    groups: list[_Group]  # groups[0]: the self candidates, whose embeddings are also the queries
    out: int  # table holding the new embeddings


@dataclass
class _Part:
    """Some outputs of a restricted run (`_HAPPlan.restrict`): rows `rows` of table `table`, or,
    with `step` set, that terminal step run for the targets whose own embeddings are those rows
    (`edges`: its candidate groups cut to them, the self group first)."""

    positions: np.ndarray  # positions of these outputs among the wanted ones
    table: int
    rows: Tensor
    step: int | None = None
    edges: list[EdgeIndex] = field(default_factory=list)


class _HAPPlan(nn.Module):
    """HAP's two passes compiled for a set of output nodes: what to compute and where it lives.

    Each node's embedding changes at most twice (its bottom-up step, its top-down step), so every
    step writes its targets' new embeddings to a table of its own instead of updating a
    [num_nodes, dim] tensor: no step copies the whole embedding table. The base embeddings are
    read once (one gather) and split into pieces (each node in one piece), laid out so that the
    self candidates of a step are whole pieces in order. W_q and W_k are applied once per table
    (one matrix product for all the projections a table needs). Steps the outputs do not depend on are left
    out (top-down only runs over the outputs and their ancestors). A top-down level is split by
    the table its targets' own embeddings live in: its targets only read their parents, which
    are final already, so this changes nothing. Terminal steps (top-down steps no later step
    reads, the leaves') can also run for some of their targets only: `restrict`.
    """

    def __init__(self, hierarchy: Hierarchy, outputs: np.ndarray, embedder: CodeEmbedder):
        super().__init__()
        self.tables: list[_Table] = []
        self.steps: list[_PlanStep] = []
        outputs = np.asarray(outputs, dtype=np.int64)
        n = hierarchy.num_nodes
        bu_active, td_active = _needed(hierarchy, outputs)

        # Where each node's current embedding lives: (table, row); table -1: not read yet.
        self._table_of = np.full(n, -1, dtype=np.int64)
        self._row_of = np.zeros(n, dtype=np.int64)
        # Base pieces for the self candidates: bottom-up targets in step order, and top-down
        # targets still at their base embedding (leaves) in output order.
        updated = np.zeros(n, dtype=bool)
        for step, active in zip(hierarchy.bottom_up, bu_active, strict=True):
            if active.any():
                self._place(self._new_table(step.targets[active], True))
                updated[step.targets[active]] = True
        first_output = np.full(n, len(outputs), dtype=np.int64)
        first_output[outputs[::-1]] = np.arange(len(outputs) - 1, -1, -1)
        for step, active in zip(hierarchy.top_down, td_active, strict=True):
            leaves = step.targets[active & ~updated[step.targets]]
            if len(leaves):
                self._place(self._new_table(leaves[np.argsort(first_output[leaves], kind="stable")], True))

        for step, active in zip(hierarchy.bottom_up, bu_active, strict=True):
            self._add_step(UP, step, active)
        for step, active in zip(hierarchy.top_down, td_active, strict=True):
            self._add_step(DOWN, step, active)
        final = self._read(outputs)
        self.final = [(table, source) for table, source, _ in final]
        positions = np.concatenate([pos for _, _, pos in final])
        order = None if np.array_equal(positions, np.arange(len(outputs))) else np.argsort(positions)
        del self._table_of, self._row_of
        self._output_table = np.empty(len(outputs), dtype=np.int64)  # where each output lives
        self._output_row = np.empty(len(outputs), dtype=np.int64)
        for table, source, where in final:
            self._output_table[where] = table
            self._output_row[where] = np.arange(self.size(table)) if source is None else source
        # Terminal steps: top-down steps whose new embeddings no later step reads (the leaves').
        # Their targets matter only as outputs, so `restrict` runs them for the wanted ones only.
        read = {group.table for step in self.steps for group in step.groups}
        self.terminal = [step.scorer == DOWN and step.out not in read for step in self.steps]
        self._terminal_step = {step.out: k for k, step in enumerate(self.steps) if self.terminal[k]}
        self.needs = _projections_needed(self.steps, len(self.tables), [False] * len(self.steps))
        self.static_needs = _projections_needed(self.steps, len(self.tables), self.terminal)

        # Base rows: one gather, split into the pieces.
        self.base_tables = [t for t, table in enumerate(self.tables) if table.from_base]
        nodes = [self.tables[t].nodes for t in self.base_tables]
        base_rows = embedder.rows(np.concatenate(nodes) if nodes else np.zeros(0, dtype=np.int64))
        inverse = None
        size = len(embedder.base_nodes)
        if len(base_rows) == size and len(np.unique(base_rows)) == size:  # every row once
            inverse = np.empty_like(base_rows)
            inverse[base_rows] = np.arange(size)
        _index_buffer(self, "base_rows", base_rows)
        _index_buffer(self, "base_inverse", inverse)
        _index_buffer(self, "final_order", order)
        self.edges = nn.ModuleList(
            nn.ModuleList(
                EdgeIndex(g.target, g.source, len(step.targets), len(self.tables[g.table].nodes))
                for g in step.groups
            )
            for step in self.steps
        )
        for i, (_, source) in enumerate(self.final):
            _index_buffer(self, f"final{i}_source", source)

    def size(self, table: int) -> int:
        return len(self.tables[table].nodes)

    def final_source(self, i: int) -> Tensor | None:
        return self._buffers[f"final{i}_source"]

    def restrict(self, wanted: np.ndarray) -> list[_Part]:
        """The outputs at positions `wanted` (distinct), as the parts `HAPEmbedder._propagate`
        assembles them from: rows of tables the static steps compute, or terminal steps run for
        the wanted targets only."""
        device = self.base_rows.device
        tables, rows = self._output_table[wanted], self._output_row[wanted]
        parts = []
        for table in np.unique(tables):
            where = np.flatnonzero(tables == table)
            order = np.argsort(rows[where], kind="stable")
            where, kept = where[order], rows[where][order]
            k = self._terminal_step.get(int(table))
            if k is None:
                parts.append(_Part(where, int(table), torch.from_numpy(kept).to(device)))
                continue
            step = self.steps[k]
            position = np.full(len(step.targets), -1, dtype=np.int64)  # target -> kept target
            position[kept] = np.arange(len(kept))
            edges = [EdgeIndex(None, None, len(kept)).to(device)]  # the kept self rows, gathered
            for group in step.groups[1:]:
                assert group.source is not None, "candidates other than self name their rows"
                target = np.arange(len(step.targets)) if group.target is None else group.target
                keep = position[target] >= 0
                size = self.size(group.table)
                edge = EdgeIndex(position[target[keep]], group.source[keep], len(kept), size)
                edges.append(edge.to(device))
            own = step.groups[0].source  # rows of the targets' own embeddings (None: row = target)
            own_rows = torch.from_numpy(kept if own is None else own[kept]).to(device)
            parts.append(_Part(where, step.groups[0].table, own_rows, k, edges))
        return parts

    # ------------------------------------------------------------------ compiling
    def _new_table(self, nodes: np.ndarray, from_base: bool) -> int:
        self.tables.append(_Table(nodes, from_base))
        return len(self.tables) - 1

    def _place(self, table: int) -> None:
        nodes = self.tables[table].nodes
        self._table_of[nodes] = table
        self._row_of[nodes] = np.arange(len(nodes))

    def _read(self, nodes: np.ndarray) -> list[tuple[int, np.ndarray | None, np.ndarray]]:
        """Where the current embeddings of `nodes` live: (table, rows or None for the whole
        table in order, positions in `nodes`). Nodes read for the first time get a base piece."""
        fresh = np.unique(nodes[self._table_of[nodes] < 0])
        if len(fresh):
            self._place(self._new_table(fresh, True))
        tables = self._table_of[nodes]
        result = []
        for table in np.unique(tables):
            positions = np.flatnonzero(tables == table)
            rows = self._row_of[nodes[positions]]
            whole = len(rows) == self.size(table) and np.array_equal(rows, np.arange(len(rows)))
            result.append((int(table), None if whole else rows, positions))
        return result

    def _add_step(self, scorer: str, step: Step, active: np.ndarray) -> None:
        if not active.any():
            return
        num = len(step.targets)
        edge_target, edge_source = step.edge_target[num:], step.edge_source[num:]
        first = len(self.steps)
        # Targets are split by the table their own embedding lives in (aligned self candidates).
        for table, rows, positions in self._read(step.targets[active]):
            targets = step.targets[active][positions]
            if rows is not None:
                order = np.argsort(rows, kind="stable")  # read the self table in order
                targets, rows = targets[order], rows[order]
                if len(rows) == self.size(table) and np.array_equal(rows, np.arange(len(rows))):
                    rows = None
            groups = [_Group(table, rows, None)]
            position_of = np.full(num, -1, dtype=np.int64)
            position_of[np.searchsorted(step.targets, targets)] = np.arange(len(targets))
            keep = position_of[edge_target] >= 0
            sources, positions_of_edges = edge_source[keep], position_of[edge_target[keep]]
            for source_table, source_rows, where in self._read(sources):
                if source_rows is None:
                    source_rows = np.arange(len(where))
                order = np.argsort(positions_of_edges[where], kind="stable")  # by target
                groups.append(_Group(source_table, source_rows[order], positions_of_edges[where][order]))
            out = self._new_table(targets, False)
            self.steps.append(_PlanStep(scorer, step.level, targets, groups, out))
        # Locations change after the whole level: targets of one level never read each other.
        for plan_step in self.steps[first:]:
            self._place(plan_step.out)


def _projections_needed(
    steps: list[_PlanStep], num_tables: int, per_batch: list[bool]
) -> list[dict[str, bool]]:
    """Per table, scorer -> True where its rows are queries of a step (W_q q + b and W_k k are
    needed), False where they are only candidates (W_k k). The self rows of `per_batch` steps are
    projected when those steps run, so they count here only as candidates of other steps."""
    needs: list[dict[str, bool]] = [{} for _ in range(num_tables)]
    for step, runs_per_batch in zip(steps, per_batch, strict=True):
        if not runs_per_batch:
            needs[step.groups[0].table][step.scorer] = True
        for group in step.groups[1:]:
            needs[group.table].setdefault(step.scorer, False)
    return needs


def _needed(hierarchy: Hierarchy, outputs: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Which targets of each bottom-up and top-down step the outputs depend on."""
    n = hierarchy.num_nodes
    in_td = np.zeros(n, dtype=bool)
    for step in hierarchy.top_down:
        in_td[step.targets] = True
    need_td = np.zeros(n, dtype=bool)  # the node's top-down result
    need_bu = np.zeros(n, dtype=bool)  # its embedding after bottom-up (base if never updated)
    need_td[outputs[in_td[outputs]]] = True
    need_bu[outputs[~in_td[outputs]]] = True
    td_active = [np.zeros(0, dtype=bool)] * len(hierarchy.top_down)
    for s in range(len(hierarchy.top_down) - 1, -1, -1):  # deepest level first
        step = hierarchy.top_down[s]
        num = len(step.targets)
        active = need_td[step.targets]
        td_active[s] = active
        need_bu[step.targets[active]] = True  # the query and self candidate
        parents = step.edge_source[num:][active[step.edge_target[num:]]]
        need_td[parents[in_td[parents]]] = True
        need_bu[parents[~in_td[parents]]] = True
    bu_active = [np.zeros(0, dtype=bool)] * len(hierarchy.bottom_up)
    for s in range(len(hierarchy.bottom_up) - 1, -1, -1):  # highest level first
        step = hierarchy.bottom_up[s]
        num = len(step.targets)
        active = need_bu[step.targets]
        bu_active[s] = active
        need_bu[step.edge_source[num:][active[step.edge_target[num:]]]] = True  # children
    return bu_active, td_active


def _project(
    rows: Tensor, needs: dict[str, bool], scorers: dict[str, AttentionScorer], weights: dict
) -> dict:
    """{(scorer, QUERY): W_q rows + b, (scorer, KEY): W_k rows} in one matrix product.

    `weights` caches the stacked [W_q; W_k] per kind of table within one forward (a handful of
    kinds, dozens of tables): one concatenation each, and one split of its gradient."""
    kind = tuple(sorted(needs.items()))
    if kind not in weights:
        stacked, biases, names = [], [], []
        for name, with_query in kind:
            scorer = scorers[name]
            if with_query:
                stacked.append(scorer.query.weight)
                biases.append(scorer.query.bias)
                names.append((name, QUERY))
            stacked.append(scorer.key.weight)
            biases.append(scorer.query.bias.new_zeros(scorer.key.out_features))
            names.append((name, KEY))
        weights[kind] = (torch.cat(stacked), torch.cat(biases), names, stacked[0].shape[0])
    weight, bias, names, size = weights[kind]
    projected = F.linear(rows, weight, bias)
    return dict(zip(names, projected.split(size, dim=1), strict=True))


class HAPEmbedder(CodeEmbedder):
    """HAP: bottom-up then top-down attention propagation over the leveled DAG (algorithms.md).

    Bottom-up, parent levels L-1 .. cut: p attends over itself and its children with the query e_p
    (its base embedding). Top-down, child levels cut+1 .. L: c attends over itself and its parents
    (already updated in this pass) with the query h_c after bottom-up. f_up, f_down: separate
    parameters. Vectorised per level; the Python loops run over levels and tables only.
    """

    subset_is_cheaper = True

    def __init__(self, hierarchy: Hierarchy, vocab: np.ndarray, config: EmbedderConfig):
        super().__init__(hierarchy, vocab, config)
        self.up = AttentionScorer(config.dim, config.attention_dim)
        self.down = AttentionScorer(config.dim, config.attention_dim)
        self.plan = _HAPPlan(hierarchy, self.vocab_nodes, self)
        self._all_nodes: _HAPPlan | None = None

    def forward(self) -> Tensor:
        return self._propagate(self.plan, self.base.weight)[0]

    def embed(self, classes: np.ndarray) -> Tensor:
        return self._propagate(self.plan, self.base.weight, parts=self.plan.restrict(classes))[0]

    def all_node_embeddings(self) -> Tensor:
        return self._every_node(self._propagate(self._plan_for_all(), self.base.weight)[0])

    def _plan_for_all(self) -> _HAPPlan:
        """The plan whose outputs are all `base_nodes`, in order."""
        if self._all_nodes is None:
            self._all_nodes = _HAPPlan(self.hierarchy, self.base_nodes, self)
        return self._all_nodes.to(self.base.weight.device)

    def _propagate(
        self,
        plan: _HAPPlan,
        base: Tensor,
        weights: list[list[Tensor]] | None = None,
        parts: list[_Part] | None = None,
    ) -> tuple[Tensor, list[list[Tensor]]]:
        """Run the plan on base embeddings [len(base_nodes), width]: (outputs, attention weights).

        With `weights` given (from an earlier run) no score is computed: the embeddings are
        propagated with those weights (what `explain` does, with one-hot rows as `base`). With
        `parts` (`plan.restrict`) only those outputs are computed: the terminal steps run for
        them alone, and no attention weights are returned.
        """
        scorers = {UP: self.up, DOWN: self.down}
        score = weights is None
        needs = plan.needs if parts is None else plan.static_needs
        values: list[Tensor | None] = [None] * len(plan.tables)
        projections: list[dict] = [{} for _ in plan.tables]
        stacked: dict = {}  # [W_q; W_k] per kind of table, built once per run

        # Base pieces: one gather of every base row the plan reads, split into its pieces.
        rows = gather_rows(base, plan.base_rows, plan.base_inverse)
        pieces = rows.split([plan.size(t) for t in plan.base_tables])
        for t, piece in zip(plan.base_tables, pieces, strict=True):
            values[t] = piece
            if score and needs[t]:
                projections[t] = _project(piece, needs[t], scorers, stacked)

        all_weights = []
        for k, (step, step_edges) in enumerate(zip(plan.steps, plan.edges, strict=True)):
            if parts is not None and plan.terminal[k]:
                continue  # run below, for the wanted targets only
            groups = [
                Candidates(values[g.table], projections[g.table].get((step.scorer, KEY)), edges)
                for g, edges in zip(step.groups, step_edges, strict=True)
            ]
            if score:
                query = step_edges[0].gather_sources(projections[step.groups[0].table][(step.scorer, QUERY)])
                out, step_weights = attend_candidates(query, groups, scorers[step.scorer])
            else:
                step_weights = weights[len(all_weights)]  # type: ignore[index]
                out = weighted_sum(groups, step_weights)
            all_weights.append(step_weights)
            values[step.out] = out
            if score and needs[step.out]:
                projections[step.out] = _project(out, needs[step.out], scorers, stacked)

        if parts is not None:
            return self._assemble(plan, parts, values, projections, stacked, scorers), []
        outputs = []
        for i, (table, _) in enumerate(plan.final):
            source = plan.final_source(i)
            outputs.append(values[table] if source is None else values[table].index_select(0, source))
        result = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
        if plan.final_order is not None:
            result = result.index_select(0, plan.final_order)
        return result, all_weights

    def _assemble(
        self,
        plan: _HAPPlan,
        parts: list[_Part],
        values: list,
        projections: list[dict],
        stacked: dict,
        scorers: dict[str, AttentionScorer],
    ) -> Tensor:
        """The wanted outputs of a restricted run, in order: static rows, and the terminal steps
        run for the wanted targets (their own rows projected here, their parents' keys are)."""
        out = []
        for part in parts:
            own = values[part.table].index_select(0, part.rows)
            if part.step is None:
                out.append(own)
                continue
            step = plan.steps[part.step]
            scorer = scorers[step.scorer]
            projected = _project(own, {step.scorer: True}, scorers, stacked)
            groups = [Candidates(own, projected[(step.scorer, KEY)], part.edges[0])]
            for group, edges in zip(step.groups[1:], part.edges[1:], strict=True):
                keys = projections[group.table][(step.scorer, KEY)]
                groups.append(Candidates(values[group.table], keys, edges))
            out.append(attend_candidates(projected[(step.scorer, QUERY)], groups, scorer)[0])
        if not out:  # nothing wanted
            return self.base.weight.new_zeros((0, self.base.weight.shape[1]))
        result = torch.cat(out) if len(out) > 1 else out[0]
        positions = np.concatenate([part.positions for part in parts])
        if np.array_equal(positions, np.arange(len(positions))):
            return result
        inverse = torch.from_numpy(positions).to(result.device)  # positions[i]: where row i goes
        return gather_rows(result, torch.from_numpy(np.argsort(positions)).to(result.device), inverse)

    def explain(self, nodes: Sequence[int] | np.ndarray, chunk: int = 256) -> Tensor:
        """W [len(nodes), num_nodes]: g_c = sum_j W[c, j] e_j, composing the attention weights of
        both passes (held fixed). Computed as the transpose of the propagation (autograd through a
        run with one-hot base rows), `chunk` nodes at a time."""
        nodes = self._nodes(nodes)
        weight = self.base.weight
        rows = []
        for start in range(0, len(nodes), chunk):
            part = nodes[start : start + chunk]
            plan = _HAPPlan(self.hierarchy, part, self).to(weight.device)
            with torch.no_grad():
                _, weights = self._propagate(plan, weight)
            with torch.enable_grad():
                probe = weight.new_zeros((len(self.base_nodes), len(part)), requires_grad=True)
                g, _ = self._propagate(plan, probe, weights)  # [len(part), len(part)] = W probe
                eye = torch.eye(len(part), dtype=weight.dtype, device=weight.device)
                (grad,) = torch.autograd.grad(g, probe, eye)  # grad[j, r] = W[r, base_nodes[j]]
            rows.append(self._every_node(grad, fill=0.0).t())
        if not rows:
            return weight.new_zeros((0, self.num_nodes))
        return torch.cat(rows)

    @torch.no_grad()
    def attention(self) -> list[dict[str, np.ndarray | str | int]]:
        """Attention weights of every step of the full model: pass, level, target, source, weight
        (one entry per candidate edge, node indices), for `hapnet explain`."""
        plan = self._plan_for_all()
        _, weights = self._propagate(plan, self.base.weight)
        result = []
        for step, step_weights in zip(plan.steps, weights, strict=True):
            targets, sources = [], []
            for group in step.groups:
                table_nodes = plan.tables[group.table].nodes
                source_nodes = table_nodes if group.source is None else table_nodes[group.source]
                target_pos = np.arange(len(step.targets)) if group.target is None else group.target
                targets.append(step.targets[target_pos])
                sources.append(source_nodes)
            result.append(
                {
                    "pass": "bottom-up" if step.scorer == UP else "top-down",
                    "level": step.level,
                    "target": np.concatenate(targets),
                    "source": np.concatenate(sources),
                    "weight": torch.cat(step_weights).cpu().numpy(),
                }
            )
        return result


# ============================================================================= registry
@dataclass(frozen=True)
class ModelSpec:
    name: str
    embedder: type[CodeEmbedder]
    description: str
    uses_hierarchy: bool  # needs the ontology's edges
    glove_scope: str  # GloVe over "ancestors" (codes + all ancestors), "parents" or "codes" only


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model to the registry (the CLI's --model accepts it from then on)."""
    MODELS[spec.name] = spec
    return spec


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise HapnetError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}") from None


def build_embedder(
    name: str, hierarchy: Hierarchy, vocab: np.ndarray, config: EmbedderConfig
) -> CodeEmbedder:
    return get_model(name).embedder(hierarchy, vocab, config)


for _spec in [
    ModelSpec(
        "hap", HAPEmbedder, "Hierarchical Attention Propagation (bottom-up + top-down)", True, "ancestors"
    ),
    ModelSpec("gram", GRAMEmbedder, "GRAM: attention over each code and its ancestors", True, "ancestors"),
    ModelSpec("rnn", PlainEmbedder, "no ontology: one embedding per code (RNN+ with GloVe)", False, "codes"),
    ModelSpec(
        "rollup", RollupEmbedder, "each code as its immediate parent (Rollup+ with GloVe)", True, "parents"
    ),
]:
    register_model(_spec)
