"""GloVe pretraining (hapnet.models.glove): co-occurrence by hand and against a loop, training behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hapnet.errors import HapnetError
from hapnet.models.glove import Cooccurrence, cooccurrence, glove_weight, train_glove
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
        random_cooccurrence(0), 8, epochs=30, seed=3, batch_size=128, return_losses=True
    )
    assert vectors.shape == (30, 8) and vectors.dtype == torch.float32
    assert losses[-1] < 0.2 * losses[0]
    assert all(b <= a * 1.05 for a, b in zip(losses, losses[1:], strict=False))  # (almost) monotone


def test_glove_is_deterministic_for_a_seed() -> None:
    cooc = random_cooccurrence(0)
    first = train_glove(cooc, 8, epochs=2, seed=3, batch_size=128)
    assert torch.equal(first, train_glove(cooc, 8, epochs=2, seed=3, batch_size=128))
    assert not torch.allclose(first, train_glove(cooc, 8, epochs=2, seed=4, batch_size=128))


def test_glove_nodes_that_never_cooccur_keep_their_small_initialisation() -> None:
    first = train_glove(random_cooccurrence(0), 8, epochs=3, seed=1)
    second = train_glove(random_cooccurrence(1), 8, epochs=3, seed=1)
    assert torch.equal(first[29], second[29])  # untouched: the same draw from the same seed
    assert first[29].abs().max() <= 1 / 8
    assert not torch.equal(first[0], second[0])


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
