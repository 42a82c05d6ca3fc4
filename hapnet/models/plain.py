"""The embedders without attention: RNN (one free embedding per code) and Rollup (a code as its
immediate parent)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from hapnet.models.embedder import CodeEmbedder, EmbedderConfig, index_buffer
from hapnet.ontology.hierarchy import Hierarchy
from hapnet.utils.arrays import concat_ranges


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
    sources = np.empty(len(positions), dtype=np.int64)
    has_parent = ~own[positions]
    sources[has_parent] = parents[concat_ranges(offsets[nodes], counts)]
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
        index_buffer(self, "positions", positions)
        index_buffer(self, "sources", self.rows(sources))
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
