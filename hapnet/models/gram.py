"""GRAM (Choi et al., KDD 2017): each code attends over itself and its ancestors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from hapnet.models.embedder import CodeEmbedder, EmbedderConfig, index_buffer
from hapnet.models.propagation import AttentionScorer, EdgeIndex, attend
from hapnet.ontology.hierarchy import Hierarchy, Step


class _AncestorIndex(nn.Module):
    """GRAM's attention round on compact rows: `rows` are the base rows of the distinct nodes in
    use, once each."""

    def __init__(self, step: Step, embedder: CodeEmbedder):
        super().__init__()
        nodes, local = np.unique(step.edge_source, return_inverse=True)
        self.step = step  # node indices, for explanations
        self.every_row = len(nodes) == len(embedder.base_nodes)  # then rows == arange: no gather
        index_buffer(self, "rows", embedder.rows(nodes))
        index_buffer(self, "query_rows", np.searchsorted(nodes, step.targets))
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
