import math
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from hapnet.data.batches import BatchBuilder
from hapnet.data.tasks import CategoryTask
from hapnet.models.losses import multi_task_loss, next_visit_loss
from hapnet.models.predictor import NextVisitModel


def tiny_data():
    # patient A: visits [0,1], [2], [1,3]; patient B: visits [4], [0]
    visits = [[0, 1], [2], [1, 3], [4], [0]]
    return SimpleNamespace(
        patient_offsets=np.array([0, 3, 5]),
        visit_offsets=np.concatenate([[0], np.cumsum([len(v) for v in visits])]),
        codes=np.array([c for v in visits for c in v]),
    )


def test_batch_builder_builds_packed_bags_and_next_visit_targets():
    batch = BatchBuilder(tiny_data(), np.arange(5)).build(np.array([0, 1]))
    assert batch.num_patients == 2 and batch.num_steps == 3
    assert batch.step_mask.tolist() == [[True, True], [True, False]]
    # Packed rows, time-major: (A, t0) [0, 1], (B, t0) [4], (A, t1) [2].
    assert batch.batch_sizes.tolist() == [2, 1] and batch.sorted_indices.tolist() == [0, 1]
    assert batch.input_codes.tolist() == [0, 1, 4, 2]
    assert batch.input_offsets.tolist() == [0, 2, 3]
    assert batch.step_rows.tolist() == [0, 2, 1]  # (A, 0), (A, 1), (B, 0)
    assert batch.step_patient.tolist() == [0, 0, 1]
    assert batch.target_rows.tolist() == [0, 1, 1, 2]
    assert batch.target_codes.tolist() == [2, 1, 3, 0]


def test_batch_lists_its_input_classes_once():
    batch = BatchBuilder(tiny_data(), np.array([4, 3, 2, 1, 0])).build(np.array([0, 1]))
    assert batch.input_classes.tolist() == [0, 2, 3, 4]  # codes 0, 1, 4, 2 as classes 4, 3, 0, 2
    assert batch.input_classes[batch.input_local.numpy()].tolist() == batch.input_codes.tolist()


def test_batch_builder_maps_nodes_to_classes():
    code_to_class = np.array([4, 3, 2, 1, 0])
    batch = BatchBuilder(tiny_data(), code_to_class).build(np.array([1]))
    assert batch.input_codes.tolist() == [0] and batch.target_codes.tolist() == [4]


class FixedEmbedder(nn.Module):
    subset_is_cheaper = False  # what NextVisitModel asks of an embedder

    def __init__(self, num_codes, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_codes, dim, dtype=torch.float64))

    def forward(self):
        return self.weight


def test_embedding_bag_path_equals_dense_multi_hot_path():
    torch.manual_seed(0)
    model = NextVisitModel(FixedEmbedder(5, 3), num_codes=5, dim=3, hidden=4, dropout=0.0).double().eval()
    batch = BatchBuilder(tiny_data(), np.arange(5)).build(np.array([0, 1]))
    logits = model(batch)["diagnosis"]
    # Dense reference: multi-hot visit matrix @ g, GRU per patient without padding.
    visits = [[0, 1], [2], [1, 3], [4], [0]]
    multi_hot = torch.zeros(5, 5, dtype=torch.float64)
    for i, v in enumerate(visits):
        multi_hot[i, v] = 1
    x = torch.tanh(multi_hot @ model.embedder.weight)
    out_a, _ = model.gru(x[None, 0:2])
    out_b, _ = model.gru(x[None, 3:4])
    expected = model.heads["diagnosis"](torch.cat([out_a[0], out_b[0]]))
    assert torch.allclose(logits, expected)


def test_paper_loss_by_hand_with_uniform_predictions():
    batch = BatchBuilder(tiny_data(), np.arange(5)).build(np.array([0, 1]))
    logits = torch.zeros(3, 5)  # p = 1/5 everywhere

    def step(n_true):
        return -(n_true * math.log(0.2) + (5 - n_true) * math.log(0.8))

    # patient A: steps with 1 and 2 true codes, averaged; patient B: one step with 1 true code.
    expected = ((step(1) + step(2)) / 2 + step(1)) / 2
    assert abs(next_visit_loss(logits, batch, "paper").item() - expected) < 1e-5
    softmax_expected = -math.log(0.2)  # every step: mean over true codes of -log(1/5)
    assert abs(next_visit_loss(logits, batch, "softmax").item() - softmax_expected) < 1e-5


def random_visits(seed: int, num_codes: int = 8):
    """14 patients of 1-6 visits (one with a single visit: no step), ties in length."""
    rng = np.random.default_rng(seed)
    counts = np.concatenate([[1], rng.integers(2, 7, size=13)])
    rng.shuffle(counts)
    visits = [
        sorted(rng.choice(num_codes, size=rng.integers(1, 4), replace=False)) for _ in range(counts.sum())
    ]
    data = SimpleNamespace(
        patient_offsets=np.concatenate([[0], np.cumsum(counts)]),
        visit_offsets=np.concatenate([[0], np.cumsum([len(v) for v in visits])]),
        codes=np.array([c for v in visits for c in v]),
    )
    return data, counts, visits


def test_packed_batch_equals_one_gru_run_per_patient():
    for seed in range(3):
        data, counts, visits = random_visits(seed)
        torch.manual_seed(seed)
        model = NextVisitModel(FixedEmbedder(8, 3), num_codes=8, dim=3, hidden=5, dropout=0.0).double().eval()
        patients = np.random.default_rng(seed).permutation(len(counts))
        batch = BatchBuilder(data, np.arange(8)).build(patients)
        logits = model(batch)["diagnosis"]
        expected = []
        for p in patients:
            first = data.patient_offsets[p]
            multi_hot = torch.zeros(counts[p] - 1, 8, dtype=torch.float64)
            for t in range(counts[p] - 1):
                multi_hot[t, visits[first + t]] = 1
            if len(multi_hot):
                out, _ = model.gru(torch.tanh(multi_hot @ model.embedder.weight)[None])
                expected.append(model.heads["diagnosis"](out[0]))
        assert batch.num_steps == sum(counts - 1) and torch.allclose(logits, torch.cat(expected))


def test_paper_loss_closed_form_gradient_equals_autograd_through_the_formula():
    """Second path: the paper's formula with a dense y, differentiated by autograd (saturated
    logits included: there p is clamped below 1 and that term's gradient is 0)."""
    from hapnet.models.losses import PAPER_CLAMP, _PaperLoss

    rng = np.random.default_rng(0)
    rows = torch.from_numpy(np.repeat(np.arange(6), 3))
    codes = torch.from_numpy(np.concatenate([rng.choice(9, 3, replace=False) for _ in range(6)]))
    for scale in (1.0, 5.0, 60.0):
        torch.manual_seed(int(scale))
        logits = (torch.randn(6, 9, dtype=torch.float64) * scale).requires_grad_()
        weights = torch.randn(6, dtype=torch.float64)
        y = torch.zeros(6, 9, dtype=torch.float64)
        y[rows, codes] = 1
        log_p = torch.log_softmax(logits, dim=1)
        reference = -(y * log_p + (1 - y) * torch.log1p(-log_p.exp().clamp(max=PAPER_CLAMP))).sum(1)
        ours = _PaperLoss.apply(logits, rows, codes)
        assert torch.allclose(ours, reference)
        (grad,) = torch.autograd.grad((ours * weights).sum(), logits)
        (grad_reference,) = torch.autograd.grad((reference * weights).sum(), logits)
        assert torch.allclose(grad, grad_reference, atol=1e-10)
    assert (logits.softmax(1) > PAPER_CLAMP).any()  # the last scale did saturate


def test_dropout_keeps_each_entry_with_probability_1_minus_p_and_rescales():
    from hapnet.models.predictor import Dropout

    torch.manual_seed(0)
    dropout = Dropout(0.4)
    x = torch.full((400, 500), 2.0, requires_grad=True)
    y = dropout(x)
    kept = y != 0
    assert abs(kept.double().mean().item() - 0.6) < 0.005  # 200k draws: sd ~0.001
    assert torch.allclose(y[kept], torch.tensor(2.0 / 0.6))
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(grad != 0, kept) and torch.allclose(grad[kept], torch.tensor(1 / 0.6))
    dropout.eval()
    assert torch.equal(dropout(x), x)
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))


def test_tied_output_rows_are_computed_from_the_code_embeddings():
    """logits[s, c] = h_s . (W g_c + u_c) + b_c, checked against the formula on a real forward."""
    torch.manual_seed(0)
    model = NextVisitModel(FixedEmbedder(5, 3), num_codes=5, dim=3, hidden=4, dropout=0.0, output="tied")
    model = model.double().eval()
    batch = BatchBuilder(tiny_data(), np.arange(5)).build(np.array([0, 1]))
    g = model.code_embeddings()
    head = model.heads["diagnosis"]
    logits = model(batch)["diagnosis"]
    visits = torch.tanh(torch.stack([g[[0, 1]].sum(0), g[[2]].sum(0), g[[4]].sum(0)]))  # (A,0) (A,1) (B,0)
    h_a = model.gru(visits[:2].unsqueeze(0))[0][0]
    h_b = model.gru(visits[2:].unsqueeze(0))[0][0]
    states = torch.cat([h_a, h_b])
    weights = g @ head.project.weight.T + head.free
    assert torch.allclose(logits, states @ weights.T + head.bias)
    # The output rows depend on g: a change of one code's embedding moves that code's logit.
    logits.sum().backward()
    assert model.embedder.weight.grad.abs().sum() > 0


def test_multi_task_loss_equal_and_learned_weights():
    # classes 0, 1 -> category 0; 2, 3 -> category 1; 4 -> category 0
    task = CategoryTask("level1", 1, np.array([7, 8]), np.arange(6), np.array([0, 0, 1, 1, 0]))
    batch = BatchBuilder(tiny_data(), np.arange(5), [task]).build(np.array([0, 1]))
    torch.manual_seed(1)
    logits = {"diagnosis": torch.randn(3, 5), "level1": torch.randn(3, 2)}
    diagnosis = next_visit_loss(logits["diagnosis"], batch, "softmax")
    level1 = next_visit_loss(logits["level1"], batch, "softmax", "level1")
    objective, main = multi_task_loss(logits, batch, "softmax", None)
    assert torch.allclose(objective, diagnosis + level1) and torch.equal(main, diagnosis)
    s = torch.tensor([0.5, -1.0])
    objective, _ = multi_task_loss(logits, batch, "softmax", s)
    expected = math.exp(-0.5) * diagnosis + 0.5 + math.exp(1.0) * level1 - 1.0
    assert torch.allclose(objective, expected)
    # With the diagnosis head alone the objective is the diagnosis loss itself.
    alone, main = multi_task_loss({"diagnosis": logits["diagnosis"]}, batch, "paper", None)
    assert torch.equal(alone, main)
    assert torch.equal(main, next_visit_loss(logits["diagnosis"], batch, "paper"))


def test_time_input_feeds_the_gap_to_the_gru():
    torch.manual_seed(0)
    model = NextVisitModel(FixedEmbedder(5, 3), num_codes=5, dim=3, hidden=4, dropout=0.0, time_input=True)
    model = model.double().eval()
    assert model.gru.input_size == 4
    batch = BatchBuilder(tiny_data(), np.arange(5)).build(np.array([0, 1]))
    batch.input_gaps = torch.zeros(3, dtype=torch.float64)
    before = model(batch)["diagnosis"]
    batch.input_gaps = torch.tensor([0.0, 0.0, 2.0], dtype=torch.float64)  # packed row 2 = (A, t1)
    after = model(batch)["diagnosis"]
    assert torch.allclose(before[[0, 2]], after[[0, 2]]) and not torch.allclose(before[1], after[1])
