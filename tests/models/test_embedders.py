"""Code embedders (hapnet.models): HAP and GRAM against literal loops over docs/algorithms.md, the
baselines by hand, explanations, the registry."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hapnet.data.batches import BatchBuilder
from hapnet.errors import HapnetError
from hapnet.models.embedder import EmbedderConfig
from hapnet.models.gram import GRAMEmbedder
from hapnet.models.hap import HAPEmbedder
from hapnet.models.losses import next_visit_loss
from hapnet.models.plain import PlainEmbedder, RollupEmbedder
from hapnet.models.predictor import DIAGNOSIS, NextVisitModel
from hapnet.models.registry import MODELS, ModelSpec, build_embedder, get_model, register_model
from hapnet.ontology.graph import Ontology
from hapnet.ontology.hierarchy import Hierarchy, ancestor_sets

DTYPE = torch.float64
SMALL = EmbedderConfig(dim=6, attention_dim=4, init_std=1.0)


# ----------------------------------------------------------------------------- ontologies
def five_nodes() -> Ontology:
    """root | A, B | a (under A), b (under B)."""
    return Ontology.from_edges("five", [("", "A"), ("", "B"), ("A", "a"), ("B", "b")])


def random_dag(seed: int, size: int = 30) -> Ontology:
    """Node i takes 0-3 parents among the nodes before it: multi-parent nodes, and nodes whose
    longest path from the root is longer than their shortest."""
    rng = np.random.default_rng(seed)
    edges = [("", "n0")]
    for i in range(1, size):
        parents = rng.choice(i, size=min(i, int(rng.choice([0, 1, 1, 1, 2, 3]))), replace=False)
        edges += [(f"n{p}", f"n{i}") for p in parents] or [("", f"n{i}")]
    return Ontology.from_edges(f"random{seed}", edges)


def shortest_levels(onto: Ontology) -> np.ndarray:
    levels = np.zeros(len(onto), dtype=np.int64)
    for node in range(1, len(onto)):  # nodes are sorted by (longest-path) level
        levels[node] = 1 + min(levels[p] for p in onto.parents(node))
    return levels


def double(module: torch.nn.Module) -> torch.nn.Module:
    return module.to(DTYPE)


def uniform_attention(embedder: torch.nn.Module) -> None:
    """u = 0: every score is 0, so every softmax is uniform."""
    with torch.no_grad():
        for name, param in embedder.named_parameters():
            if name.endswith(".u"):
                param.zero_()


def set_base(embedder: torch.nn.Module, onto: Ontology, rows: dict[str, list[float]]) -> None:
    with torch.no_grad():
        for node, value in rows.items():
            embedder.base.weight[onto.index(node)] = torch.tensor(value, dtype=DTYPE)


# ----------------------------------------------------------------------------- naive references
def naive_hap(onto: Ontology, levels: int | None, model: HAPEmbedder, vocab: np.ndarray) -> torch.Tensor:
    """docs/algorithms.md, literally: loops over nodes; bottom-up for parent levels L-1 .. L-K+1, then
    top-down for child levels L-K+2 .. L; edges from parents below L-K+1 are not used."""
    e = model.base.weight
    depth = onto.depth
    low = 0 if levels is None else max(0, depth - levels + 1)  # lowest level taking part
    level = onto.levels

    def children(p: int) -> list[int]:
        return [int(c) for c in onto.children(p)] if level[p] >= low else []

    def parents(c: int) -> list[int]:
        return [int(p) for p in onto.parents(c) if level[p] >= low]

    h = {v: e[v] for v in range(len(onto))}
    for lv in range(depth - 1, low - 1, -1):  # bottom-up
        new = {}
        for p in range(len(onto)):
            if level[p] == lv and children(p):
                cands = [p, *children(p)]
                alpha = torch.softmax(torch.stack([model.up(e[p], h[j]) for j in cands]), 0)
                new[p] = sum(a * h[j] for a, j in zip(alpha, cands, strict=True))
        h.update(new)
    after_bottom_up = dict(h)
    for lv in range(low + 1, depth + 1):  # top-down
        new = {}
        for c in range(len(onto)):
            if level[c] == lv and parents(c):
                cands = [c, *parents(c)]
                query = after_bottom_up[c]
                beta = torch.softmax(torch.stack([model.down(query, h[j]) for j in cands]), 0)
                new[c] = sum(b * h[j] for b, j in zip(beta, cands, strict=True))
        h.update(new)
    return torch.stack([h[int(v)] for v in vocab])


def naive_gram(onto: Ontology, model: GRAMEmbedder, vocab: np.ndarray) -> torch.Tensor:
    e = model.base.weight
    ancestors = ancestor_sets(onto)  # of the (truncated) ontology
    rows = []
    for c in vocab:
        cands = [int(c), *sorted(ancestors[c])]
        alpha = torch.softmax(torch.stack([model.attention(e[c], e[j]) for j in cands]), 0)
        rows.append(sum(a * e[j] for a, j in zip(alpha, cands, strict=True)))
    return torch.stack(rows)


def assert_same_values_and_gradients(model: torch.nn.Module, out: torch.Tensor, ref: torch.Tensor) -> None:
    assert torch.allclose(out, ref)
    weights = torch.randn_like(out)
    params = list(model.parameters())
    grads = torch.autograd.grad((out * weights).sum(), params, allow_unused=True, materialize_grads=True)
    ref_grads = torch.autograd.grad((ref * weights).sum(), params, allow_unused=True, materialize_grads=True)
    for (name, _), grad, ref_grad in zip(model.named_parameters(), grads, ref_grads, strict=True):
        assert torch.allclose(grad, ref_grad), name


# ----------------------------------------------------------------------------- HAP
def test_hap_by_hand_with_uniform_attention() -> None:
    onto = five_nodes()
    model = double(
        HAPEmbedder(
            Hierarchy.from_ontology(onto), np.array([onto.index("a"), onto.index("b")]), EmbedderConfig(2, 3)
        )
    )
    uniform_attention(model)
    set_base(model, onto, {"<ROOT>": [6, 0], "A": [2, 4], "B": [0, 2], "a": [4, 0], "b": [2, 2]})
    # bottom-up: h_A = (e_A + e_a)/2 = (3, 2); h_B = (e_B + e_b)/2 = (1, 2);
    #            h_root = (e_root + h_A + h_B)/3 = (10/3, 4/3)
    # top-down:  g_A = (h_A + h_root)/2 = (19/6, 5/3); g_B = (h_B + h_root)/2 = (13/6, 5/3)
    #            g_a = (e_a + g_A)/2 = (43/12, 5/6); g_b = (e_b + g_B)/2 = (25/12, 11/6)
    expected = torch.tensor([[43 / 12, 5 / 6], [25 / 12, 11 / 6]], dtype=DTYPE)
    assert torch.allclose(model(), expected)
    every = model.all_node_embeddings()
    for node, value in {"<ROOT>": [10 / 3, 4 / 3], "A": [19 / 6, 5 / 3], "B": [13 / 6, 5 / 3]}.items():
        assert torch.allclose(every[onto.index(node)], torch.tensor(value, dtype=DTYPE))


def test_random_dags_cover_multi_parent_and_level_gaps() -> None:
    ontos = [random_dag(seed) for seed in range(4)]
    assert all(o.summary()["max_parents"] > 1 for o in ontos)
    assert all((shortest_levels(o) < o.levels).any() for o in ontos)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels", [1, 2, 3, None])
def test_hap_equals_naive_loop_values_and_gradients(seed: int, levels: int | None) -> None:
    onto = random_dag(seed)
    vocab = np.random.default_rng(seed).choice(np.arange(1, len(onto)), size=12, replace=False)
    torch.manual_seed(seed)
    model = double(HAPEmbedder(Hierarchy.from_ontology(onto.truncate(levels)), vocab, SMALL))
    assert_same_values_and_gradients(model, model(), naive_hap(onto, levels, model, vocab))
    with torch.no_grad():
        every = model.all_node_embeddings()
        assert torch.allclose(every, naive_hap(onto, levels, model, np.arange(len(onto))))


def test_hap_with_one_level_is_the_plain_embedding() -> None:
    onto = random_dag(1)
    vocab = np.arange(3, 20)
    model = double(HAPEmbedder(Hierarchy.from_ontology(onto.truncate(1)), vocab, SMALL))
    assert not model.plan.steps
    assert torch.equal(model(), model.base.weight[vocab])


def test_hap_vocab_order_and_repeats_are_kept() -> None:
    onto = random_dag(2)
    torch.manual_seed(0)
    model = double(HAPEmbedder(Hierarchy.from_ontology(onto), np.array([9, 3, 9, 27, 0]), SMALL))
    every = model.all_node_embeddings()
    assert torch.allclose(model(), every[[9, 3, 9, 27, 0]])


def test_hap_top_down_only_runs_over_the_outputs_and_their_ancestors() -> None:
    onto = random_dag(0)
    leaf = int(np.flatnonzero(onto.is_leaf)[-1])
    model = HAPEmbedder(Hierarchy.from_ontology(onto), np.array([leaf]), SMALL)
    top_down = np.concatenate([s.targets for s in model.plan.steps if s.scorer == "down"])
    assert set(top_down.tolist()) <= {leaf, *onto.ancestors(leaf)} and leaf in top_down
    bottom_up = np.concatenate([s.targets for s in model.plan.steps if s.scorer == "up"])
    assert len(bottom_up) == int((onto.num_children > 0).sum())  # the root sees every node


def test_hap_gradient_reaches_every_node() -> None:
    """Every node sees every other node: all base rows get a gradient from one code."""
    onto = random_dag(0)
    leaf = int(np.flatnonzero(onto.is_leaf)[-1])
    model = double(HAPEmbedder(Hierarchy.from_ontology(onto), np.array([leaf]), SMALL))
    model().sum().backward()
    assert (model.base.weight.grad.abs().sum(1) > 0).all()


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("levels", [2, None])
def test_embed_some_codes_equals_those_rows_of_all(name: str, seed: int, levels: int | None) -> None:
    """`embed(classes)` (what training runs, for a batch's codes) gives the same values and
    gradients as those rows of `forward()`: vocabularies with inner nodes, multi-parent DAGs,
    truncation, unsorted and empty subsets."""
    onto = random_dag(seed)
    rng = np.random.default_rng(seed)
    vocab = rng.choice(np.arange(1, len(onto)), size=20, replace=False)
    torch.manual_seed(seed)
    model = double(get_model(name).embedder(Hierarchy.from_ontology(onto.truncate(levels)), vocab, SMALL))
    for size in (7, 1, 20):
        classes = rng.choice(len(vocab), size=size, replace=False)
        assert_same_values_and_gradients(model, model.embed(classes), model()[classes])
    assert model.embed(np.zeros(0, dtype=np.int64)).shape == (0, SMALL.dim)


@pytest.mark.parametrize("name", ["hap", "gram"])
def test_training_step_embeds_the_batch_codes_with_the_same_loss_and_gradients(name: str) -> None:
    onto = random_dag(1)
    vocab = np.arange(1, len(onto))
    rng = np.random.default_rng(0)
    visits = [rng.choice(len(vocab), size=3, replace=False) for _ in range(9)]  # 3 patients
    data = SimpleNamespace(
        patient_offsets=np.array([0, 2, 5, 9]),
        visit_offsets=np.concatenate([[0], np.cumsum([len(v) for v in visits])]),
        codes=np.concatenate(visits),
    )
    batch = BatchBuilder(data, np.arange(len(vocab))).build(np.array([0, 1, 2]))
    assert len(batch.input_classes) < len(vocab)
    torch.manual_seed(0)
    embedder = get_model(name).embedder(Hierarchy.from_ontology(onto), vocab, SMALL)
    model = double(NextVisitModel(embedder, len(vocab), SMALL.dim, 5, dropout=0.0))
    losses, grads = [], []
    for every_code in (False, True):
        g = model.code_embeddings() if every_code else None
        loss = next_visit_loss(model(batch, g)[DIAGNOSIS], batch, "paper")
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, list(model.parameters())))
    assert torch.allclose(losses[0], losses[1])
    for (param, _), grad, ref in zip(model.named_parameters(), *grads, strict=True):
        assert torch.allclose(grad, ref), param


def test_hap_embed_runs_the_leaf_steps_for_the_wanted_codes_only() -> None:
    onto = five_nodes()
    vocab = np.array([onto.index("a"), onto.index("b")])
    model = double(HAPEmbedder(Hierarchy.from_ontology(onto), vocab, EmbedderConfig(2, 3)))
    uniform_attention(model)
    set_base(model, onto, {"<ROOT>": [6, 0], "A": [2, 4], "B": [0, 2], "a": [4, 0], "b": [2, 2]})
    plan = model.plan
    terminal = [step.targets.tolist() for step, t in zip(plan.steps, plan.terminal, strict=True) if t]
    assert terminal == [vocab.tolist()]
    (part,) = model.plan.restrict(np.array([1]))
    assert part.step is not None and part.rows.tolist() == [1]  # b's top-down step, for b alone
    assert torch.allclose(model.embed(np.array([1])), torch.tensor([[25 / 12, 11 / 6]], dtype=DTYPE))


# ----------------------------------------------------------------------------- GRAM
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("levels", [1, 2, None])
def test_gram_equals_naive_loop_values_and_gradients(seed: int, levels: int | None) -> None:
    onto = random_dag(seed).truncate(levels)
    vocab = np.random.default_rng(seed).choice(np.arange(1, len(onto)), size=10, replace=False)
    torch.manual_seed(seed)
    model = double(GRAMEmbedder(Hierarchy.from_ontology(onto), vocab, SMALL))
    assert_same_values_and_gradients(model, model(), naive_gram(onto, model, vocab))
    with torch.no_grad():
        assert torch.allclose(model.all_node_embeddings(), naive_gram(onto, model, np.arange(len(onto))))


def test_gram_by_hand_with_uniform_attention() -> None:
    onto = five_nodes()
    model = double(
        GRAMEmbedder(
            Hierarchy.from_ontology(onto), np.array([onto.index("a"), onto.index("b")]), EmbedderConfig(2, 3)
        )
    )
    uniform_attention(model)
    set_base(model, onto, {"<ROOT>": [6, 0], "A": [2, 4], "B": [0, 2], "a": [4, 0], "b": [2, 2]})
    # g_a = (e_a + e_A + e_root)/3, g_b = (e_b + e_B + e_root)/3
    assert torch.allclose(model(), torch.tensor([[4, 4 / 3], [8 / 3, 4 / 3]], dtype=DTYPE))


def test_gram_with_one_level_equals_plain() -> None:
    onto = random_dag(3)
    vocab = np.arange(2, 25)
    gram = double(GRAMEmbedder(Hierarchy.from_ontology(onto.truncate(1)), vocab, SMALL))
    plain = double(PlainEmbedder(Hierarchy.from_ontology(onto), vocab, SMALL))
    plain.init_base(gram.base.weight.detach())
    assert torch.allclose(gram(), plain())


# ----------------------------------------------------------------------------- baselines
def test_plain_is_the_base_embedding() -> None:
    onto = five_nodes()
    model = PlainEmbedder(Hierarchy.from_ontology(onto), np.array([4, 3]), SMALL)
    assert torch.equal(model(), model.base.weight[[4, 3]])


def test_rollup_parent_mean_of_parents_or_itself() -> None:
    # D has parents B and C (a DAG); E has one parent, C; A has only the root.
    onto = Ontology.from_edges(
        "roll", [("", "A"), ("A", "B"), ("A", "C"), ("B", "D"), ("C", "D"), ("C", "E")]
    )
    ids = [onto.index(x) for x in ("E", "D", "A")]
    model = double(RollupEmbedder(Hierarchy.from_ontology(onto), np.array(ids), SMALL))
    e = model.base.weight
    b, c = onto.index("B"), onto.index("C")
    assert torch.allclose(model()[0], e[c])  # one parent: its embedding
    assert torch.allclose(model()[1], (e[b] + e[c]) / 2)  # two parents: their mean
    assert torch.allclose(model()[2], e[0])  # A's parent is the root
    truncated = double(RollupEmbedder(Hierarchy.from_ontology(onto.truncate(1)), np.array(ids), SMALL))
    truncated.init_base(e.detach())
    assert torch.allclose(truncated(), e[ids])  # no parent in range: its own embedding
    every = model.all_node_embeddings()
    assert torch.allclose(every[ids], model()) and torch.allclose(every[0], e[0])


# ----------------------------------------------------------------------------- explanations
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("levels", [2, None])
def test_explanation_weights_reproduce_the_final_embeddings(name: str, levels: int | None) -> None:
    onto = random_dag(1)
    torch.manual_seed(0)
    model = double(
        get_model(name).embedder(
            Hierarchy.from_ontology(onto.truncate(levels)), np.arange(1, len(onto)), SMALL
        )
    )
    nodes = np.arange(len(onto))
    weights = model.explain(nodes)
    assert weights.shape == (len(onto), len(onto))
    assert torch.allclose(weights.sum(1), torch.ones(len(onto), dtype=DTYPE)) and (weights >= 0).all()
    with torch.no_grad():
        assert torch.allclose(weights @ model.base.weight, model.all_node_embeddings())
        assert torch.allclose(model.explain(np.arange(1, len(onto))) @ model.base.weight, model())


def test_hap_explanation_in_chunks_and_attention_table() -> None:
    onto = random_dag(2)
    torch.manual_seed(0)
    model = double(HAPEmbedder(Hierarchy.from_ontology(onto), np.arange(1, len(onto)), SMALL))
    assert torch.allclose(model.explain(np.arange(len(onto)), chunk=4), model.explain(np.arange(len(onto))))
    steps = model.attention()
    assert steps[0]["pass"] == "bottom-up" and steps[-1]["pass"] == "top-down"
    for step in steps:
        sums = np.bincount(step["target"], weights=step["weight"], minlength=len(onto))
        assert np.allclose(sums[np.unique(step["target"])], 1.0)  # one softmax per target


@pytest.mark.parametrize("name", ["hap", "gram"])
def test_bf16_autocast_runs_and_stays_close(name: str) -> None:
    onto = random_dag(2)
    torch.manual_seed(0)
    model = get_model(name).embedder(
        Hierarchy.from_ontology(onto), np.arange(1, len(onto)), EmbedderConfig(16, 8)
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model()
    low.float().sum().backward()
    assert model.base.weight.grad is not None
    with torch.no_grad():
        assert torch.allclose(low.float(), model(), rtol=0.05, atol=0.02)


# ----------------------------------------------------------------------------- registry and basics
def test_registry_models_build_and_train_one_step() -> None:
    onto = random_dag(0)
    vocab = np.flatnonzero(onto.is_leaf)
    assert {"hap", "gram", "rnn", "rollup"} <= set(MODELS)
    for name, spec in MODELS.items():
        assert spec.name == name and spec.glove_scope in ("ancestors", "parents", "codes")
        model = build_embedder(
            name, Hierarchy.from_ontology(onto), vocab, EmbedderConfig(dim=8, attention_dim=4)
        )
        g = model()
        assert g.shape == (len(vocab), 8)
        g.pow(2).sum().backward()
        assert model.base.weight.grad is not None and model.base.weight.grad.abs().sum() > 0
        trainable = [p for p in model.parameters() if p.grad is not None]
        assert len(trainable) == len(list(model.parameters())), name
        assert all(k.startswith(("base.", "up.", "down.", "attention.")) for k in model.state_dict()), name


def test_get_model_names_the_valid_models() -> None:
    with pytest.raises(HapnetError, match="unknown model 'hap2'.*hap, gram, rnn, rollup"):
        get_model("hap2")


def test_register_a_new_model() -> None:
    spec = ModelSpec("plain-test", "Plain test", PlainEmbedder, "a test copy of rnn", False, "codes")
    try:
        register_model(spec)
        assert get_model("plain-test") is spec
    finally:
        MODELS.pop("plain-test")


def test_init_base_and_bad_inputs() -> None:
    onto = five_nodes()
    model = HAPEmbedder(Hierarchy.from_ontology(onto), np.array([3, 4]), EmbedderConfig(4, 2))
    vectors = torch.arange(20, dtype=torch.float32).reshape(5, 4)
    model.init_base(vectors)
    assert torch.equal(model.base.weight.detach(), vectors)
    with pytest.raises(HapnetError, match="shape"):
        model.init_base(torch.zeros(5, 3))
    with pytest.raises(HapnetError, match="out of range"):
        HAPEmbedder(Hierarchy.from_ontology(onto), np.array([5]), EmbedderConfig(4, 2))
    with pytest.raises(HapnetError, match="empty"):
        GRAMEmbedder(Hierarchy.from_ontology(onto), np.array([], dtype=np.int64), EmbedderConfig(4, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", sorted(MODELS))
def test_cuda_equals_cpu(name: str) -> None:
    onto = random_dag(3)
    vocab = np.arange(1, len(onto))
    torch.manual_seed(0)
    model = double(get_model(name).embedder(Hierarchy.from_ontology(onto), vocab, SMALL))
    weights = torch.randn(len(vocab), SMALL.dim, dtype=DTYPE)
    out = model()
    (out * weights).sum().backward()
    cpu_grad = model.base.weight.grad.clone()
    model.zero_grad()
    model.cuda()
    out_cuda = model()
    (out_cuda * weights.cuda()).sum().backward()
    assert out_cuda.is_cuda
    assert torch.allclose(out_cuda.cpu(), out) and torch.allclose(model.base.weight.grad.cpu(), cpu_grad)
    classes = np.array([5, 0, 9])
    assert torch.allclose(model.embed(classes).cpu(), out[classes])
    assert torch.allclose(model.all_node_embeddings().cpu(), model.cpu().all_node_embeddings())
