"""The one message-passing primitive HAP and GRAM share: attention over candidate edges.

A target t attends over its candidates j (itself included):

    out_t = sum_j alpha_tj * h_j,    alpha_t. = softmax_j f(q_t, h_j),
    f(q, k) = u^T tanh(W_q q + W_k k + b)                         (docs/algorithms.md)

W = [W_q, W_k] is split so that `W_q q` and `W_k k` are matrix products over nodes (once per node
and step); per edge only an add, a tanh and a dot with u remain (`edge_scores`, in chunks; only
tanh's output is kept for the backward). The softmax runs over segments (all candidates of one
target, `segment_softmax`); the weighted sum over each target's candidates is one
`embedding_bag` call (gather, scale and sum without an [edges, dim] intermediate, with a fused
backward for both the embeddings and the weights). Where every target has exactly one candidate
in each group (HAP's top-down steps on a tree: itself and its parent), the softmax is a dense
one over a [groups, targets] matrix and the sums are row-aligned: no scatter at all.

Candidates come in groups (`Candidates`): the candidates of one group have their embeddings in
one tensor. HAP keeps the embeddings of each level in their own tensors (no step copies the whole
embedding table) and attends over a few groups per step; `attend` is the simple form for one
`hierarchy.Step` over one tensor of candidate embeddings (what GRAM uses).

Only torch operations: the same code runs on the CPU, on CUDA and under torch.compile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hapnet.ontology.hierarchy import Step


# ----------------------------------------------------------------------------- segment ops
def scatter_sum(src: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """out[s] = sum of src[i] over the i with index[i] == s (rows of src; empty segments are 0)."""
    out = src.new_zeros((num_segments, *src.shape[1:]))
    return out.index_add(0, index, src)


def segment_softmax(scores: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Softmax of `scores` [C] within each segment (entries with the same `index`).

    The segment maximum is subtracted first (it cancels out exactly, so it is taken without
    gradient): huge scores neither overflow nor turn into NaN.
    """
    seg_max = scores.new_full((num_segments,), -math.inf)
    seg_max = seg_max.scatter_reduce(0, index, scores.detach(), reduce="amax", include_self=True)
    exp = torch.exp(scores - seg_max.index_select(0, index))
    return exp / scatter_sum(exp, index, num_segments).index_select(0, index)


# ----------------------------------------------------------------------------- scorer
class AttentionScorer(nn.Module):
    """f(q, k) = u^T tanh(W_q q + W_k k + b), with W_q q (+ b) and W_k k projected per node."""

    def __init__(self, dim: int, attention_dim: int):
        super().__init__()
        self.query = nn.Linear(dim, attention_dim)  # W_q and b
        self.key = nn.Linear(dim, attention_dim, bias=False)  # W_k
        self.u = nn.Parameter(torch.empty(attention_dim))
        bound = 1 / math.sqrt(attention_dim)
        nn.init.uniform_(self.u, -bound, bound)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(W_q x + b, W_k x) in one matrix product, for rows that are both query and candidate."""
        weight = torch.cat([self.query.weight, self.key.weight])
        bias = torch.cat([self.query.bias, self.query.bias.new_zeros(self.key.out_features)])
        query_proj, key_proj = F.linear(x, weight, bias).split(self.key.out_features, dim=-1)
        return query_proj, key_proj

    def score(self, query_proj: Tensor, key_proj: Tensor) -> Tensor:
        """f from projections, rows paired: query_proj = W_q q + b, key_proj = W_k k."""
        return torch.tanh(query_proj + key_proj) @ self.u

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        return self.score(self.query(q), self.key(k))


# ----------------------------------------------------------------------------- per-edge ops
EDGE_CHUNK = 4096  # edges per chunk on CPU: the [chunk, attention_dim] temporaries stay in cache


class _EdgeScores(torch.autograd.Function):
    """s_e = u . tanh(query_proj[target_e] + key_proj[source_e]) for every edge, in chunks.

    The [chunk, attention_dim] sums never exist for all edges at once; tanh of them is kept for
    the backward (one [edges, attention_dim] tensor) only when a gradient is needed.
    `target` / `source` None mean edge e uses row e.
    """

    @staticmethod
    def forward(
        ctx,
        query_proj: Tensor,
        key_proj: Tensor,
        u: Tensor,
        target: Tensor | None,
        source: Tensor | None,
        num_edges: int,
        chunk: int,
    ) -> Tensor:
        keep = any(ctx.needs_input_grad[:3])
        tanh_all = query_proj.new_empty((num_edges, u.shape[0])) if keep else None
        scores = query_proj.new_empty(num_edges)
        for start in range(0, num_edges, chunk):
            end = min(start + chunk, num_edges)
            z = _edge_sum(query_proj, key_proj, target, source, start, end)
            th = torch.tanh(z, out=tanh_all[start:end]) if tanh_all is not None else z.tanh_()
            torch.mv(th, u, out=scores[start:end])
        ctx.save_for_backward(tanh_all, u, target, source)
        ctx.shapes, ctx.chunk = (query_proj.shape, key_proj.shape), chunk
        return scores

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        tanh_all, u, target, source = ctx.saved_tensors
        query_shape, key_shape = ctx.shapes
        grad_query, grad_key = u.new_zeros(query_shape), u.new_zeros(key_shape)
        grad_u = torch.mv(tanh_all.t(), grad)
        for start in range(0, len(tanh_all), ctx.chunk):
            end = min(start + ctx.chunk, len(tanh_all))
            th = tanh_all[start:end]
            dz = torch.mul(th, th).neg_().add_(1).mul_(grad[start:end].unsqueeze(1)).mul_(u)  # d s / d z
            if target is None:
                grad_query[start:end] += dz
            else:
                grad_query.index_add_(0, target[start:end], dz)
            if source is None:
                grad_key[start:end] += dz
            else:
                grad_key.index_add_(0, source[start:end], dz)
        return grad_query, grad_key, grad_u, None, None, None, None


def _edge_sum(
    query_proj: Tensor, key_proj: Tensor, target: Tensor | None, source: Tensor | None, start: int, end: int
) -> Tensor:
    """A fresh [end - start, a] tensor: query_proj[target_e] + key_proj[source_e]."""
    query = query_proj[start:end] if target is None else query_proj.index_select(0, target[start:end])
    if source is None:
        return query + key_proj[start:end] if target is None else query.add_(key_proj[start:end])
    key = key_proj.index_select(0, source[start:end])
    return key.add_(query)


def edge_scores(
    query_proj: Tensor, key_proj: Tensor, u: Tensor, target: Tensor | None, source: Tensor | None
) -> Tensor:
    """u . tanh(query_proj[target_e] + key_proj[source_e]) per edge (None: edge e uses row e).

    Computed in u's precision: under autocast the projections may arrive in bf16/fp16.
    """
    num_edges = len(target) if target is not None else len(source) if source is not None else len(query_proj)
    chunk = EDGE_CHUNK if query_proj.device.type == "cpu" else max(num_edges, 1)
    with torch.autocast(query_proj.device.type, enabled=False):
        query_proj, key_proj = query_proj.to(u.dtype), key_proj.to(u.dtype)
        return _EdgeScores.apply(query_proj, key_proj, u, target, source, num_edges, chunk)


def row_dot(a: Tensor, b: Tensor, chunk: int = 8192) -> Tensor:
    """(a * b).sum(-1) for [T, d] tensors, in row chunks so the product stays small."""
    if a.shape[0] <= chunk:
        return torch.linalg.vecdot(a, b)
    return torch.cat([torch.linalg.vecdot(x, y) for x, y in zip(a.split(chunk), b.split(chunk), strict=True)])


class _ScaleRows(torch.autograd.Function):
    """values * weight[:, None]; the weight gradient is a chunked row dot (no [T, d] temporary)."""

    @staticmethod
    def forward(ctx, values: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(values, weight)
        return values * weight.unsqueeze(-1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        values, weight = ctx.saved_tensors
        grad_values = grad * weight.unsqueeze(-1) if ctx.needs_input_grad[0] else None
        grad_weight = row_dot(grad, values) if ctx.needs_input_grad[1] else None
        return grad_values, grad_weight


def scale_rows(values: Tensor, weight: Tensor) -> Tensor:
    """values [T, d] * weight [T] per row (differentiable in both)."""
    return _ScaleRows.apply(values, weight)


class _PermuteRows(torch.autograd.Function):
    """table[index] for an index that holds every row once: the backward is the inverse
    permutation (a gather), not a zero-fill plus scatter-add."""

    @staticmethod
    def forward(ctx, table: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return table.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


def gather_rows(table: Tensor, index: Tensor, inverse: Tensor | None = None) -> Tensor:
    """table.index_select(0, index); pass `inverse` (inverse[index] = arange) when index is a
    permutation of all rows, for a faster backward."""
    if inverse is not None:
        return _PermuteRows.apply(table, index, inverse)
    return table.index_select(0, index)


# ----------------------------------------------------------------------------- edges
class EdgeIndex(nn.Module):
    """The candidate edges of one group, sorted by target, as buffers (`.to(device)` moves them).

    `target` [C]: position of each candidate's target, None = candidate i belongs to target i.
    `source` [C]: row of each candidate in the group's embedding tensor (of `num_sources` rows),
    None = row i.
    Build it once and reuse it: sorting and the bag offsets are done here, not per forward.
    """

    def __init__(
        self,
        target: np.ndarray | None,
        source: np.ndarray | None,
        num_targets: int,
        num_sources: int | None = None,
    ):
        super().__init__()
        source = None if source is None else np.asarray(source, dtype=np.int64)
        if target is None and source is not None and len(source) != num_targets:
            raise ValueError("aligned candidates need one source row per target")
        for index, bound in ((target, num_targets), (source, num_sources)):
            if (
                index is not None
                and len(index)
                and (np.min(index) < 0 or (bound is not None and np.max(index) >= bound))
            ):
                raise ValueError("candidate edges point outside their targets or rows")
        self.num_targets = num_targets
        self.order: np.ndarray | None = None  # sorted position -> caller's candidate position
        if target is not None:
            target = np.asarray(target, dtype=np.int64)
            if len(target) and np.any(np.diff(target) < 0):
                self.order = np.argsort(target, kind="stable")
                target = target[self.order]
                source = None if source is None else source[self.order]
            if source is None:
                source = np.arange(len(target), dtype=np.int64)
            if np.array_equal(target, np.arange(num_targets)):
                target = None  # one candidate per target, in target order
                if num_sources == num_targets and np.array_equal(source, np.arange(num_targets)):
                    source = None  # ... and candidate i is row i
        self.num_candidates = num_targets if target is None else len(target)
        offsets = None if target is None else np.searchsorted(target, np.arange(num_targets))
        for name, array in [("source", source), ("target", target), ("offsets", offsets)]:
            tensor = None if array is None else torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))
            self.register_buffer(name, tensor, persistent=False)
        self.register_buffer("positions", torch.arange(num_targets), persistent=False)

    def segment(self) -> Tensor:
        """Target position of every candidate (the softmax segments)."""
        return self.positions if self.target is None else self.target

    def gather_sources(self, rows: Tensor) -> Tensor:
        return rows if self.source is None else rows.index_select(0, self.source)

    def weighted_sum(self, weight: Tensor, values: Tensor) -> Tensor:
        """out [T, d]: out_t = sum over candidates e of t of weight_e * values[source_e]."""
        if self.source is None:  # self candidates: row t of values belongs to target t
            return scale_rows(values, weight)
        if self.target is None:  # one candidate per target: a gather, not bags of one
            return scale_rows(values.index_select(0, self.source), weight)
        offsets = self.positions if self.offsets is None else self.offsets
        return F.embedding_bag(self.source, values, offsets, mode="sum", per_sample_weights=weight)


@dataclass
class Candidates:
    """One group of candidate edges: their embeddings `values` [S, d], W_k of those rows `keys`
    [S, a] (None when only weights are propagated) and the edges into them."""

    values: Tensor
    keys: Tensor | None
    edges: EdgeIndex


# ----------------------------------------------------------------------------- attention
def attention_weights(
    query_proj: Tensor, groups: Sequence[Candidates], scorer: AttentionScorer
) -> list[Tensor]:
    """alpha per candidate of every group (sorted edge order): softmax over each target's candidates."""
    scores = []
    for group in groups:
        assert group.keys is not None, "scores need key projections"
        scores.append(edge_scores(query_proj, group.keys, scorer.u, group.edges.target, group.edges.source))
    if all(group.edges.target is None for group in groups):  # one candidate per target and group
        return list(torch.stack(scores).softmax(dim=0).unbind(0))  # a dense [groups, targets] softmax
    index = torch.cat([group.edges.segment() for group in groups])
    alpha = segment_softmax(torch.cat(scores), index, query_proj.shape[0])
    return list(alpha.split([len(s) for s in scores]))


def weighted_sum(groups: Sequence[Candidates], weights: Sequence[Tensor]) -> Tensor:
    """out_t = sum over candidates j of t (in every group) of weight_j * h_j."""
    out = None
    for group, weight in zip(groups, weights, strict=True):
        part = group.edges.weighted_sum(weight, group.values)
        out = part if out is None else out.add_(part)  # parts are fresh tensors: add in place
    assert out is not None, "attention needs at least one group of candidates"
    return out


def attend_candidates(
    query_proj: Tensor, groups: Sequence[Candidates], scorer: AttentionScorer
) -> tuple[Tensor, list[Tensor]]:
    """New embeddings [T, d] of the targets of `query_proj` [T, a] (= W_q q + b), alpha per group."""
    weights = attention_weights(query_proj, groups, scorer)
    return weighted_sum(groups, weights), weights


def attend(
    step: Step | EdgeIndex, queries: Tensor, candidates_h: Tensor, scorer: AttentionScorer
) -> tuple[Tensor, Tensor]:
    """One `hierarchy.Step`: its targets attend over their candidates (self included).

    `queries` [T, d]: the query embedding of each of `step.targets`; `candidates_h` [S, d]: the
    rows `step.edge_source` points into (W_k is applied to every row: pass only rows in use).
    `step` may also be an `EdgeIndex` built once from the step (faster when called repeatedly).
    Returns the new embeddings [T, d] of `step.targets` and alpha [C] per candidate edge, in the
    step's edge order.
    """
    edges = step if isinstance(step, EdgeIndex) else step_edges(step).to(candidates_h.device)
    group = Candidates(candidates_h, scorer.key(candidates_h), edges)
    out, (alpha,) = attend_candidates(scorer.query(queries), [group], scorer)
    if edges.order is not None:  # back to the step's edge order
        alpha = alpha.index_select(0, _inverse(edges.order, alpha.device))
    return out, alpha


def step_edges(step: Step) -> EdgeIndex:
    """The `EdgeIndex` of a `hierarchy.Step` (edge_target, edge_source, len(targets))."""
    return EdgeIndex(np.asarray(step.edge_target), np.asarray(step.edge_source), len(step.targets))


def _inverse(order: np.ndarray, device: torch.device) -> Tensor:
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return torch.from_numpy(inverse).to(device)
