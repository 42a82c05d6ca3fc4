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


def sum_cooccurrences(parts: list[Cooccurrence]) -> Cooccurrence:
    """The element-wise sum of co-occurrence matrices of one size (the shards of a distributed
    run: their visits' counts add up to those of all visits), entries sorted by (row, column)."""
    size = parts[0].size
    keys = np.concatenate([p.rows * size + p.cols for p in parts])
    distinct, sums = _sum_duplicates(keys, np.concatenate([p.counts for p in parts]))
    rows, cols = np.divmod(distinct, size)
    return Cooccurrence(rows, cols, sums, size)


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


def _adagrad(param: Tensor, grad_sq: Tensor, grad: Tensor, lr: float) -> None:
    """AdaGrad in place: G += g^2, param -= lr g / sqrt(G) (views of the tables' blocks)."""
    grad_sq.addcmul_(grad, grad)
    param.addcdiv_(grad, grad_sq.sqrt(), value=-lr)


def train_glove(
    cooc: Cooccurrence,
    dim: int,
    epochs: int = 50,
    lr: float = 0.1,
    seed: int = 0,
    block_size: int = 256,
    return_losses: bool = False,
    device: str | torch.device | None = None,
) -> Tensor | tuple[Tensor, list[float]]:
    """GloVe vectors [num_nodes, dim] (W + W~) from a co-occurrence matrix.

    AdaGrad as in the GloVe reference code (squared-gradient sums start at 1) on blocks of the
    matrix: every epoch shuffles the rows and the columns of the nodes that co-occur, cuts them
    into blocks of `block_size` and takes one step per (row block, column block) tile, in which
    all the tile's nonzeros update their rows of W and b and their columns of W~ and b~ once.
    Why tiles: a tile's dot products w_i . w~_j and the gradients G W~ and G^T W are three dense
    matrix products, which the CPU and the GPU run at full speed, where gathering one d-vector
    per nonzero was memory-bound (minutes for 50 epochs at d 400 on a few million nonzeros).
    The products also compute the zeros' dot products, which are then dropped: cheap while the
    co-occurring nodes' matrix is not very sparse (about 10 % dense with ancestors).

    Nodes that never co-occur keep their small random initialisation (uniform in +-0.5/dim, as
    in the reference). With `return_losses`, also the loss per epoch, J = sum f(x) (w_i . w~_j +
    b_i + b~_j - log x)^2 / 2 averaged over the nonzeros (computed on the fly, before each tile's
    update). Deterministic for a seed (the random draws are made on the CPU; `device` only moves
    the arithmetic, e.g. to a GPU). Returns the vectors on the CPU.
    """
    num_nodes = cooc.size
    keep = cooc.counts > 0
    device = torch.device(device or "cpu")
    generator = torch.Generator().manual_seed(seed)

    def init(*shape: int) -> Tensor:
        return (torch.rand(*shape, generator=generator) - 0.5) / dim

    w, w_ctx, b, b_ctx = init(num_nodes, dim), init(num_nodes, dim), init(num_nodes), init(num_nodes)
    # Only the nodes that co-occur take part: tables of those rows, in the current shuffled order.
    used = torch.from_numpy(np.union1d(cooc.rows[keep], cooc.cols[keep]).astype(np.int64))
    size = len(used)
    local = torch.full((num_nodes,), -1, dtype=torch.int64)
    local[used] = torch.arange(size)
    rows = local[torch.from_numpy(cooc.rows[keep].astype(np.int64))].to(device)
    cols = local[torch.from_numpy(cooc.cols[keep].astype(np.int64))].to(device)
    counts = torch.from_numpy(cooc.counts[keep].astype(np.float32)).to(device)
    log_counts, weights = torch.log(counts), glove_weight(counts)
    row_tables = [w[used].to(device), b[used].to(device)]
    col_tables = [w_ctx[used].to(device), b_ctx[used].to(device)]
    row_tables += [torch.ones_like(t) for t in row_tables]  # AdaGrad's squared-gradient sums
    col_tables += [torch.ones_like(t) for t in col_tables]
    row_node, col_node = torch.arange(size, device=device), torch.arange(size, device=device)
    blocks = max(1, -(-size // block_size))
    losses: list[float] = []
    for _ in range(epochs):
        row_order = torch.randperm(size, generator=generator).to(device)
        col_order = torch.randperm(size, generator=generator).to(device)
        row_tables = [t[row_order] for t in row_tables]  # a block is then a slice: a view
        col_tables = [t[col_order] for t in col_tables]
        row_node, col_node = row_node[row_order], col_node[col_order]
        row_pos = torch.empty_like(row_node).scatter_(0, row_node, torch.arange(size, device=device))
        col_pos = torch.empty_like(col_node).scatter_(0, col_node, torch.arange(size, device=device))
        i, j = row_pos[rows], col_pos[cols]  # each nonzero's place in the shuffled tables
        tile = (i // block_size) * blocks + j // block_size
        order = torch.argsort(tile)
        ends = torch.bincount(tile, minlength=blocks * blocks).cumsum(0).tolist()
        w_, b_, w_sq, b_sq = row_tables
        c_, bc_, c_sq, bc_sq = col_tables
        total = torch.zeros((), dtype=torch.float64, device=device)
        for t, end in enumerate(ends):
            start = ends[t - 1] if t else 0
            if start == end:
                continue
            r0, c0 = (t // blocks) * block_size, (t % blocks) * block_size
            r1, c1 = min(r0 + block_size, size), min(c0 + block_size, size)
            entries = order[start:end]
            ti, tj = i[entries] - r0, j[entries] - c0
            flat = ti * (c1 - c0) + tj
            dot = (w_[r0:r1] @ c_[c0:c1].T).view(-1)[flat]  # all the tile's products: see above
            diff = dot + b_[r0:r1][ti] + bc_[c0:c1][tj] - log_counts[entries]
            scaled = weights[entries] * diff  # dJ/d(w_i . w~_j) per nonzero
            total += torch.dot(scaled, diff) / 2
            grad = torch.zeros((r1 - r0) * (c1 - c0), device=device).index_put_((flat,), scaled)
            grad = grad.view(r1 - r0, c1 - c0)
            # dJ/dW = G W~, dJ/dW~ = G^T W, dJ/db = G 1, dJ/db~ = G^T 1, all from the
            # parameters before this tile's update.
            grad_w, grad_c = grad @ c_[c0:c1], grad.T @ w_[r0:r1]
            _adagrad(w_[r0:r1], w_sq[r0:r1], grad_w, lr)
            _adagrad(c_[c0:c1], c_sq[c0:c1], grad_c, lr)
            _adagrad(b_[r0:r1], b_sq[r0:r1], grad.sum(1), lr)
            _adagrad(bc_[c0:c1], bc_sq[c0:c1], grad.sum(0), lr)
        losses.append(float(total) / max(len(counts), 1))
    w[used[row_node.cpu()]] = row_tables[0].cpu()
    w_ctx[used[col_node.cpu()]] = col_tables[0].cpu()
    vectors = w + w_ctx
    return (vectors, losses) if return_losses else vectors


# ----------------------------------------------------------------------------- initialisation
def like_random_init(vectors: Tensor, cooc: Cooccurrence, std: float) -> Tensor:
    """GloVe vectors with the scale a model's random N(0, std^2) initialisation has, [num_nodes, dim].

    Raw GloVe vectors hurt a model that sums a visit's code vectors into tanh(sum): frequent
    codes get long vectors (norm ~ log count) and all vectors share a common direction, so a
    visit's sum adds up coherently: on the synthetic data's training visits 35 % of tanh(sum)'s
    coordinates saturate (|tanh| > 0.95, none with the random init) and two visits' vectors have
    cosine 0.77 on average (0.06): every visit looks alike to the GRU. Here the rows of the
    co-occurring nodes lose their mean weighted by how often each node co-occurs (sum_j X_ij: the
    direction shared by what visits hold) and are scaled to the random init's norm std * sqrt(d)
    each: GloVe's directions (which codes are alike) stay, the frequency in the norms goes (the
    biases held it). Other rows are returned as they are.
    """
    marginal = torch.zeros(cooc.size, dtype=torch.float64)
    marginal.index_add_(0, torch.from_numpy(cooc.rows), torch.from_numpy(cooc.counts.astype(np.float64)))
    used = torch.nonzero(marginal > 0).squeeze(1)
    rows = vectors[used]
    weights = (marginal[used] / marginal[used].sum()).to(rows.dtype)
    rows = rows - weights @ rows
    rows = F.normalize(rows, dim=1) * (std * vectors.shape[1] ** 0.5)
    return vectors.index_copy(0, used, rows)
