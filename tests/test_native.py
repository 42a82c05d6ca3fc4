"""The fused C kernels (hapnet/kernels/*.c) against torch's operations, which are their reference:
propagation's weights, sums and gradients in float32 on every edge layout (via hapnet.fused), the
paper loss and the GRU's gates (hapnet.predictor, hapnet.gru), the same embeddings, explanations
and training losses; and the fallback without a compiler."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from test_models import SMALL, random_dag
from torch.nn.utils.rnn import PackedSequence

import hapnet
from hapnet import native, propagation
from hapnet.gru import packed_gru
from hapnet.models import HAPEmbedder, get_model
from hapnet.predictor import PAPER_CLAMP, _PaperLoss
from hapnet.propagation import AttentionScorer, Candidates, EdgeIndex, attention_weights, weighted_sum
from hapnet.synth import write_synth

needs_compiler = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")


@pytest.fixture
def torch_ops(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """A context switch: inside `with torch_ops():` attention runs on torch operations."""
    from contextlib import contextmanager

    @contextmanager
    def switch():  # noqa: ANN202
        monkeypatch.setenv("HAPNET_NATIVE", "0")
        yield
        monkeypatch.setenv("HAPNET_NATIVE", "1")

    return switch


def random_step(seed: int, num_targets: int, attention: int = 4, dim: int = 5) -> tuple:
    """A step's query projections and 3 groups of candidates: self (aligned), one per target
    (a gather), and a few per target (some targets none), keys as column slices of a product."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    query = torch.randn(num_targets, attention, generator=g, requires_grad=True)
    tables = [num_targets, 9, 40]
    projected = [torch.randn(n, 3 * attention, generator=g, requires_grad=True) for n in tables]
    keys = [p[:, attention : 2 * attention] for p in projected]  # strided rows, as _project makes
    values = [torch.randn(n, dim, generator=g) for n in tables]
    many = np.sort(rng.integers(0, num_targets, 3 * num_targets))
    edges = [
        EdgeIndex(None, None, num_targets, num_targets),
        EdgeIndex(np.arange(num_targets), rng.integers(0, 9, num_targets), num_targets, 9),
        EdgeIndex(many, rng.integers(0, 40, len(many)), num_targets, 40),
    ]
    groups = [Candidates(v, k, e) for v, k, e in zip(values, keys, edges, strict=True)]
    return query, projected, groups


@needs_compiler
@pytest.mark.parametrize("num_targets", [7, 400])  # 400: above the kernel's PARALLEL_MIN
def test_fused_attention_equals_torch_operations(num_targets: int, torch_ops) -> None:  # noqa: ANN001
    assert native.library() is not None, "a C compiler is here, so the kernel must build"
    torch.manual_seed(0)  # the scorer's parameters: the same inputs whatever ran before
    scorer = AttentionScorer(5, 4)
    results = []
    for fused in (True, False):
        query, projected, groups = random_step(0, num_targets)
        if fused:
            alpha = attention_weights(query, groups, scorer)
        else:
            with torch_ops():
                alpha = attention_weights(query, groups, scorer)
        weights = torch.randn(sum(len(a) for a in alpha), generator=torch.Generator().manual_seed(1))
        loss = (torch.cat(alpha) * weights).sum()
        grads = torch.autograd.grad(loss, [query, *projected, scorer.u])
        results.append((alpha, grads))
    (alpha, grads), (expected_alpha, expected_grads) = results
    for got, want in zip(alpha, expected_alpha, strict=True):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)
    segments = torch.cat([group.edges.segment() for group in groups])
    sums = torch.zeros(num_targets).index_add_(0, segments, torch.cat(alpha))
    assert torch.allclose(sums, torch.ones(num_targets))


@needs_compiler
@pytest.mark.parametrize("num_targets", [7, 400])
@pytest.mark.parametrize("wanted", ["all", "values only"])
def test_fused_weighted_sum_equals_torch_operations(num_targets: int, wanted: str, torch_ops) -> None:  # noqa: ANN001
    _, _, groups = random_step(1, num_targets, dim=70)  # 400 targets x 70: above PARALLEL_MIN
    g = torch.Generator().manual_seed(2)
    weights = [torch.rand(len(group.edges.segment()), generator=g) for group in groups]
    for tensor in [*weights, groups[0].values, groups[2].values]:  # group 1's rows: no gradient
        tensor.requires_grad_(wanted == "all" or tensor is not weights[0])
    grad_out = torch.randn(num_targets, 70, generator=g)
    wrt = [t for t in [*weights, groups[0].values, groups[2].values] if t.requires_grad]
    out = weighted_sum(groups, weights)
    grads = torch.autograd.grad(out, wrt, grad_out)
    with torch_ops():
        expected = weighted_sum(groups, weights)
        expected_grads = torch.autograd.grad(expected, wrt, grad_out)
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


@needs_compiler
def test_fused_attention_is_deterministic_and_runs_without_grad() -> None:
    torch.manual_seed(0)
    scorer = AttentionScorer(5, 4)
    grads = []
    for _ in range(2):
        query, projected, groups = random_step(3, 400)
        alpha = torch.cat(attention_weights(query, groups, scorer))
        grads.append(torch.autograd.grad(alpha.square().sum(), [query, *projected, scorer.u]))
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    query, _, groups = random_step(3, 400)
    with torch.no_grad():
        assert torch.equal(torch.cat(attention_weights(query, groups, scorer)), alpha.detach())


@needs_compiler
@pytest.mark.parametrize("name", ["hap", "gram"])
def test_models_train_the_same_with_and_without_the_kernel(name: str, torch_ops) -> None:  # noqa: ANN001
    onto = random_dag(2).compile()
    vocab = np.arange(8, 30)
    runs = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = get_model(name).embedder(onto, vocab, SMALL)
        if fused:
            out = model.embed(np.array([5, 0, 9]))
        else:
            with torch_ops():
                out = model.embed(np.array([5, 0, 9]))
        out.square().sum().backward()
        runs.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (out, grads), (expected, expected_grads) = runs
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(grads, expected_grads, strict=True))


def test_no_compiler_warns_once_and_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    monkeypatch.setenv("HAPNET_CACHE_DIR", str(tmp_path))  # nothing built yet
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(native, "_loaded", native._UNTRIED)
    with pytest.warns(UserWarning, match="did not build .*no C compiler"):
        assert native.library() is None
    assert native.library() is None  # decided once per process: no second warning
    torch.manual_seed(0)
    model = HAPEmbedder(random_dag(0).compile(), np.arange(5, 20), SMALL)
    model().sum().backward()  # torch operations
    assert model.up.u.grad is not None and not list(tmp_path.glob("native/*"))


def test_native_off_means_torch_operations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAPNET_NATIVE", "0")
    assert native.library() is None
    calls = []
    original = propagation.edge_scores
    monkeypatch.setattr(propagation, "edge_scores", lambda *a: calls.append(1) or original(*a))
    query, _, groups = random_step(0, 7)
    attention_weights(query, groups, AttentionScorer(5, 4))
    assert len(calls) == 3  # one per group


@needs_compiler
@pytest.mark.parametrize("name", ["hap", "gram"])
def test_float32_explanations_through_the_kernels_reproduce_the_embeddings(name: str, torch_ops) -> None:  # noqa: ANN001
    """explain: weighted sums with given weights, differentiated in the rows (one-hot probes)."""
    onto = random_dag(1)
    torch.manual_seed(0)
    model = get_model(name).embedder(onto.compile(), np.arange(1, len(onto)), SMALL)
    nodes = np.arange(len(onto))
    weights = model.explain(nodes)
    with torch_ops():
        expected = model.explain(nodes)
    assert torch.allclose(weights, expected, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(weights @ model.base.weight, model.all_node_embeddings(), atol=1e-5)


def test_edge_index_checks_its_indices_and_knows_rows_read_once() -> None:
    with pytest.raises(ValueError, match="outside"):
        EdgeIndex(np.array([0, 3]), np.array([0, 1]), 3, 2)  # target 3 of 3
    with pytest.raises(ValueError, match="outside"):
        EdgeIndex(np.array([0, 1]), np.array([0, 2]), 3, 2)  # row 2 of 2
    with pytest.raises(ValueError, match="outside"):
        EdgeIndex(None, np.array([0, -1]), 2, 2)
    assert EdgeIndex(None, None, 4, 4).each_source_once  # self candidates
    assert EdgeIndex(np.array([0, 0, 2]), np.array([2, 0, 1]), 3, 3).each_source_once  # a permutation
    assert not EdgeIndex(np.array([0, 0, 2]), np.array([2, 0, 0]), 3, 3).each_source_once  # row 0 twice
    assert not EdgeIndex(np.array([0, 2]), np.array([2, 0]), 3, 3).each_source_once  # row 1 unread
    assert not EdgeIndex(np.array([0, 1, 2]), np.array([2, 0, 1]), 3).each_source_once  # rows unknown


@needs_compiler
def test_kernels_refuse_rows_their_edges_do_not_fit() -> None:
    query, _, groups = random_step(0, 7)
    short = Candidates(groups[2].values[:5], groups[2].keys[:5], groups[2].edges)  # edges read rows up to 39
    with pytest.raises(IndexError, match="do not fit"):
        attention_weights(query, [groups[0], short], AttentionScorer(5, 4))


@needs_compiler
@pytest.mark.parametrize("model", ["hap", "gram"])
def test_training_with_and_without_the_kernels_gives_the_same_losses(model: str, tmp_path, torch_ops) -> None:  # noqa: ANN001
    assert native.library() is not None, "a C compiler is here, so the kernels must build"
    data = write_synth(tmp_path / "data", "icd9-ccs", patients=200, seed=3)
    settings = dict(model=model, data=str(data), epochs=2, dim=16, hidden=16, attention_dim=8, device="cpu")
    fused = hapnet.train(**settings)
    with torch_ops():
        reference = hapnet.train(**settings)
    for name in ("train_loss", "valid_loss"):
        got, want = [r[name] for r in fused.history], [r[name] for r in reference.history]
        assert np.allclose(got, want, rtol=1e-4), (name, got, want)
    assert abs(fused.metrics["test"]["accuracy"] - reference.metrics["test"]["accuracy"]) < 0.01


@needs_compiler
@pytest.mark.parametrize("shape", [(6, 9), (40, 1000)])  # 40 x 1000: above PARALLEL_MIN
def test_fused_paper_loss_equals_torch_operations(shape: tuple[int, int], torch_ops) -> None:  # noqa: ANN001
    assert native.library() is not None, "a C compiler is here, so the kernels must build"
    rows, codes = shape
    g = torch.Generator().manual_seed(rows)
    logits = (torch.randn(rows, codes, generator=g) * 4).requires_grad_()
    with torch.no_grad():
        logits[1, 2] = 60.0  # a saturated row: p > PAPER_CLAMP there, clamped in log(1 - p)
    target_rows = np.repeat(np.arange(rows), 3)
    target_rows = target_rows[target_rows != 3]  # row 3 has no target
    target_codes = np.concatenate([torch.randperm(codes, generator=g)[:3].numpy() for _ in range(rows)])
    target_codes = target_codes[np.repeat(np.arange(rows), 3) != 3]
    target_codes[np.flatnonzero(target_rows == 1)[0]] = 2  # the saturated code is a target
    pairs = torch.from_numpy(target_rows), torch.from_numpy(target_codes)
    weights = torch.rand(rows, generator=g)
    loss = _PaperLoss.apply(logits, *pairs)
    (grad,) = torch.autograd.grad((loss * weights).sum(), logits)
    with torch_ops():
        expected = _PaperLoss.apply(logits, *pairs)
        (expected_grad,) = torch.autograd.grad((expected * weights).sum(), logits)
    p = torch.softmax(logits.detach(), 1)
    assert p[1, 2] > PAPER_CLAMP and expected.isfinite().all()
    assert torch.allclose(loss, expected, rtol=1e-5)
    assert torch.allclose(grad, expected_grad, rtol=1e-4, atol=1e-7)


@needs_compiler
@pytest.mark.parametrize(("batch_sizes", "hidden"), [([4, 3, 3, 1], 5), ([100, 40, 3, 1], 400)])
def test_fused_gru_gates_equal_torch_operations_and_nn_gru(batch_sizes: list, hidden: int, torch_ops) -> None:  # noqa: ANN001
    """float32 (the kernels' type); 100 rows x 400: above PARALLEL_MIN."""
    assert native.library() is not None, "a C compiler is here, so the kernels must build"
    torch.manual_seed(hidden)
    gru = torch.nn.GRU(6, hidden)
    sizes = torch.tensor(batch_sizes)
    x = torch.randn(int(sizes.sum()), 6, requires_grad=True)
    weights = torch.randn(len(x), hidden)
    inputs = [x, *gru.parameters()]
    runs = []
    for run in ("fused", "torch operations", "nn.GRU"):
        if run == "fused":
            out = packed_gru(x, sizes, gru)
        elif run == "torch operations":
            with torch_ops():
                out = packed_gru(x, sizes, gru)
        else:
            out = gru(PackedSequence(x, sizes))[0].data
        runs.append((out, torch.autograd.grad((out * weights).sum(), inputs)))
    (out, grads), *references = runs
    for expected, expected_grads in references:
        assert torch.allclose(out, expected, rtol=1e-5, atol=1e-6)
        for got, want in zip(grads, expected_grads, strict=True):
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


@needs_compiler
def test_fused_paper_loss_refuses_pairs_outside_the_logits() -> None:
    logits = torch.zeros(3, 4)
    with pytest.raises(IndexError, match="outside"):
        _PaperLoss.apply(logits, torch.tensor([0, 3]), torch.tensor([1, 1]))  # row 3 of 3
    with pytest.raises(IndexError, match="outside"):
        _PaperLoss.apply(logits, torch.tensor([0, 1]), torch.tensor([1, -1]))
    with pytest.raises(ValueError, match="one code per target row"):
        _PaperLoss.apply(logits, torch.tensor([0, 1]), torch.tensor([1]))
