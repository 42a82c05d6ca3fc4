"""A one-layer GRU over a packed batch, with its backward written out (for the CPU).

torch's packed GRU on the CPU runs both input and recurrent products step by step, and its
backward makes two [3H, H] weight gradients per step (a few rows each) and adds them up. Here
the input product is one matrix product over all packed rows, and the backward collects the
gate gradients of every step first, then makes each weight gradient with one product over all
rows. Only the recurrent product and the gate arithmetic stay per step. Same equations and
parameters as `torch.nn.GRU` (gates r, z, n; h' = (1 - z) * n + z * h), so a model's
`nn.GRU` weights are used as they are; on CUDA the model keeps cuDNN's GRU. For float32, a step's
gate arithmetic is one call of the fused C kernels (hapnet/kernels/predictor.c) instead of ~10
operations forward and ~20 backward; the torch operations here are their reference and fallback.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hapnet import native


class _PackedGRU(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        batch_sizes: list[int],
        weight_ih: Tensor,
        weight_hh: Tensor,
        bias_ih: Tensor,
        bias_hh: Tensor,
    ) -> Tensor:
        hidden = weight_hh.shape[1]
        library = native.kernels_for(x, weight_hh)
        gates_x = torch.addmm(bias_ih, x, weight_ih.t())  # [N, 3H]: every step's input product at once
        out = x.new_empty(len(x), hidden)
        rz_all = x.new_empty(len(x), 2 * hidden)  # sigmoid gates r, z of every row
        n_all = x.new_empty(len(x), hidden)  # candidate state n
        hn_all = x.new_empty(len(x), hidden)  # W_hn h + b_hn, which r multiplies
        starts = []  # first packed row of every step
        start, previous = 0, None
        for size in batch_sizes:
            starts.append(start)
            end = start + size
            gx = gates_x[start:end]
            if previous is None:  # h_0 = 0: the recurrent product is its bias
                gh = bias_hh.expand(size, -1)
                h_prev = None
            else:
                h_prev = out[previous : previous + size]
                gh = torch.addmm(bias_hh, h_prev, weight_hh.t())
            rows = slice(start, end)
            _gates_forward(library, gx, gh, h_prev, rz_all[rows], n_all[rows], hn_all[rows], out[rows])
            previous, start = start, end
        ctx.save_for_backward(x, weight_ih, weight_hh, out, rz_all, n_all, hn_all)
        ctx.batch_sizes, ctx.starts, ctx.library = batch_sizes, starts, library
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight_ih, weight_hh, out, rz_all, n_all, hn_all = ctx.saved_tensors
        batch_sizes, starts = ctx.batch_sizes, ctx.starts
        hidden = weight_hh.shape[1]
        grad_out = grad_out.contiguous()
        grad_gx = x.new_empty(len(x), 3 * hidden)  # d loss / d (W_i x + b_i), per gate
        grad_gh = x.new_empty(len(x), 3 * hidden)  # d loss / d (W_h h + b_h), per gate
        h_prev_all = out.new_zeros(len(x), hidden)  # h_{t-1} of every row (0 at the first step)
        carried = None  # d loss / d h_t from step t + 1 (its first rows)
        for t in range(len(batch_sizes) - 1, -1, -1):
            start, size = starts[t], batch_sizes[t]
            rows = slice(start, start + size)
            grad_h = grad_out[rows].clone()
            if carried is not None:
                grad_h[: len(carried)] += carried
            if t > 0:
                h_prev_all[rows] = out[starts[t - 1] : starts[t - 1] + size]
            saved = (rz_all[rows], n_all[rows], hn_all[rows], h_prev_all[rows])
            grad_h = _gates_backward(ctx.library, grad_h, *saved, grad_gx[rows], grad_gh[rows])
            if t > 0:
                carried = torch.addmm(grad_h, grad_gh[rows], weight_hh)
        grad_x = grad_gx @ weight_ih if ctx.needs_input_grad[0] else None
        first = batch_sizes[0] if batch_sizes else 0  # rows of step 0 have h_prev = 0
        return (
            grad_x,
            None,
            grad_gx.t() @ x,
            grad_gh[first:].t() @ h_prev_all[first:],
            grad_gx.sum(0),
            grad_gh.sum(0),
        )


def _gates_forward(
    library,  # noqa: ANN001
    gx: Tensor,
    gh: Tensor,
    h_prev: Tensor | None,
    rz: Tensor,
    n: Tensor,
    hn: Tensor,
    h: Tensor,
) -> None:
    """One step's gates from gx = W_i x + b_i and gh = W_h h_prev + b_h, into rz, n, hn (W_hn h_prev
    + b_hn, which r multiplies) and h. `library`: the fused kernels, or None for torch operations."""
    hidden = n.shape[1]
    if library is not None:
        # gh's row stride is 0 at step 0, whose gh is the bias
        native.call(library.gru_forward_step, len(n), hidden, gx, gh, gh.stride(0), h_prev, rz, n, hn, h)
        return
    torch.add(gx[:, : 2 * hidden], gh[:, : 2 * hidden], out=rz).sigmoid_()
    r, z = rz[:, :hidden], rz[:, hidden:]
    hn.copy_(gh[:, 2 * hidden :])
    torch.addcmul(gx[:, 2 * hidden :], r, hn, out=n).tanh_()
    if h_prev is None:
        torch.sub(n, z * n, out=h)  # (1 - z) * n
    else:
        torch.addcmul(n, z, h_prev - n, out=h)


def _gates_backward(
    library,  # noqa: ANN001
    grad_h: Tensor,
    rz: Tensor,
    n: Tensor,
    hn: Tensor,
    h_prev: Tensor,
    grad_gx: Tensor,
    grad_gh: Tensor,
) -> Tensor:
    """One step's gate gradients from grad_h = d loss / d h (h_prev: zeros at step 0), into
    grad_gx and grad_gh; returns grad_h * z, the part of d loss / d h_prev not through W_h."""
    hidden = n.shape[1]
    if library is not None:
        native.call(library.gru_backward_step, len(n), hidden, grad_h, rz, n, hn, h_prev, grad_gx, grad_gh)
        return grad_h  # the kernel leaves grad_h * z in it
    r, z = rz[:, :hidden], rz[:, hidden:]
    grad_n_pre = grad_h * (1 - z) * (1 - n * n)  # through h = (1 - z) n + z h_prev, n = tanh(.)
    torch.mul(grad_n_pre * hn, r * (1 - r), out=grad_gx[:, :hidden])
    torch.mul(grad_h * (h_prev - n), z * (1 - z), out=grad_gx[:, hidden : 2 * hidden])
    grad_gx[:, 2 * hidden :] = grad_n_pre
    grad_gh[:, : 2 * hidden] = grad_gx[:, : 2 * hidden]
    torch.mul(grad_n_pre, r, out=grad_gh[:, 2 * hidden :])
    return grad_h * z


def packed_gru(x: Tensor, batch_sizes: Tensor, gru: torch.nn.GRU) -> Tensor:
    """Output rows of a one-layer, unidirectional `gru` over packed rows `x` [N, input] laid out
    time-major as `pack_padded_sequence` lays them out (`batch_sizes` [T], longest first), from
    h_0 = 0: what `gru(PackedSequence(x, batch_sizes, ...))[0].data` returns."""
    if gru.num_layers != 1 or gru.bidirectional or not gru.bias or gru.proj_size:
        raise ValueError("packed_gru supports one-layer, unidirectional GRUs with biases")
    return _PackedGRU.apply(
        x, batch_sizes.tolist(), gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0
    )
