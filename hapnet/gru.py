"""A one-layer GRU over a packed batch, with its backward written out (for the CPU).

torch's packed GRU on the CPU runs both input and recurrent products step by step, and its
backward makes two [3H, H] weight gradients per step (a few rows each) and adds them up. Here
the input product is one matrix product over all packed rows, and the backward collects the
gate gradients of every step first, then makes each weight gradient with one product over all
rows. Only the recurrent product and the gate arithmetic stay per step. Same equations and
parameters as `torch.nn.GRU` (gates r, z, n; h' = (1 - z) * n + z * h), so a model's
`nn.GRU` weights are used as they are; on CUDA the model keeps cuDNN's GRU.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
            rz = torch.add(gx[:, : 2 * hidden], gh[:, : 2 * hidden], out=rz_all[start:end]).sigmoid_()
            r, z = rz[:, :hidden], rz[:, hidden:]
            hn_all[start:end] = gh[:, 2 * hidden :]
            n = torch.addcmul(gx[:, 2 * hidden :], r, gh[:, 2 * hidden :], out=n_all[start:end]).tanh_()
            h = out[start:end]
            if h_prev is None:
                torch.sub(n, z * n, out=h)  # (1 - z) * n
            else:
                torch.addcmul(n, z, h_prev - n, out=h)
            previous, start = start, end
        ctx.save_for_backward(x, weight_ih, weight_hh, out, rz_all, n_all, hn_all)
        ctx.batch_sizes, ctx.starts = batch_sizes, starts
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight_ih, weight_hh, out, rz_all, n_all, hn_all = ctx.saved_tensors
        batch_sizes, starts = ctx.batch_sizes, ctx.starts
        hidden = weight_hh.shape[1]
        grad_gx = x.new_empty(len(x), 3 * hidden)  # d loss / d (W_i x + b_i), per gate
        grad_gh = x.new_empty(len(x), 3 * hidden)  # d loss / d (W_h h + b_h), per gate
        h_prev_all = out.new_zeros(len(x), hidden)  # h_{t-1} of every row (0 at the first step)
        carried = None  # d loss / d h_t from step t + 1 (its first rows)
        for t in range(len(batch_sizes) - 1, -1, -1):
            start, size = starts[t], batch_sizes[t]
            end = start + size
            grad_h = grad_out[start:end].clone()
            if carried is not None:
                grad_h[: len(carried)] += carried
            r, z = rz_all[start:end, :hidden], rz_all[start:end, hidden:]
            n = n_all[start:end]
            if t > 0:
                h_prev = out[starts[t - 1] : starts[t - 1] + size]
                h_prev_all[start:end] = h_prev
            else:
                h_prev = None
            grad_n_pre = grad_h * (1 - z) * (1 - n * n)  # through h = (1 - z) n + z h_prev, n = tanh(.)
            grad_z = grad_h * (-n if h_prev is None else h_prev - n)
            gx, gh = grad_gx[start:end], grad_gh[start:end]
            torch.mul(grad_n_pre * hn_all[start:end], r * (1 - r), out=gx[:, :hidden])
            torch.mul(grad_z, z * (1 - z), out=gx[:, hidden : 2 * hidden])
            gx[:, 2 * hidden :] = grad_n_pre
            gh[:, : 2 * hidden] = gx[:, : 2 * hidden]
            torch.mul(grad_n_pre, r, out=gh[:, 2 * hidden :])
            if t > 0:
                carried = torch.addmm(grad_h * z, gh, weight_hh)
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


def packed_gru(x: Tensor, batch_sizes: Tensor, gru: torch.nn.GRU) -> Tensor:
    """Output rows of a one-layer, unidirectional `gru` over packed rows `x` [N, input] laid out
    time-major as `pack_padded_sequence` lays them out (`batch_sizes` [T], longest first), from
    h_0 = 0: what `gru(PackedSequence(x, batch_sizes, ...))[0].data` returns."""
    if gru.num_layers != 1 or gru.bidirectional or not gru.bias or gru.proj_size:
        raise ValueError("packed_gru supports one-layer, unidirectional GRUs with biases")
    return _PackedGRU.apply(
        x, batch_sizes.tolist(), gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0
    )
