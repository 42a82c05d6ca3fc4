"""hapnet.gru.packed_gru: the same outputs and gradients as torch.nn.GRU over a PackedSequence."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

from hapnet.gru import packed_gru


@pytest.mark.parametrize(
    "batch_sizes",
    [[4, 3, 3, 1], [5], [2, 2, 2], [1, 1, 1, 1, 1], [7, 2]],
    ids=["ragged", "one-step", "equal-lengths", "one-patient", "two-steps"],
)
def test_packed_gru_equals_torch(batch_sizes: list[int]) -> None:
    torch.manual_seed(len(batch_sizes))
    gru = torch.nn.GRU(6, 5).double()
    sizes = torch.tensor(batch_sizes)
    x = torch.randn(int(sizes.sum()), 6, dtype=torch.float64, requires_grad=True)
    reference = gru(PackedSequence(x, sizes))[0].data
    ours = packed_gru(x, sizes, gru)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    weights = torch.randn_like(reference)  # a loss that reads every row with its own weight
    inputs = [x, *gru.parameters()]
    expected = torch.autograd.grad((reference * weights).sum(), inputs)
    got = torch.autograd.grad((ours * weights).sum(), inputs)
    for name, a, b in zip(["x", "weight_ih", "weight_hh", "bias_ih", "bias_hh"], got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"gradient of {name}")


def test_packed_gru_rejects_what_it_does_not_implement() -> None:
    with pytest.raises(ValueError, match="one-layer"):
        packed_gru(torch.zeros(1, 3), torch.tensor([1]), torch.nn.GRU(3, 2, num_layers=2))
