"""How much of an ontology a set of vectors recovers: Nickel & Kiela's reconstruction protocol.

For every node u with at least one neighbour, rank all other nodes v != u by cosine similarity to
u; the filtered rank of a true neighbour is 1 + the number of non-neighbours ranked above it; MAP
is the mean over nodes u of the average precision of u's ranking, mean rank the mean filtered rank
over all (u, neighbour) pairs. `relation="ancestors"` runs the same protocol on the transitive
closure (u's neighbours = all its ancestors), the WordNet setting of the paper. The artificial
root takes no part.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hapnet.errors import HapnetError
from hapnet.ontology.graph import Ontology
from hapnet.utils.arrays import concat_ranges, range_owners

RELATIONS = ("edges", "ancestors")


SIMILARITIES = ("cosine", "poincare")


PROTOCOL = (
    "Nickel & Kiela reconstruction on the ontology's edges: for every node u (root excluded) with "
    "a neighbour (parent or child), all other nodes ranked by cosine similarity; filtered rank = "
    "1 + non-neighbours ranked above; MAP over nodes, mean rank over (u, neighbour) pairs"
)


@dataclass
class Reconstruction:
    """The reconstruction figures of one set of vectors (see the module docstring)."""

    map: float
    mean_rank: float
    nodes: int  # nodes embedded and ranked (root excluded)
    queries: int  # nodes with at least one neighbour: the u's of the protocol
    pairs: int  # (u, neighbour) pairs
    seconds: float
    relation: str = "edges"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Relations:
    """The true neighbours of every row of an embedding table, as CSR over row indices."""

    offsets: np.ndarray  # int64 [M+1]
    targets: np.ndarray  # int64 [P] row indices, sorted within each row
    kind: str = "edges"  # or "ancestors"

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def sources(self) -> np.ndarray:
        return range_owners(self.counts)

    @property
    def num_pairs(self) -> int:
        return len(self.targets)

    def sample(self, count: int, seed: int = 0) -> Relations:
        """The same relations for `count` random rows only (the others get no neighbour)."""
        rows = np.flatnonzero(self.counts > 0)
        if count >= len(rows):
            return self
        keep = np.zeros(len(self.counts), dtype=bool)
        keep[np.random.default_rng(seed).choice(rows, count, replace=False)] = True
        counts = np.where(keep, self.counts, 0)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return Relations(offsets, self.targets[np.repeat(keep, self.counts)], self.kind)


def _csr(sources: np.ndarray, targets: np.ndarray, size: int, kind: str) -> Relations:
    keys = np.unique(sources.astype(np.int64) * size + targets)
    sources, targets = keys // size, keys % size
    return Relations(np.concatenate([[0], np.cumsum(np.bincount(sources, minlength=size))]), targets, kind)


def ancestor_pairs(ontology: Ontology) -> tuple[np.ndarray, np.ndarray]:
    """(u, a) for every ancestor a of every node u through the ontology's edges, root excluded."""
    offsets, parents = ontology._parents_csr
    keep = ontology.edge_parent != 0
    node, up = ontology.edge_child[keep], ontology.edge_parent[keep]
    all_nodes, all_ups = [node], [up]
    while len(node):  # one level of ancestors per round: at most depth rounds
        counts = ontology.num_parents[up]
        node = np.repeat(node, counts)
        up = parents[concat_ranges(offsets[up], counts)]
        node, up = node[up != 0], up[up != 0]
        all_nodes.append(node)
        all_ups.append(up)
    return np.concatenate(all_nodes), np.concatenate(all_ups)


def relations(ontology: Ontology, nodes: np.ndarray, relation: str = "edges") -> Relations:
    """True neighbours among `nodes` (sorted node indices, root excluded) as rows of `nodes`.

    "edges": parents and children (the ontology's edges, both ways); "ancestors": every ancestor.
    """
    if relation == "edges":
        keep = ontology.edge_parent != 0
        u = np.concatenate([ontology.edge_child[keep], ontology.edge_parent[keep]])
        v = np.concatenate([ontology.edge_parent[keep], ontology.edge_child[keep]])
    elif relation == "ancestors":
        u, v = ancestor_pairs(ontology)
    else:
        raise HapnetError(f"unknown relation {relation!r}; choose from {', '.join(RELATIONS)}")
    row = np.full(len(ontology), -1, dtype=np.int64)
    row[nodes] = np.arange(len(nodes))
    inside = (row[u] >= 0) & (row[v] >= 0)
    return _csr(row[u[inside]], row[v[inside]], len(nodes), relation)


def _descending_bits(values: torch.Tensor) -> torch.Tensor:
    """int64 in [0, 2^32) that sort ascending as the float32 `values` sort descending."""
    bits = values.float().contiguous().view(torch.int32).long()
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # monotone in the float's value
    return (2**31 - 1) - ordered


def reconstruction(
    vectors: torch.Tensor | np.ndarray,
    truth: Relations,
    *,
    similarity: str = "cosine",
    block_elements: int = 1 << 24,
) -> Reconstruction:
    """MAP and mean rank of `truth` under cosine similarity (Nickel & Kiela's protocol).

    Rows are compared in blocks of queries against all rows (block x M similarities, never M x M);
    within a block only the similarities at or above the row's weakest true neighbour are kept and
    sorted, so the cost is the matrix product plus a pass over it. Ties count in the neighbour's
    favour. `similarity="poincare"` ranks by Poincaré distance instead (for vectors in the unit
    ball, such as gensim's PoincareModel: the benchmark's comparison).
    """
    if similarity not in SIMILARITIES:
        raise HapnetError(f"unknown similarity {similarity!r}; choose from {', '.join(SIMILARITIES)}")
    start = time.perf_counter()
    x = torch.as_tensor(vectors).float()
    if similarity == "cosine":
        x = F.normalize(x, dim=1)
    else:
        squared = (x * x).sum(1)
        room = (1 - squared).clamp(min=1e-7)  # distance to the ball's boundary
    device = x.device
    m = x.shape[0]
    counts = truth.counts
    queries = np.flatnonzero(counts > 0)
    block = max(1, block_elements // max(m, 1))
    targets = torch.from_numpy(truth.targets).to(device)
    ap_sum = 0.0
    rank_sum = 0.0
    for first in range(0, len(queries), block):
        rows_np = queries[first : first + block]
        rows = torch.from_numpy(rows_np).to(device)
        b = len(rows)
        sims = x.index_select(0, rows) @ x.T
        if similarity == "poincare":  # -(|u-v|^2 / ((1-|u|^2)(1-|v|^2))): same order as -distance
            sims = (2 * sims - squared[rows, None] - squared[None, :]) / (room[rows, None] * room[None, :])
        sims[torch.arange(b, device=device), rows] = -torch.inf  # u itself is not ranked
        # True neighbours of the block's rows, and each row's weakest one.
        row_counts = torch.from_numpy(counts[rows_np]).to(device)
        pos_row = torch.repeat_interleave(torch.arange(b, device=device), row_counts)
        # Rows between two queries have no neighbour: the block's neighbours are one slice.
        pos_col = targets[truth.offsets[rows_np[0]] : truth.offsets[rows_np[-1] + 1]]
        positive = pos_row * m + pos_col  # sorted keys of the block's (row, neighbour) cells
        weakest = torch.full((b,), torch.inf, device=device)
        weakest = weakest.scatter_reduce(0, pos_row, sims[pos_row, pos_col], reduce="amin")
        # Everything at least as similar as the weakest neighbour, sorted (one int64 key) by row,
        # then by similarity, descending, neighbours first among equals.
        r, c = (sims >= weakest[:, None]).nonzero(as_tuple=True)
        is_pos = torch.isin(r * m + c, positive, assume_unique=True).long()
        order = torch.argsort((r << 33) | (_descending_bits(sims[r, c]) << 1) | (1 - is_pos))
        r, is_pos = r[order], is_pos[order]
        per_row = torch.bincount(r, minlength=b)  # every query row has its neighbours in here
        seg_start = torch.cumsum(per_row, 0) - per_row
        place = torch.arange(len(r), device=device) - seg_start[r] + 1  # 1-based place in u's ranking
        upto = torch.cumsum(is_pos, 0)  # neighbours so far, counted from the first row
        upto = upto - (upto - is_pos)[seg_start][r]  # ... from the start of the row
        keep = is_pos.bool()
        i, place = upto[keep].double(), place[keep].double()  # the i-th neighbour sits at `place`
        ap_rows = torch.zeros(b, dtype=torch.float64, device=device).index_add(0, r[keep], i / place)
        ap_sum += (ap_rows / row_counts.double()).sum().item()
        rank_sum += (place - i + 1).sum().item()  # 1 + non-neighbours above
    return Reconstruction(
        map=ap_sum / max(len(queries), 1),
        mean_rank=rank_sum / max(truth.num_pairs, 1),
        nodes=m,
        queries=len(queries),
        pairs=truth.num_pairs,
        seconds=time.perf_counter() - start,
        relation=truth.kind,
    )
