"""The message-passing primitive (hapnet.models.propagation): segment softmax, scorer, attention."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hapnet.models import propagation
from hapnet.models.propagation import (
    AttentionScorer,
    Candidates,
    EdgeIndex,
    attend,
    attend_candidates,
    scatter_sum,
    segment_softmax,
)
from hapnet.ontology.hierarchy import Step

DTYPE = torch.float64


def random_segments(seed: int, num_segments: int = 7, size: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(0, num_segments, (size,), generator=g)
    index[0] = num_segments - 2  # leave segment num_segments-1 possibly empty, but use the others
    scores = torch.randn(size, generator=g, dtype=DTYPE) * 3
    return scores, index


# ----------------------------------------------------------------------------- segment ops
@pytest.mark.parametrize("seed", range(3))
def test_segment_softmax_equals_a_softmax_per_segment(seed: int) -> None:
    scores, index = random_segments(seed)
    result = segment_softmax(scores, index, 7)
    expected = torch.empty_like(scores)
    for segment in range(7):
        mask = index == segment
        if mask.any():
            expected[mask] = torch.softmax(scores[mask], 0)
    assert torch.allclose(result, expected)
    sums = scatter_sum(result, index, 7)
    present = torch.bincount(index, minlength=7) > 0
    assert torch.allclose(sums[present], torch.ones(int(present.sum()), dtype=DTYPE))
    assert torch.all(sums[~present] == 0)


def test_segment_softmax_is_stable_with_huge_scores() -> None:
    scores = torch.tensor([1e4, 1e4 - math.log(3), -1e4, 5e300, 5e300, 0.0], dtype=DTYPE)
    index = torch.tensor([0, 0, 0, 1, 1, 2])
    result = segment_softmax(scores, index, 3)
    assert torch.isfinite(result).all()
    assert torch.allclose(result, torch.tensor([0.75, 0.25, 0.0, 0.5, 0.5, 1.0], dtype=DTYPE))
    single = segment_softmax(torch.tensor([3e38], dtype=torch.float32), torch.tensor([0]), 1)
    assert single.item() == 1.0


def test_segment_softmax_gradient() -> None:
    scores, index = random_segments(5, size=12)
    scores.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: segment_softmax(s, index, 7), (scores,))


def test_scatter_sum_by_hand() -> None:
    src = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    out = scatter_sum(src, torch.tensor([2, 0, 2]), 4)
    assert torch.equal(out, torch.tensor([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0], [0.0, 0.0]]))


def test_scorer_is_u_tanh_of_w_times_concatenation() -> None:
    torch.manual_seed(0)
    scorer = AttentionScorer(5, 3).double()
    q, k = torch.randn(4, 5, dtype=DTYPE), torch.randn(4, 5, dtype=DTYPE)
    w = torch.cat([scorer.query.weight, scorer.key.weight], dim=1)  # W = [W_q, W_k], a x 2d
    expected = torch.tanh(torch.cat([q, k], dim=1) @ w.T + scorer.query.bias) @ scorer.u
    assert torch.allclose(scorer(q, k), expected)
    query_proj, key_proj = scorer.project(q)
    assert torch.allclose(query_proj, scorer.query(q)) and torch.allclose(key_proj, scorer.key(q))


# ----------------------------------------------------------------------------- attention
def ln2_scorer() -> AttentionScorer:
    """f(q, k) = tanh(k_0): a key with k_0 = atanh(ln 2) scores ln 2, one with k_0 = 0 scores 0."""
    scorer = AttentionScorer(2, 1).double()
    with torch.no_grad():
        scorer.query.weight.zero_()
        scorer.query.bias.zero_()
        scorer.key.weight.copy_(torch.tensor([[1.0, 0.0]]))
        scorer.u.fill_(1.0)
    return scorer


def test_attend_by_hand() -> None:
    """Target 0 has candidates {0, 1}, target 1 has {1, 2}: exp(scores) 2 : 1 -> weights 2/3, 1/3."""
    s = math.atanh(math.log(2))
    h = torch.tensor([[s, 3.0], [0.0, 6.0], [s, 9.0]], dtype=DTYPE)
    step = Step(
        level=0,
        targets=np.array([0, 1]),
        edge_target=np.array([0, 1, 0, 1]),
        edge_source=np.array([0, 1, 1, 2]),
    )
    out, alpha = attend(step, h[[0, 1]], h, ln2_scorer())
    assert torch.allclose(alpha, torch.tensor([2 / 3, 1 / 3, 1 / 3, 2 / 3], dtype=DTYPE))
    expected = torch.tensor([[2 / 3 * s, 2 + 2.0], [2 / 3 * s, 2 + 6.0]], dtype=DTYPE)
    assert torch.allclose(out, expected)


def naive_attend(step: Step, queries, candidates_h, scorer):  # noqa: ANN001, ANN201
    """Literal loop: each target, each of its candidates."""
    outs, alphas = [], torch.empty(len(step.edge_source), dtype=candidates_h.dtype)
    for t in range(len(step.targets)):
        edges = np.flatnonzero(step.edge_target == t)
        scores = torch.stack([scorer(queries[t], candidates_h[step.edge_source[e]]) for e in edges])
        weights = torch.softmax(scores, 0)
        alphas[edges] = weights
        outs.append(sum(w * candidates_h[step.edge_source[e]] for w, e in zip(weights, edges, strict=True)))
    return torch.stack(outs), alphas


@pytest.mark.parametrize("seed", range(3))
def test_attend_equals_a_naive_loop_values_and_gradients(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_targets, num_rows = 5, 9
    edge_target = np.concatenate([np.arange(num_targets), rng.integers(0, num_targets, 12)])
    edge_source = np.concatenate([np.arange(num_targets), rng.integers(0, num_rows, 12)])
    step = Step(0, np.arange(num_targets), edge_target, edge_source)  # unsorted edges on purpose
    torch.manual_seed(seed)
    scorer = AttentionScorer(4, 3).double()
    h = torch.randn(num_rows, 4, dtype=DTYPE, requires_grad=True)
    out, alpha = attend(step, h[:num_targets], h, scorer)
    ref_out, ref_alpha = naive_attend(step, h[:num_targets], h, scorer)
    assert torch.allclose(out, ref_out) and torch.allclose(alpha, ref_alpha)
    weights = torch.randn_like(out)
    params = [h, *scorer.parameters()]
    grads = torch.autograd.grad((out * weights).sum(), params)
    ref_grads = torch.autograd.grad((ref_out * weights).sum(), params)
    for grad, ref in zip(grads, ref_grads, strict=True):
        assert torch.allclose(grad, ref)


def test_groups_split_anyhow_give_the_same_attention() -> None:
    """One group over one tensor, or self + two tensors of candidates: the same result."""
    torch.manual_seed(1)
    scorer = AttentionScorer(3, 2).double()
    own = torch.randn(4, 3, dtype=DTYPE)
    first, second = torch.randn(5, 3, dtype=DTYPE), torch.randn(2, 3, dtype=DTYPE)
    target_1, source_1 = np.array([0, 0, 2, 3]), np.array([4, 1, 1, 0])
    target_2, source_2 = np.array([3, 1]), np.array([1, 1])
    query_proj = scorer.query(own)
    groups = [
        Candidates(own, scorer.key(own), EdgeIndex(None, None, 4, 4)),
        Candidates(first, scorer.key(first), EdgeIndex(target_1, source_1, 4, 5)),
        Candidates(second, scorer.key(second), EdgeIndex(target_2, source_2, 4, 2)),
    ]
    out, _ = attend_candidates(query_proj, groups, scorer)
    table = torch.cat([own, first, second])
    step = Step(
        0,
        np.arange(4),
        np.concatenate([np.arange(4), target_1, target_2]),
        np.concatenate([np.arange(4), source_1 + 4, source_2 + 9]),
    )
    ref, _ = naive_attend(step, own, table, scorer)
    assert torch.allclose(out, ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_attend_on_cuda_equals_cpu() -> None:
    rng = np.random.default_rng(0)
    step = Step(
        0,
        np.arange(50),
        np.concatenate([np.arange(50), rng.integers(0, 50, 200)]),
        np.concatenate([np.arange(50), rng.integers(0, 300, 200)]),
    )
    torch.manual_seed(0)
    scorer = AttentionScorer(16, 8).double()
    h = torch.randn(300, 16, dtype=DTYPE)
    out, alpha = attend(step, h[:50], h, scorer)
    out_cuda, alpha_cuda = attend(step, h[:50].cuda(), h.cuda(), scorer.cuda())
    assert out_cuda.is_cuda
    assert torch.allclose(out_cuda.cpu(), out) and torch.allclose(alpha_cuda.cpu(), alpha)


@pytest.mark.parametrize("layout", ["both", "aligned", "identity-rows", "self"])
def test_edge_scores_on_every_edge_layout(layout: str) -> None:
    g = torch.Generator().manual_seed(0)
    query_proj = torch.randn(6, 4, generator=g, dtype=DTYPE, requires_grad=True)
    key_proj = torch.randn(6, 4, generator=g, dtype=DTYPE, requires_grad=True)
    u = torch.randn(4, generator=g, dtype=DTYPE, requires_grad=True)
    index = {
        "both": (torch.tensor([0, 0, 1, 3, 5, 5, 5]), torch.tensor([2, 1, 1, 0, 5, 4, 4])),
        "aligned": (None, torch.tensor([5, 4, 3, 3, 1, 0])),
        "identity-rows": (torch.tensor([0, 1, 1, 2, 4, 4]), None),
        "self": (None, None),
    }[layout]
    target, source = index
    scores = propagation.edge_scores(query_proj, key_proj, u, target, source)
    q = query_proj if target is None else query_proj[target]
    k = key_proj if source is None else key_proj[source]
    assert torch.allclose(scores, torch.tanh(q + k) @ u)
    assert torch.autograd.gradcheck(
        lambda a, b, c: propagation.edge_scores(a, b, c, target, source), (query_proj, key_proj, u)
    )
