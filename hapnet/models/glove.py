"""GloVe pretraining of base embeddings on within-visit co-occurrence (docs/algorithms.md).

HAP and GRAM (the paper's setting): co-occurrence of a visit's codes AND all their ancestors,
so every node gets a vector; RNN+ and Rollup+: of the codes only. GloVe as in Pennington et al.
(2014): weighting f(x) = min(1, (x / x_max)^alpha) with x_max = 100, alpha = 0.75, AdaGrad with
initial learning rate 0.05, 50 epochs; the vectors are W + W~ (word + context vectors).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hapnet.errors import HapnetError
from hapnet.utils.arrays import concat_ranges, exclusive_cumsum, range_owners, range_positions

X_MAX = 100.0
ALPHA = 0.75


@dataclass
class Cooccurrence:
    """A square sparse matrix of co-occurrence counts in coordinate form, entries sorted by
    (row, column), each (row, column) once. numpy arrays: nothing here needs scipy."""

    rows: np.ndarray  # int64 [nnz]
    cols: np.ndarray  # int64 [nnz]
    counts: np.ndarray  # float64 [nnz]
    size: int  # number of rows (= columns)

    @classmethod
    def from_dense(cls, dense: np.ndarray) -> Cooccurrence:
        rows, cols = np.nonzero(dense)
        return cls(
            rows.astype(np.int64), cols.astype(np.int64), dense[rows, cols].astype(np.float64), len(dense)
        )

    def toarray(self) -> np.ndarray:
        dense = np.zeros((self.size, self.size))
        dense[self.rows, self.cols] = self.counts
        return dense


def _sum_duplicates(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys, sorted, and the sum of the values of each."""
    distinct, inverse = np.unique(keys, return_inverse=True)
    return distinct, np.bincount(inverse.reshape(-1), weights=values, minlength=len(distinct))


# ----------------------------------------------------------------------------- co-occurrence
def _expand(
    visit_offsets: np.ndarray, codes: np.ndarray, ancestors: list[frozenset[int]] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (visit, node) entries of every visit's codes (and their ancestors), sorted by
    visit then node, with each entry's multiplicity (how many of the visit's codes bring it)."""
    visit_of_code = range_owners(np.diff(visit_offsets))
    visits, nodes = [visit_of_code], [codes]
    if ancestors is not None:
        distinct = np.unique(codes)
        lists = [np.fromiter(ancestors[c], dtype=np.int64, count=len(ancestors[c])) for c in distinct]
        counts = np.array([len(a) for a in lists], dtype=np.int64)
        flat = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)
        which = np.searchsorted(distinct, codes)  # each code's row in the ancestor table
        per_code = counts[which]
        visits.append(np.repeat(visit_of_code, per_code))
        nodes.append(flat[concat_ranges(exclusive_cumsum(counts)[which], per_code)])
    keys, multiplicity = np.unique(
        np.concatenate(visits) * (1 << 32) + np.concatenate(nodes), return_counts=True
    )
    return keys >> 32, keys & ((1 << 32) - 1), multiplicity


def cooccurrence(
    visit_offsets: np.ndarray,
    codes: np.ndarray,
    num_nodes: int,
    ancestors: list[frozenset[int]] | None = None,
    weighting: str = "set",
    chunk_pairs: int = 20_000_000,
) -> Cooccurrence:
    """Symmetric co-occurrence counts [num_nodes, num_nodes] of nodes i != j within visits.

    With `ancestors` (per node, e.g. `hierarchy.ancestor_sets`), a visit holds its codes and all
    their ancestors; without, its codes only. weighting "set": X[i, j] = number of visits in
    which both occur (each node once per visit, however many of its codes share an ancestor);
    "gram": as GRAM's create_glove_comap.py, 2 * m_i * m_j per visit, m = how many times the
    node occurs in the visit's code list extended by every code's ancestors.
    """
    if weighting not in ("set", "gram"):
        raise HapnetError(f"co-occurrence weighting must be 'set' or 'gram', got {weighting!r}")
    visit_offsets = np.asarray(visit_offsets, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.int64)
    if len(codes) and (codes.min() < 0 or codes.max() >= num_nodes):
        raise HapnetError(f"co-occurrence: code index out of range 0..{num_nodes - 1}")
    visit, node, multiplicity = _expand(visit_offsets, codes, ancestors)  # nodes sorted per visit
    starts = np.searchsorted(visit, np.arange(len(visit_offsets)))  # entries of visit v: starts[v:v+2]
    sizes = np.diff(starts)
    # Each unordered pair once (an entry pairs with the later entries of its visit), in chunks
    # of about chunk_pairs pairs; X = upper + upper^T.
    pair_ends = np.cumsum(sizes * (sizes - 1) // 2)
    chunk_keys, chunk_sums = [np.zeros(0, dtype=np.int64)], [np.zeros(0)]  # upper triangle: i * n + j, i < j
    first = 0
    while first < len(sizes):
        done = pair_ends[first - 1] if first else 0
        last = max(first + 1, int(np.searchsorted(pair_ends, done + chunk_pairs, side="right")))
        lengths = sizes[first:last]
        entries = np.arange(starts[first], starts[last])
        after = np.repeat(lengths, lengths) - 1 - range_positions(lengths)  # later entries of its visit
        left = np.repeat(entries, after)
        right = np.repeat(entries + 1, after) + range_positions(after)
        if weighting == "set":
            counts = np.ones(len(left))
        else:
            counts = 2.0 * multiplicity[left] * multiplicity[right]
        keys, sums = _sum_duplicates(node[left] * num_nodes + node[right], counts)
        chunk_keys.append(keys)
        chunk_sums.append(sums)
        first = last
    keys, sums = _sum_duplicates(np.concatenate(chunk_keys), np.concatenate(chunk_sums))  # once, at the end
    # X = upper + upper^T (nodes are sorted within a visit, so every pair has i < j: no diagonal)
    upper_rows, upper_cols = np.divmod(keys, num_nodes)
    symmetric = np.concatenate([keys, upper_cols * num_nodes + upper_rows])
    order = np.argsort(symmetric, kind="stable")
    rows, cols = np.divmod(symmetric[order], num_nodes)
    return Cooccurrence(rows, cols, np.concatenate([sums, sums])[order], num_nodes)


# ----------------------------------------------------------------------------- training
def glove_weight(counts: Tensor) -> Tensor:
    """f(x) = min(1, (x / x_max)^alpha)."""
    return torch.clamp(counts / X_MAX, max=1.0) ** ALPHA


def _row_sums(
    rows: Tensor, other: Tensor, other_table: Tensor, weight: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """For each distinct row r of `rows`: the sum over pairs p with rows[p] == r of weight[p] *
    other_table[other[p]] (one fused embedding_bag), and of weight[p]: (rows, vectors, scalars)."""
    sorted_rows, order = torch.sort(rows)
    touched, counts = torch.unique_consecutive(sorted_rows, return_counts=True)
    offsets = torch.cumsum(counts, 0) - counts
    vectors = F.embedding_bag(
        other[order], other_table, offsets, mode="sum", per_sample_weights=weight[order]
    )
    scalars = torch.bincount(rows, weights=weight, minlength=len(other_table))[touched]
    return touched, vectors, scalars


def _adagrad(param: Tensor, grad_sq: Tensor, rows: Tensor, grad: Tensor, lr: float) -> None:
    """AdaGrad on the given (distinct) rows: G += g^2, param -= lr g / sqrt(G)."""
    accumulated = grad_sq.index_select(0, rows).addcmul_(grad, grad)
    grad_sq.index_copy_(0, rows, accumulated)
    param.index_add_(0, rows, grad * accumulated.rsqrt_(), alpha=-lr)


def train_glove(
    cooc: Cooccurrence,
    dim: int,
    epochs: int = 50,
    lr: float = 0.05,
    seed: int = 0,
    batch_size: int = 16384,
    return_losses: bool = False,
    device: str | torch.device | None = None,
) -> Tensor | tuple[Tensor, list[float]]:
    """GloVe vectors [num_nodes, dim] (W + W~) from a co-occurrence matrix.

    AdaGrad as in the GloVe reference code (squared-gradient sums start at 1), mini-batched over
    the nonzeros in a new random order every epoch: each batch sums the gradients of a row over
    its pairs and updates the rows it touches once. Nodes that never co-occur keep their small
    random initialisation (uniform in +-0.5/dim, as in the reference). With `return_losses`,
    also the loss per epoch, J = sum f(x) (w_i . w~_j + b_i + b~_j - log x)^2 / 2 averaged over
    the nonzeros (computed on the fly, before each batch's update). Deterministic for a seed
    (the random draws are made on the CPU; `device` only moves the arithmetic, e.g. to a GPU).
    Returns the vectors on the CPU.
    """
    num_nodes = cooc.size
    keep = cooc.counts > 0
    device = torch.device(device or "cpu")
    rows = torch.from_numpy(cooc.rows[keep].astype(np.int64)).to(device)
    cols = torch.from_numpy(cooc.cols[keep].astype(np.int64)).to(device)
    counts = torch.from_numpy(cooc.counts[keep].astype(np.float32)).to(device)
    log_counts, weights = torch.log(counts), glove_weight(counts)
    generator = torch.Generator().manual_seed(seed)

    def init(*shape: int) -> Tensor:
        return ((torch.rand(*shape, generator=generator) - 0.5) / dim).to(device)

    w, w_ctx = init(num_nodes, dim), init(num_nodes, dim)
    b, b_ctx = init(num_nodes), init(num_nodes)
    grad_sq = [torch.ones_like(p) for p in (w, w_ctx, b, b_ctx)]
    losses: list[float] = []
    for _ in range(epochs):
        order = torch.randperm(len(counts), generator=generator).to(device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            i, j = rows[batch], cols[batch]
            dot = torch.linalg.vecdot(w.index_select(0, i), w_ctx.index_select(0, j))
            diff = dot + b[i] + b_ctx[j] - log_counts[batch]
            scaled = weights[batch] * diff  # dJ/d(w_i . w~_j) per pair
            total += torch.dot(scaled, diff) / 2
            # dJ/dw_i = sum_j scaled w~_j, dJ/dw~_j = sum_i scaled w_i, dJ/db = sum scaled;
            # both from the parameters before this batch's update.
            touched_i, grad_w, grad_b = _row_sums(i, j, w_ctx, scaled)
            touched_j, grad_ctx, grad_b_ctx = _row_sums(j, i, w, scaled)
            _adagrad(w, grad_sq[0], touched_i, grad_w, lr)
            _adagrad(b, grad_sq[2], touched_i, grad_b, lr)
            _adagrad(w_ctx, grad_sq[1], touched_j, grad_ctx, lr)
            _adagrad(b_ctx, grad_sq[3], touched_j, grad_b_ctx, lr)
        losses.append(float(total) / max(len(counts), 1))
    vectors = (w + w_ctx).cpu()
    return (vectors, losses) if return_losses else vectors
