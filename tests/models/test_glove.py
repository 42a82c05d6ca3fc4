"""GloVe pretraining (hapnet.models.glove): co-occurrence by hand and against a loop, training behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hapnet.errors import HapnetError
from hapnet.models.glove import Cooccurrence, cooccurrence, glove_weight, like_random_init, train_glove
from hapnet.ontology.graph import Ontology
from hapnet.ontology.hierarchy import ancestor_sets


def tiny() -> Ontology:
    return Ontology.from_edges("tiny", [("", "A"), ("", "B"), ("A", "a1"), ("A", "a2"), ("B", "b1")])


def visits(onto: Ontology, lists: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum([len(v) for v in lists])])
    codes = np.array([onto.index(c) for v in lists for c in v], dtype=np.int64)
    return offsets, codes


def as_pairs(onto: Ontology, matrix: Cooccurrence) -> dict[tuple[str, str], float]:
    dense = matrix.toarray()
    assert np.array_equal(dense, dense.T) and np.all(np.diag(dense) == 0)
    return {(onto.ids[i], onto.ids[j]): dense[i, j] for i, j in zip(*np.nonzero(dense), strict=True) if i < j}


VISITS = [["a1", "a2"], ["a1", "b1"], ["a2"], ["a1", "a1"]]


def test_cooccurrence_of_codes_by_hand() -> None:
    onto = tiny()
    offsets, codes = visits(onto, VISITS)
    counts = as_pairs(onto, cooccurrence(offsets, codes, len(onto)))
    assert counts == {("a1", "a2"): 1, ("a1", "b1"): 1}


def test_cooccurrence_with_ancestors_by_hand() -> None:
    """Visits become {a1 a2 A root}, {a1 b1 A B root}, {a2 A root}, {a1 A root}; each node once."""
    onto = tiny()
    offsets, codes = visits(onto, VISITS)
    counts = as_pairs(onto, cooccurrence(offsets, codes, len(onto), ancestor_sets(onto)))
    root = "<ROOT>"
    expected = {
        ("A", "a1"): 3, ("A", "a2"): 2, ("A", "b1"): 1, ("A", "B"): 1, (root, "A"): 4,
        (root, "a1"): 3, (root, "a2"): 2, (root, "b1"): 1, (root, "B"): 1,
        ("a1", "a2"): 1, ("a1", "b1"): 1, ("B", "a1"): 1, ("B", "b1"): 1,
    }  # fmt: skip
    assert counts == {tuple(sorted(k, key=onto.index)): v for k, v in expected.items()}


@pytest.mark.parametrize("with_ancestors", [False, True])
@pytest.mark.parametrize("chunk_pairs", [1, 5, 10**9])
def test_cooccurrence_equals_a_loop(with_ancestors: bool, chunk_pairs: int) -> None:
    rng = np.random.default_rng(0)
    n = 20
    ancestors = [frozenset(rng.choice(n, size=rng.integers(0, 4), replace=False).tolist()) for _ in range(n)]
    sizes = rng.integers(0, 6, size=40)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    codes = rng.integers(0, n, size=offsets[-1])
    result = cooccurrence(offsets, codes, n, ancestors if with_ancestors else None, chunk_pairs=chunk_pairs)
    expected = np.zeros((n, n))
    for v in range(len(sizes)):
        nodes = set(codes[offsets[v] : offsets[v + 1]].tolist())
        if with_ancestors:
            nodes |= set().union(*(ancestors[c] for c in nodes)) if nodes else set()
        for a in nodes:
            for b in nodes - {a}:
                expected[a, b] += 1
    assert isinstance(result, Cooccurrence)
    keys = result.rows * n + result.cols  # each (row, column) once, sorted: as training reads it
    assert np.all(np.diff(keys) > 0)
    assert np.array_equal(result.toarray(), expected)


def test_cooccurrence_gram_weighting_by_hand() -> None:
    """GRAM's counts: visit [a1, a2] extended to [a1, a2, A, root, A, root]; 2 * m_i * m_j."""
    onto = tiny()
    offsets, codes = visits(onto, [["a1", "a2"]])
    counts = as_pairs(onto, cooccurrence(offsets, codes, len(onto), ancestor_sets(onto), weighting="gram"))
    assert counts == {
        ("<ROOT>", "A"): 8,
        ("<ROOT>", "a1"): 4,
        ("<ROOT>", "a2"): 4,
        ("A", "a1"): 4,
        ("A", "a2"): 4,
        ("a1", "a2"): 2,
    }


def test_cooccurrence_gram_weighting_equals_grams_loop() -> None:
    """create_glove_comap.py: for each ordered pair of distinct nodes, add count(a) * count(b)
    to both (a, b) and (b, a) of the code list extended by every code's ancestors."""
    rng = np.random.default_rng(1)
    n = 20
    ancestors = [frozenset(rng.choice(n, size=rng.integers(0, 4), replace=False).tolist()) for _ in range(n)]
    sizes = rng.integers(0, 6, size=40)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    codes = rng.integers(0, n, size=offsets[-1])
    result = cooccurrence(offsets, codes, n, ancestors, weighting="gram", chunk_pairs=5)
    expected = np.zeros((n, n))
    for v in range(len(sizes)):
        extended = codes[offsets[v] : offsets[v + 1]].tolist()
        extended += [a for c in list(extended) for a in ancestors[c]]
        for a in set(extended):
            for b in set(extended) - {a}:
                product = extended.count(a) * extended.count(b)
                expected[a, b] += product
                expected[b, a] += product
    assert np.array_equal(result.toarray(), expected)


def test_cooccurrence_rejects_codes_out_of_range() -> None:
    with pytest.raises(HapnetError, match="out of range"):
        cooccurrence(np.array([0, 2]), np.array([0, 7]), 5)
    with pytest.raises(HapnetError, match="weighting"):
        cooccurrence(np.array([0, 2]), np.array([0, 1]), 5, weighting="product")


def test_glove_weighting() -> None:
    x = torch.tensor([50.0, 100.0, 400.0])
    assert torch.allclose(glove_weight(x), torch.tensor([0.5**0.75, 1.0, 1.0]))


def random_cooccurrence(seed: int, n: int = 30, isolated: int = 29) -> Cooccurrence:
    rng = np.random.default_rng(seed)
    dense = rng.integers(0, 200, size=(n, n)) * (rng.random((n, n)) < 0.3)
    dense = np.triu(dense, 1)
    dense = dense + dense.T
    dense[isolated, :] = dense[:, isolated] = 0
    return Cooccurrence.from_dense(dense.astype(float))


def test_glove_loss_decreases() -> None:
    vectors, losses = train_glove(
        random_cooccurrence(0), 8, epochs=30, seed=3, block_size=8, return_losses=True
    )
    assert vectors.shape == (30, 8) and vectors.dtype == torch.float32
    assert losses[-1] < 0.2 * losses[0]
    assert all(b <= a * 1.05 for a, b in zip(losses, losses[1:], strict=False))  # (almost) monotone


def test_glove_is_deterministic_for_a_seed() -> None:
    cooc = random_cooccurrence(0)
    first = train_glove(cooc, 8, epochs=2, seed=3, block_size=8)
    assert torch.equal(first, train_glove(cooc, 8, epochs=2, seed=3, block_size=8))
    assert not torch.allclose(first, train_glove(cooc, 8, epochs=2, seed=4, block_size=8))


def test_glove_nodes_that_never_cooccur_keep_their_small_initialisation() -> None:
    first = train_glove(random_cooccurrence(0), 8, epochs=3, seed=1)
    second = train_glove(random_cooccurrence(1), 8, epochs=3, seed=1)
    assert torch.equal(first[29], second[29])  # untouched: the same draw from the same seed
    assert first[29].abs().max() <= 1 / 8
    assert not torch.equal(first[0], second[0])


def full_batch_reference(cooc: Cooccurrence, dim: int, epochs: int, lr: float, seed: int):
    """GloVe's loss by autograd and torch.optim.Adagrad on every nonzero at once (sums start at
    1, no epsilon), from the same initial draws as train_glove."""
    generator = torch.Generator().manual_seed(seed)
    params = [(torch.rand(*shape, generator=generator) - 0.5) / dim for shape in [(cooc.size, dim)] * 2]
    params += [(torch.rand(cooc.size, generator=generator) - 0.5) / dim for _ in range(2)]
    for p in params:
        p.requires_grad_()
    optimizer = torch.optim.Adagrad(params, lr=lr, initial_accumulator_value=1.0, eps=0.0)
    i, j = torch.from_numpy(cooc.rows), torch.from_numpy(cooc.cols)
    x = torch.from_numpy(cooc.counts).float()
    losses = []
    for _ in range(epochs):
        w, w_ctx, b, b_ctx = params
        diff = (w[i] * w_ctx[j]).sum(1) + b[i] + b_ctx[j] - torch.log(x)
        loss = (glove_weight(x) * diff**2).sum() / 2
        losses.append(loss.item() / len(x))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (params[0] + params[1]).detach(), losses


def test_glove_in_one_tile_is_full_batch_adagrad() -> None:
    """A block as large as the matrix: one step per epoch on every nonzero, the same as autograd."""
    cooc = random_cooccurrence(2)
    vectors, losses = train_glove(cooc, 6, epochs=5, lr=0.05, seed=7, block_size=64, return_losses=True)
    expected, expected_losses = full_batch_reference(cooc, 6, 5, 0.05, 7)
    assert torch.allclose(vectors, expected, atol=1e-6)
    assert np.allclose(losses, expected_losses, rtol=1e-5)
    assert losses[-1] < losses[0]


def per_nonzero_reference(cooc: Cooccurrence, dim: int, epochs: int, lr: float, seed: int) -> list[float]:
    """GloVe's reference algorithm (glove.c): AdaGrad one nonzero at a time in a random order."""
    rng = np.random.default_rng(seed)
    w, w_ctx = (rng.random((2, cooc.size, dim)) - 0.5) / dim
    b, b_ctx = (rng.random((2, cooc.size)) - 0.5) / dim
    sq_w, sq_ctx, sq_b, sq_b_ctx = np.ones_like(w), np.ones_like(w_ctx), np.ones_like(b), np.ones_like(b_ctx)
    weights = np.minimum(1.0, cooc.counts / 100.0) ** 0.75
    losses = []
    for _ in range(epochs):
        total = 0.0
        for e in rng.permutation(len(cooc.counts)):
            i, j = cooc.rows[e], cooc.cols[e]
            diff = w[i] @ w_ctx[j] + b[i] + b_ctx[j] - np.log(cooc.counts[e])
            scaled = weights[e] * diff
            total += scaled * diff / 2
            grad_w, grad_ctx = scaled * w_ctx[j], scaled * w[i]
            sq_w[i] += grad_w**2
            sq_ctx[j] += grad_ctx**2
            w[i] -= lr * grad_w / np.sqrt(sq_w[i])
            w_ctx[j] -= lr * grad_ctx / np.sqrt(sq_ctx[j])
            sq_b[i] += scaled**2
            sq_b_ctx[j] += scaled**2
            b[i] -= lr * scaled / np.sqrt(sq_b[i])
            b_ctx[j] -= lr * scaled / np.sqrt(sq_b_ctx[j])
        losses.append(total / len(cooc.counts))
    return losses


def test_glove_in_tiles_reaches_the_reference_algorithms_loss() -> None:
    """Tiles of 8 x 8 nodes (16 steps an epoch) against glove.c's one nonzero at a time (~260
    steps an epoch): the same objective, lowered as far within the same epochs."""
    cooc = random_cooccurrence(0)
    _, losses = train_glove(cooc, 8, epochs=30, seed=3, block_size=8, return_losses=True)
    reference = per_nonzero_reference(cooc, 8, 30, 0.05, seed=3)
    assert losses[0] == pytest.approx(reference[0], rel=0.2)  # the same start: small random vectors
    assert losses[-1] < 0.2 * losses[0] and reference[-1] < 0.2 * reference[0]
    assert losses[-1] <= 1.1 * reference[-1]


def test_like_random_init_by_hand() -> None:
    """Nodes 0, 1, 2 co-occur (row sums 3, 1, 2), node 3 never: weighted mean (3 a + b + 2 c) / 6
    = (1, 1) for a = (1, 1), b = (3, 1), c = (0, 1); centred rows (0, 0), (2, 0), (-1, 0) are
    scaled to norm std * sqrt(d) = 0.5 * sqrt(2) (the zero row stays zero); node 3 is left as it was."""
    cooc = Cooccurrence.from_dense(np.array([[0, 1, 2, 0], [1, 0, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]], float))
    vectors = torch.tensor([[1.0, 1.0], [3.0, 1.0], [0.0, 1.0], [7.0, -7.0]])
    result = like_random_init(vectors, cooc, std=0.5)
    norm = 0.5 * 2**0.5
    expected = torch.tensor([[0.0, 0.0], [norm, 0.0], [-norm, 0.0], [7.0, -7.0]])
    assert torch.allclose(result, expected, atol=1e-6)
    assert torch.equal(vectors[0], torch.tensor([1.0, 1.0]))  # the input is not changed


def test_cached_glove_reuses_the_same_problem_only(tmp_path, monkeypatch):
    from hapnet.training import setup

    monkeypatch.setenv("HAPNET_CACHE_DIR", str(tmp_path))
    calls = []
    real = setup.train_glove
    monkeypatch.setattr(setup, "train_glove", lambda *a, **k: calls.append(k["seed"]) or real(*a, **k))
    first = setup.cached_glove(random_cooccurrence(0), 8, 2, seed=1)
    again = setup.cached_glove(random_cooccurrence(0), 8, 2, seed=1)
    assert torch.equal(first, again) and calls == [1]  # the second came from the cache
    assert torch.equal(first, real(random_cooccurrence(0), 8, epochs=2, seed=1))
    setup.cached_glove(random_cooccurrence(0), 8, 2, seed=2)  # another seed
    setup.cached_glove(random_cooccurrence(1), 8, 2, seed=1)  # other counts
    assert calls == [1, 2, 1] and len(list((tmp_path / "glove").glob("*.npy"))) == 3
