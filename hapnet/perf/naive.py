"""A naive reference port of HAP / GRAM + the visit GRU, written the way the original Theano code
works: the yardstick `hapnet bench` measures our implementation against.

Correct (tests/perf/test_bench.py checks it equals hapnet's embedders and predictor in float64),
deliberately not clever:
- each level's candidates are padded to the level's largest fan-in ([T, F] index + mask);
- the attention score is `u^T tanh(W [q ; k] + b)` with W applied to the concatenated pair, for
  every padded pair (no split W_q / W_k projections per node);
- a masked softmax over the padded candidates, a dense weighted sum;
- every step writes its targets into a full copy of the [num_nodes, d] embedding table;
- visits are a dense multi-hot tensor [B, T, C] (built per batch with Python loops, like GRAM's
  `padMatrix`), multiplied by the code embeddings; the loss runs over the padded [B, T, C] too.
Do not use it for training: it is here to be slow in the same way a straight port is.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from hapnet.data.visits import VisitData
from hapnet.models.embedder import EmbedderConfig
from hapnet.models.gram import GRAMEmbedder
from hapnet.models.hap import HAPEmbedder
from hapnet.models.predictor import DIAGNOSIS, NextVisitModel
from hapnet.models.propagation import AttentionScorer
from hapnet.ontology.hierarchy import Hierarchy, Step
from hapnet.utils.arrays import range_positions


class ConcatScorer(nn.Module):
    """f(q, k) = u^T tanh(W [q ; k] + b), W in R^{a x 2d}, applied to every (q, k) pair."""

    def __init__(self, dim: int, attention_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(attention_dim, 2 * dim))
        self.bias = nn.Parameter(torch.zeros(attention_dim))
        self.u = nn.Parameter(torch.empty(attention_dim))
        nn.init.uniform_(self.weight, -1 / math.sqrt(2 * dim), 1 / math.sqrt(2 * dim))
        nn.init.uniform_(self.u, -1 / math.sqrt(attention_dim), 1 / math.sqrt(attention_dim))

    @torch.no_grad()
    def load_from(self, scorer: AttentionScorer) -> None:
        """Copy a split scorer: W = [W_q, W_k], b, u."""
        self.weight.copy_(torch.cat([scorer.query.weight, scorer.key.weight], dim=1))
        self.bias.copy_(scorer.query.bias)
        self.u.copy_(scorer.u)

    def attend(self, query: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """query [T, d], keys [T, F, d] (padded), mask [T, F] -> sum_j alpha_j keys_j, [T, d]."""
        pairs = torch.cat([query.unsqueeze(1).expand(-1, keys.shape[1], -1), keys], dim=2)  # [T, F, 2d]
        scores = torch.tanh(pairs @ self.weight.t() + self.bias) @ self.u  # [T, F]
        alpha = torch.softmax(scores.masked_fill(~mask, -math.inf), dim=1)
        return (alpha.unsqueeze(2) * keys).sum(1)


def padded_candidates(step: Step) -> tuple[Tensor, Tensor, Tensor]:
    """(targets [T], candidate nodes [T, F], mask [T, F]), F = the step's largest fan-in + 1 (self)."""
    num_targets = len(step.targets)
    order = np.argsort(step.edge_target, kind="stable")  # self candidates stay first
    target, source = step.edge_target[order], step.edge_source[order]
    counts = np.bincount(target, minlength=num_targets)
    slot = range_positions(counts)
    nodes = np.zeros((num_targets, int(counts.max())), dtype=np.int64)
    mask = np.zeros(nodes.shape, dtype=bool)
    nodes[target, slot] = source
    mask[target, slot] = True
    return torch.from_numpy(step.targets.copy()), torch.from_numpy(nodes), torch.from_numpy(mask)


class _PaddedSteps(nn.Module):
    """The padded (targets, candidates, mask) of a list of steps, as buffers."""

    def __init__(self, steps: list[Step]):
        super().__init__()
        self.count = len(steps)
        for i, step in enumerate(steps):
            for name, tensor in zip(("targets", "nodes", "mask"), padded_candidates(step), strict=True):
                self.register_buffer(f"{name}{i}", tensor, persistent=False)

    def __iter__(self):
        for i in range(self.count):
            yield self._buffers[f"targets{i}"], self._buffers[f"nodes{i}"], self._buffers[f"mask{i}"]


def _load_base(table: Tensor, embedder: HAPEmbedder | GRAMEmbedder) -> None:
    """The naive port keeps a row for every node: copy the embedder's rows (all nodes, or only its
    `base_nodes` with the observed ontology: the other rows are never read)."""
    table.zero_()
    table.index_copy_(0, torch.from_numpy(embedder.base_nodes).to(table.device), embedder.base.weight)


class NaiveHAP(nn.Module):
    """HAP level by level over padded candidates; the whole embedding table is rewritten per step."""

    def __init__(self, hierarchy: Hierarchy, vocab: np.ndarray, config: EmbedderConfig):
        super().__init__()
        self.base = nn.Embedding(hierarchy.num_nodes, config.dim)
        nn.init.normal_(self.base.weight, std=config.init_std)
        self.up = ConcatScorer(config.dim, config.attention_dim)
        self.down = ConcatScorer(config.dim, config.attention_dim)
        self.bottom_up = _PaddedSteps(hierarchy.bottom_up)
        self.top_down = _PaddedSteps(hierarchy.top_down)
        self.register_buffer("vocab", torch.as_tensor(np.asarray(vocab, dtype=np.int64)), persistent=False)

    @torch.no_grad()
    def load_from(self, embedder: HAPEmbedder) -> None:
        _load_base(self.base.weight, embedder)
        self.up.load_from(embedder.up)
        self.down.load_from(embedder.down)

    def forward(self) -> Tensor:
        e = self.base.weight
        h = e
        for targets, nodes, mask in self.bottom_up:  # query: the parent's base embedding
            h = h.index_copy(0, targets, self.up.attend(e[targets], h[nodes], mask))
        after_bottom_up = h
        for targets, nodes, mask in self.top_down:  # query: the child after bottom-up
            h = h.index_copy(0, targets, self.down.attend(after_bottom_up[targets], h[nodes], mask))
        return h[self.vocab]


class NaiveGRAM(nn.Module):
    """GRAM: every code attends over itself and its ancestors, padded to the largest ancestor set."""

    def __init__(self, hierarchy: Hierarchy, vocab: np.ndarray, config: EmbedderConfig):
        super().__init__()
        self.base = nn.Embedding(hierarchy.num_nodes, config.dim)
        nn.init.normal_(self.base.weight, std=config.init_std)
        self.attention = ConcatScorer(config.dim, config.attention_dim)
        self.step = _PaddedSteps([hierarchy.ancestor_step(np.asarray(vocab, dtype=np.int64))])

    @torch.no_grad()
    def load_from(self, embedder: GRAMEmbedder) -> None:
        _load_base(self.base.weight, embedder)
        self.attention.load_from(embedder.attention)

    def forward(self) -> Tensor:
        e = self.base.weight
        ((targets, nodes, mask),) = list(self.step)
        return self.attention.attend(e[targets], e[nodes], mask)


NAIVE_EMBEDDERS: dict[str, type[nn.Module]] = {"hap": NaiveHAP, "gram": NaiveGRAM}


# ----------------------------------------------------------------------------- visits, GRU, loss
def pad_matrix(
    data: VisitData, code_to_class: np.ndarray, patients: np.ndarray, num_codes: int
) -> tuple[Tensor, Tensor, Tensor]:
    """GRAM's `padMatrix`: dense multi-hot inputs x [B, T, C], targets y [B, T, C], mask [B, T].

    Step t of patient b reads visit t and predicts visit t + 1; filled with Python loops.
    """
    visits = [
        [data.codes[data.visit_offsets[v] : data.visit_offsets[v + 1]] for v in range(start, end)]
        for start, end in zip(data.patient_offsets[patients], data.patient_offsets[patients + 1], strict=True)
    ]
    horizon = max(len(v) for v in visits) - 1
    x = np.zeros((len(visits), horizon, num_codes), dtype=np.float32)
    y = np.zeros_like(x)
    mask = np.zeros((len(visits), horizon), dtype=bool)
    for b, seq in enumerate(visits):
        for t, (now, after) in enumerate(zip(seq[:-1], seq[1:], strict=False)):
            x[b, t, code_to_class[now]] = 1.0
            y[b, t, code_to_class[after]] = 1.0
            mask[b, t] = True
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(mask)


class NaiveNextVisitModel(nn.Module):
    """Embedder + GRU + output layer on dense multi-hot visits: v_t = tanh(x_t @ G)."""

    def __init__(self, embedder: nn.Module, num_codes: int, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.embedder = embedder
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden, num_codes)

    @classmethod
    def twin_of(cls, model: NextVisitModel, name: str) -> NaiveNextVisitModel:
        """The naive port of `model` (registry name `name`: hap or gram): the same hierarchy,
        vocabulary and sizes, and a copy of its parameters."""
        embedder = model.embedder
        naive_embedder = NAIVE_EMBEDDERS[name](embedder.hierarchy, embedder.vocab_nodes, embedder.config)
        twin = cls(
            naive_embedder, model.num_codes, embedder.config.dim, model.gru.hidden_size, model.dropout.p
        )
        twin.load_from(model)
        return twin.to(embedder.base.weight.device)

    @torch.no_grad()
    def load_from(self, model: NextVisitModel) -> None:
        """Copy a `NextVisitModel` (same sizes) parameter by parameter."""
        self.embedder.load_from(model.embedder)
        self.gru.load_state_dict(model.gru.state_dict())
        self.output.load_state_dict(model.heads[DIAGNOSIS].state_dict())

    def forward(self, x: Tensor) -> Tensor:
        """Logits [B, T, C] for every padded step."""
        g = self.embedder()
        states, _ = self.gru(torch.tanh(x.to(g.dtype) @ g))
        return self.output(self.dropout(states))


def naive_loss(logits: Tensor, y: Tensor, mask: Tensor, kind: str = "paper") -> Tensor:
    """The loss over the padded [B, T, C] tensor, masked: per patient, summed over its steps and
    divided by its number of steps; batch mean (same definition as `predictor.next_visit_loss`)."""
    y = y.to(logits.dtype)
    log_p = torch.log_softmax(logits, dim=2)
    if kind == "paper":
        log_not_p = torch.log1p(-log_p.exp().clamp(max=1 - 1e-7))
        per_step = -(y * log_p + (1 - y) * log_not_p).sum(2)
    elif kind == "softmax":
        per_step = -(y * log_p).sum(2) / y.sum(2).clamp(min=1)
    else:
        raise ValueError(f"the naive reference has no loss {kind!r}")
    steps = mask.sum(1).clamp(min=1)
    return ((per_step * mask).sum(1) / steps).mean()


def naive_training_step(
    model: NaiveNextVisitModel,
    optimizer: torch.optim.Optimizer,
    data: VisitData,
    code_to_class: np.ndarray,
    patients: np.ndarray,
    loss: str,
) -> Tensor:
    """One training step of the naive port on `patients`, as the original code makes one: the
    padded multi-hot batch built with Python loops, the masked loss, backward, the update."""
    num_codes = model.output.out_features
    device = model.output.weight.device
    x, y, mask = (t.to(device) for t in pad_matrix(data, code_to_class, patients, num_codes))
    value = naive_loss(model(x), y, mask, loss)
    optimizer.zero_grad(set_to_none=True)
    value.backward()
    optimizer.step()
    return value
