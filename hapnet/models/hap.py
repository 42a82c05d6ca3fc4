"""HAP (Zhang et al., KDD 2020): bottom-up then top-down attention propagation over the leveled
DAG (docs/algorithms.md), run on the plan `hapnet.models.hap_plan` compiles."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hapnet.models.embedder import CodeEmbedder, EmbedderConfig
from hapnet.models.hap_plan import DOWN, KEY, QUERY, UP, HAPPlan, PlanPart
from hapnet.models.propagation import (
    AttentionScorer,
    Candidates,
    attend_candidates,
    weighted_sum,
)
from hapnet.ontology.hierarchy import Hierarchy


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
    """HAP: bottom-up then top-down attention propagation over the leveled DAG (docs/algorithms.md).

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
        self.plan = HAPPlan(hierarchy, self.vocab_nodes, self)
        self._all_nodes: HAPPlan | None = None

    def forward(self) -> Tensor:
        return self._propagate(self.plan, self.base.weight)[0]

    def embed(self, classes: np.ndarray) -> Tensor:
        return self._propagate(self.plan, self.base.weight, parts=self.plan.restrict(classes))[0]

    def all_node_embeddings(self) -> Tensor:
        return self._every_node(self._propagate(self._plan_for_all(), self.base.weight)[0])

    def _plan_for_all(self) -> HAPPlan:
        """The plan whose outputs are all `base_nodes`, in order."""
        if self._all_nodes is None:
            self._all_nodes = HAPPlan(self.hierarchy, self.base_nodes, self)
        return self._all_nodes.to(self.base.weight.device)

    def _propagate(
        self,
        plan: HAPPlan,
        base: Tensor,
        weights: list[list[Tensor]] | None = None,
        parts: list[PlanPart] | None = None,
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
        rows = base.index_select(0, plan.base_rows)
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
        plan: HAPPlan,
        parts: list[PlanPart],
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
        return result.index_select(0, torch.from_numpy(np.argsort(positions)).to(result.device))

    def explain(self, nodes: Sequence[int] | np.ndarray, chunk: int = 256) -> Tensor:
        """W [len(nodes), num_nodes]: g_c = sum_j W[c, j] e_j, composing the attention weights of
        both passes (held fixed). Computed as the transpose of the propagation (autograd through a
        run with one-hot base rows), `chunk` nodes at a time."""
        nodes = self._nodes(nodes)
        weight = self.base.weight
        rows = []
        for start in range(0, len(nodes), chunk):
            part = nodes[start : start + chunk]
            plan = HAPPlan(self.hierarchy, part, self).to(weight.device)
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
