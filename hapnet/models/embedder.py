"""What every code embedder shares (`CodeEmbedder`) and its settings (`EmbedderConfig`).

An embedder is an `nn.Module` built from `(hierarchy, vocab, config)`: `forward()` returns the
final embeddings g [len(vocab), dim] of the observable codes `vocab` (ontology node indices).
Every embedder also has `init_base(vectors)` (GloVe initialisation of the base embeddings e of all
nodes), `all_node_embeddings()` (g for every node, for `hapnet embed`) and `explain(nodes)` (g as
a weighted sum of base embeddings, for `hapnet explain`). The algorithms: docs/algorithms.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from hapnet.errors import HapnetError
from hapnet.ontology.hierarchy import Hierarchy


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
        index_buffer(self, "vocab_rows", self.rows(vocab))
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


def index_buffer(module: nn.Module, name: str, array: np.ndarray | None) -> None:
    """Register an int64 index array as a non-persistent buffer (None stays None)."""
    tensor = None if array is None else torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
    module.register_buffer(name, tensor, persistent=False)
