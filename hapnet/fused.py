"""Autograd functions over the fused C kernels of one propagation step (`hapnet.native`).

`hapnet.propagation.attention_weights` and `weighted_sum` call these for float32 CPU tensors when
the kernels have built (`native.kernels_for`); their own torch operations are the reference and
the fallback (tests/test_native.py holds the two to each other). Edges are `EdgeIndex` groups: the kernels
read their index tensors in place, through pointer arrays.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from hapnet import native

if TYPE_CHECKING:
    from hapnet.propagation import EdgeIndex


def attention(query_proj: Tensor, keys: Sequence[Tensor], edges: Sequence[EdgeIndex], u: Tensor) -> Tensor:
    """alpha of every candidate of every group, the groups one after another, as
    `propagation.attention_weights` (which splits it per group)."""
    return _Attention.apply(native.library(), _Edges(edges, keys), query_proj, u, *keys)


def weighted_sum(values: Sequence[Tensor], edges: Sequence[EdgeIndex], alpha: Tensor) -> Tensor:
    """out_t = sum over groups and candidates e of t of alpha_e values[source_e], as
    `propagation.weighted_sum` (alpha: `attention`'s layout)."""
    return _WeightedSum.apply(native.library(), _Edges(edges, values), alpha, *values)


def attend(
    query_proj: Tensor,
    keys: Sequence[Tensor],
    values: Sequence[Tensor],
    edges: Sequence[EdgeIndex],
    u: Tensor,
) -> tuple[Tensor, Tensor]:
    """(`weighted_sum`, `attention`) of one step, with the edges' C view built and checked once
    (a group's keys are projections of its values' rows: the same rows)."""
    if any(len(k) != len(v) for k, v in zip(keys, values, strict=True)):
        raise IndexError("a group's keys and values must have the same rows")
    library, view = native.library(), _Edges(edges, values)
    alpha = _Attention.apply(library, view, query_proj, u, *keys)
    return _WeightedSum.apply(library, view, alpha, *values), alpha


class _Edges:
    """The C view of a step's groups of edges: pointer arrays to each group's index tensors."""

    def __init__(self, edges: Sequence[EdgeIndex], rows: Sequence[Tensor]):
        """`rows`: each group's tensor of rows (keys or values), which the indices must fit."""
        self.edges = list(edges)  # keeps the index tensors alive while the pointers are in use
        self.num_targets = edges[0].num_targets
        # The kernels trust these indices: check them against the tensors (a few integer tests).
        for e, r in zip(edges, rows, strict=True):
            if e.num_targets != self.num_targets or len(r) < e.rows_needed or r.dim() != 2:
                raise IndexError("candidate edges do not fit their rows or targets")
        self.total = sum(e.num_candidates for e in edges)
        self.targets = _pointers([e.target for e in edges])
        self.sources = _pointers([e.source for e in edges])
        self.offsets = _pointers([e.offsets for e in edges])
        self.counts = _int64s([e.num_candidates for e in edges])
        # Groups whose every row one candidate reads: their rows' gradients need no zeroed buffer.
        self.once = [e.each_source_once and len(r) == e.rows_needed for e, r in zip(edges, rows, strict=True)]
        self.once_flags = _int64s(self.once)


def _pointers(tensors: Sequence[Tensor | None]) -> ctypes.Array:
    return (ctypes.c_void_p * len(tensors))(*(None if t is None else t.data_ptr() for t in tensors))


def _int64s(values: Sequence[int]) -> ctypes.Array:
    return (ctypes.c_int64 * len(values))(*values)


def _rows(x: Tensor) -> Tensor:
    """x with unit column stride (column slices of a projection have it already)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _gradient(like: Tensor, shape: tuple[int, ...], once: bool) -> Tensor:
    """A buffer the kernel scatters a gradient into: zeros, unless it writes every row once."""
    return like.new_empty(shape) if once else like.new_zeros(shape)


def _check(failed: int) -> None:
    if failed:
        raise MemoryError("hapnet's fused propagation kernel ran out of memory")


class _Attention(torch.autograd.Function):
    """alpha [all candidates] from the query projections, u and every group's keys; tanh of every
    edge is kept for the backward, as `propagation._EdgeScores` does."""

    @staticmethod
    def forward(ctx, library, edges: _Edges, query_proj: Tensor, u: Tensor, *keys: Tensor) -> Tensor:  # noqa: ANN001
        query_proj, u, keys = _rows(query_proj), u.contiguous(), tuple(_rows(k) for k in keys)
        size = u.shape[0]
        if query_proj.shape != (edges.num_targets, size) or any(k.shape[1] != size for k in keys):
            raise ValueError("query and key projections must be [rows, len(u)]")
        alpha = query_proj.new_empty(edges.total)
        keep = any(ctx.needs_input_grad[2:]) or size > 1024  # else the kernel's stack holds a row
        tanh_all = query_proj.new_empty((edges.total, size)) if keep else None
        _check(
            native.call(
                library.attention_forward,
                query_proj,
                query_proj.stride(0),
                edges.num_targets,
                size,
                u,
                len(keys),
                _pointers(keys),
                _int64s([k.stride(0) for k in keys]),
                edges.targets,
                edges.sources,
                edges.counts,
                alpha,
                tanh_all,
            )
        )
        ctx.save_for_backward(alpha, tanh_all, u)
        ctx.library, ctx.edges, ctx.key_shapes = library, edges, [k.shape for k in keys]
        return alpha

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_alpha: Tensor) -> tuple[Tensor | None, ...]:
        alpha, tanh_all, u = ctx.saved_tensors
        edges, size = ctx.edges, u.shape[0]
        grad_query = u.new_zeros((edges.num_targets, size))
        grad_keys = [
            _gradient(u, shape, once) for shape, once in zip(ctx.key_shapes, edges.once, strict=True)
        ]
        grad_u = u.new_empty(size)
        grad_alpha, scratch = grad_alpha.contiguous(), torch.empty_like(tanh_all)
        _check(
            native.call(
                ctx.library.attention_backward,
                grad_alpha,
                alpha,
                tanh_all,
                u,
                edges.num_targets,
                size,
                len(grad_keys),
                edges.targets,
                edges.sources,
                edges.counts,
                grad_query,
                size,
                _pointers(grad_keys),
                _int64s([size] * len(grad_keys)),
                _int64s([s[0] for s in ctx.key_shapes]),
                edges.once_flags,
                grad_u,
                scratch,
            )
        )
        return None, None, grad_query, grad_u, *grad_keys


class _WeightedSum(torch.autograd.Function):
    """out [targets, d] from alpha [all candidates] and every group's rows."""

    @staticmethod
    def forward(ctx, library, edges: _Edges, alpha: Tensor, *values: Tensor) -> Tensor:  # noqa: ANN001
        alpha, values = alpha.contiguous(), tuple(_rows(v) for v in values)
        width = values[0].shape[1]
        if alpha.shape != (edges.total,) or any(v.shape[1] != width for v in values):
            raise ValueError("one weight per candidate, and rows of one width, are needed")
        out = values[0].new_empty((edges.num_targets, width))
        _check(
            native.call(
                library.weighted_sum_forward,
                edges.num_targets,
                width,
                len(values),
                _pointers(values),
                _int64s([v.stride(0) for v in values]),
                edges.targets,
                edges.sources,
                edges.offsets,
                edges.counts,
                alpha,
                out,
            )
        )
        ctx.save_for_backward(alpha, *values)
        ctx.library, ctx.edges = library, edges
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        alpha, *values = ctx.saved_tensors
        edges, width = ctx.edges, values[0].shape[1]
        grad_out = grad_out.contiguous()
        grad_alpha = alpha.new_empty(edges.total) if ctx.needs_input_grad[2] else None
        grad_values = [
            _gradient(v, (v.shape[0], width), once) if need else None
            for v, need, once in zip(values, ctx.needs_input_grad[3:], edges.once, strict=True)
        ]
        _check(
            native.call(
                ctx.library.weighted_sum_backward,
                grad_out,
                width,
                len(values),
                _pointers(values),
                _int64s([v.stride(0) for v in values]),
                _int64s([v.shape[0] for v in values]),
                edges.targets,
                edges.sources,
                edges.counts,
                alpha,
                grad_alpha,
                _pointers(grad_values),
                _int64s([width] * len(values)),
                edges.once_flags,
            )
        )
        return None, None, grad_alpha, *grad_values
