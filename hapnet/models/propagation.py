"""The one message-passing primitive HAP and GRAM share: attention over candidate edges.

A target t attends over its candidates j (itself included):

    out_t = sum_j alpha_tj * h_j,    alpha_t. = softmax_j f(q_t, h_j),
    f(q, k) = u^T tanh(W_q q + W_k k + b)                         (docs/algorithms.md)

W = [W_q, W_k] is split so that `W_q q` and `W_k k` are matrix products over nodes (once per node
and step); per edge only an add, a tanh and a dot with u remain (`edge_scores`). The softmax runs
over segments (all candidates of one target, `segment_softmax`); the weighted sum over each
target's candidates is one `embedding_bag` call (gather, scale and sum without an [edges, dim]
intermediate, with a fused backward for both the embeddings and the weights). Where every
target has exactly one candidate in each group (HAP's top-down steps on a tree: itself and its
parent), the softmax is a dense one over a [groups, targets] matrix and the sums are
row-aligned: no scatter at all.

Candidates come in groups (`Candidates`): the candidates of one group have their embeddings in
one tensor. HAP keeps the embeddings of each level in their own tensors (no step copies the whole
embedding table) and attends over a few groups per step; `attend` is the simple form for one
`hierarchy.Step` over one tensor of candidate embeddings (what GRAM uses).

Only torch operations: the same code runs on the CPU and on CUDA, eagerly or under torch.compile.
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
def edge_scores(
    query_proj: Tensor, key_proj: Tensor, u: Tensor, target: Tensor | None, source: Tensor | None
) -> Tensor:
    """u . tanh(query_proj[target_e] + key_proj[source_e]) per edge (None: edge e uses row e).

    Computed in u's precision: under autocast the projections may arrive in bf16/fp16.
    """
    with torch.autocast(query_proj.device.type, enabled=False):
        query = query_proj.to(u.dtype)
        key = key_proj.to(u.dtype)
        if target is not None:
            query = query.index_select(0, target)
        if source is not None:
            key = key.index_select(0, source)
        return torch.tanh(query + key) @ u


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
            return values * weight.unsqueeze(-1)
        if self.target is None:  # one candidate per target: a gather, not bags of one
            return values.index_select(0, self.source) * weight.unsqueeze(-1)
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
