"""HAP's two passes compiled for a set of output nodes (`HAPPlan`): which steps run, which rows
each step reads and writes, and which projections each table needs. Built once per model (and
per `restrict` for a batch's codes); `hapnet.models.hap` runs it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from hapnet.models.embedder import CodeEmbedder, index_buffer
from hapnet.models.propagation import EdgeIndex
from hapnet.ontology.hierarchy import Hierarchy, Step

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
class PlanPart:
    """Some outputs of a restricted run (`HAPPlan.restrict`): rows `rows` of table `table`, or,
    with `step` set, that terminal step run for the targets whose own embeddings are those rows
    (`edges`: its candidate groups cut to them, the self group first)."""

    positions: np.ndarray  # positions of these outputs among the wanted ones
    table: int
    rows: Tensor
    step: int | None = None
    edges: list[EdgeIndex] = field(default_factory=list)


class HAPPlan(nn.Module):
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
        bu_active, td_active = needed_steps(hierarchy, outputs)

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
        index_buffer(self, "base_rows", base_rows)
        index_buffer(self, "final_order", order)
        self.edges = nn.ModuleList(
            nn.ModuleList(
                EdgeIndex(g.target, g.source, len(step.targets), len(self.tables[g.table].nodes))
                for g in step.groups
            )
            for step in self.steps
        )
        for i, (_, source) in enumerate(self.final):
            index_buffer(self, f"final{i}_source", source)

    def size(self, table: int) -> int:
        return len(self.tables[table].nodes)

    def final_source(self, i: int) -> Tensor | None:
        return self._buffers[f"final{i}_source"]

    def restrict(self, wanted: np.ndarray) -> list[PlanPart]:
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
                parts.append(PlanPart(where, int(table), torch.from_numpy(kept).to(device)))
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
            parts.append(PlanPart(where, step.groups[0].table, own_rows, k, edges))
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


def needed_steps(hierarchy: Hierarchy, outputs: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
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
