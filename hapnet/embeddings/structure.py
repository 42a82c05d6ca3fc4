"""`hapnet embed`: a vector for every code of an ontology, from the structure alone or a run.

Two sources of vectors:
- the structure alone (`embed(ontology)`): base embeddings of every node go through the same
  embedder as in training (HAP: bottom-up then top-down propagation, `levels` honoured) and are
  trained so that each node's neighbours in the ontology (its parents and children) are ranked
  above sampled non-neighbours: the softmax ranking loss of Nickel & Kiela (2017, "Poincaré
  Embeddings"), on cosine similarity (plus a lighter second tier: siblings and grandparents
  above unrelated nodes);
- a trained run (`embed(ontology, from_run=RUN_DIR)`): the run's final embeddings (after
  propagation) of its observable codes and their category nodes, no retraining.

How much of the ontology they recover: `hapnet.embeddings.reconstruction`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from hapnet.embeddings.config import EmbedConfig
from hapnet.embeddings.formats import EmbeddingTable, write_embeddings
from hapnet.embeddings.reconstruction import (
    PROTOCOL,
    Reconstruction,
    ancestor_pairs,
    reconstruction,
    relations,
)
from hapnet.errors import HapnetError
from hapnet.models.embedder import EmbedderConfig
from hapnet.models.registry import build_embedder, get_model
from hapnet.ontology.builtins import load_ontology
from hapnet.ontology.graph import Ontology
from hapnet.ontology.hierarchy import Hierarchy
from hapnet.training.runs import Run, as_run
from hapnet.utils.device import resolve_device


@dataclass
class EmbedResult:
    """What `embed` returns: the table (codes + vectors), the figures and, when trained here, the model."""

    table: EmbeddingTable
    reconstruction: Reconstruction | None
    settings: dict[str, Any]
    seconds: float  # the whole call: training (or export) and evaluation
    train_seconds: float = 0.0
    history: list[float] = field(default_factory=list)  # loss per epoch
    embedder: torch.nn.Module | None = None

    @property
    def frame(self) -> pd.DataFrame:
        return self.table.frame()

    @property
    def codes(self) -> list[str]:
        return self.table.codes

    @property
    def vectors(self) -> torch.Tensor:
        return torch.from_numpy(self.table.vectors)

    @property
    def metrics(self) -> dict[str, Any]:
        """The figures `--metrics` writes: map, mean_rank, nodes, seconds, and how they were made."""
        figures: dict[str, Any] = {"nodes": len(self.table), "seconds": round(self.seconds, 3)}
        if self.reconstruction is not None:
            rec = self.reconstruction
            figures = {
                "map": rec.map,
                "mean_rank": rec.mean_rank,
                **figures,
                "queries": rec.queries,
                "pairs": rec.pairs,
                "train_seconds": round(self.train_seconds, 3),
                "eval_seconds": round(rec.seconds, 3),
                "similarity": "cosine",
                "protocol": PROTOCOL,
            }
        return {**figures, "settings": self.settings}

    def save(self, path: str | Path, *, force: bool = False) -> list[Path]:
        """Write the table in the format named by the suffix (see `hapnet.embeddings.formats`)."""
        return write_embeddings(self.table, path, force=force)


Callback = Callable[[int, int, float], None]  # (epoch, epochs, loss)


class RankingObjective:
    """Nickel & Kiela's softmax ranking loss on the ontology's edges, for all nodes at once.

    For every pair (u, v) of neighbours (both directions of every edge, root excluded):
    `softplus(logsumexp_n s(u, n) - s(u, v))` with s = cosine / temperature, n over u's negatives:
    uniform nodes shared by all u in one step, plus ends of 2-step walks from u (siblings,
    grandparents, grandchildren: the near misses of the reconstruction); u itself and its true
    neighbours are never negatives. A constant logit at cosine -1 keeps the sum finite.
    A second tier, weighted `family_weight`, ranks those 2-step nodes above the uniform ones, so
    that after a code's parent and children come its siblings and grandparents, not codes from
    elsewhere in the ontology (what `hapnet neighbors` shows).
    """

    def __init__(self, ontology: Ontology, config: EmbedConfig, device: torch.device):
        self.n = len(ontology)
        self.config = config
        truth = relations(ontology, np.arange(self.n), "edges")  # rows are node indices
        if truth.num_pairs == 0:
            raise HapnetError(f"{ontology.source or ontology.name}: no edge below the root to learn from")

        def as_tensor(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)).to(device)

        self.offsets, self.targets = as_tensor(truth.offsets), as_tensor(truth.targets)
        self.degree = as_tensor(truth.counts)
        self.src, self.dst = as_tensor(truth.sources), self.targets
        queries = np.flatnonzero(truth.counts > 0)
        self.queries = as_tensor(queries)
        self.position = torch.full((self.n,), -1, dtype=torch.long, device=device)
        self.position[self.queries] = torch.arange(len(queries), device=device)
        self.device = device
        # Sorted keys u * n + v of every related pair and of u itself: membership by binary search.
        self.related = torch.sort(torch.cat([self.src * self.n + self.dst, self.queries * (self.n + 1)]))[0]

    def _is_related(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        key = u * self.n + v
        found = torch.searchsorted(self.related, key).clamp(max=len(self.related) - 1)
        return self.related[found] == key

    def _neighbour(self, nodes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A uniformly random neighbour of each node (every node given has one)."""
        pick = torch.rand(nodes.shape, generator=generator, device=self.device) * self.degree[nodes]
        return self.targets[self.offsets[nodes] + pick.long().clamp(max=self.degree[nodes] - 1)]

    def __call__(self, g: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        tau = self.config.temperature
        g = F.normalize(g, dim=1)
        q = self.queries
        g_q = g.index_select(0, q)
        positive = (g.index_select(0, self.src) * g.index_select(0, self.dst)).sum(1) / tau

        # Uniform negatives shared by all queries: one matrix product; related pairs masked.
        count = min(self.config.negatives, self.n - 1)
        shared = torch.randperm(self.n - 1, generator=generator, device=self.device)[:count] + 1
        slot = torch.full((self.n,), -1, dtype=torch.long, device=self.device)
        slot[shared] = torch.arange(count, device=self.device)
        logits = g_q @ g.index_select(0, shared).T / tau
        hit = slot[self.dst] >= 0
        mask = torch.zeros_like(logits, dtype=torch.bool)
        mask[self.position[self.src[hit]], slot[self.dst[hit]]] = True
        own = slot[q] >= 0
        mask[torch.arange(len(q), device=self.device)[own], slot[q[own]]] = True
        parts = [logits.masked_fill(mask, -torch.inf)]

        floor = g_q.new_full((len(q), 1), -1 / tau)  # cosine -1: the floor, never exceeded
        family_loss = None
        if self.config.hard_negatives:
            start = q.unsqueeze(1).expand(-1, self.config.hard_negatives)
            ends = self._neighbour(self._neighbour(start, generator), generator)
            hard = torch.bmm(g.index_select(0, ends.reshape(-1)).view(*ends.shape, -1), g_q.unsqueeze(2))
            hard = hard.squeeze(2).div(tau)
            related = self._is_related(start, ends)
            if self.config.family_weight > 0:
                # second tier: two steps away still ranks above unrelated nodes
                uniform = torch.logsumexp(torch.cat([parts[0], floor], 1), 1, keepdim=True)
                family_loss = F.softplus(uniform - hard)[~related].mean()
            parts.append(hard.masked_fill(related, -torch.inf))
        normaliser = torch.logsumexp(torch.cat([*parts, floor], 1), 1)
        loss = F.softplus(normaliser[self.position[self.src]] - positive).mean()
        if family_loss is not None:
            loss = loss + self.config.family_weight * family_loss
        return loss


def initial_embedder(ontology: Ontology, config: EmbedConfig) -> torch.nn.Module:
    """The embedder `train_structure` starts from, before any step: random base embeddings (seeded
    by `config.seed`) through the propagation. `config.epochs` is not read: this is the untrained
    baseline of benchmarks/bench_embed.py, which `embed` never returns (it needs 1 epoch or more).

    The embedder is built exactly as for `hapnet train`, on the ontology truncated to
    `config.levels`, on `config.device`.
    """
    hierarchy = Hierarchy.from_ontology(ontology.truncate(config.levels))
    everything = np.arange(len(ontology))
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's RNG
        torch.manual_seed(config.seed)
        embedder = build_embedder(
            config.model,
            hierarchy,
            everything,
            EmbedderConfig(dim=config.dim, attention_dim=config.attention_dim),
        )
    return embedder.to(resolve_device(config.device))


def train_structure(
    ontology: Ontology, config: EmbedConfig, callback: Callback | None = None
) -> tuple[torch.nn.Module, list[float]]:
    """Train an embedder of every node (`config.model`, HAP by default) on the ranking objective,
    `config.epochs` full-batch steps from `initial_embedder`.

    The objective always uses the full ontology's edges, whatever `config.levels`.
    """
    device = resolve_device(config.device)
    embedder = initial_embedder(ontology, config)
    objective = RankingObjective(ontology, config, device)
    optimizer = torch.optim.Adam(embedder.parameters(), lr=config.lr)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    history: list[float] = []
    embedder.train()
    for epoch in range(1, config.epochs + 1):
        loss = objective(embedder(), generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
        if callback is not None:
            callback(epoch, config.epochs, history[-1])
    embedder.eval()
    return embedder, history


def _table(ontology: Ontology, nodes: np.ndarray, vectors: torch.Tensor) -> EmbeddingTable:
    return EmbeddingTable(
        codes=[ontology.ids[i] for i in nodes],
        vectors=vectors.detach().float().cpu().numpy(),
        descriptions=[ontology.descriptions[i] for i in nodes],
        levels=ontology.levels[nodes].copy(),
        is_leaf=ontology.is_leaf[nodes].copy(),
    )


def embed(
    source: str | Path | Ontology,
    *,
    dim: int | None = None,
    levels: int | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    device: str | None = None,
    model: str | None = None,
    from_run: Run | str | Path | None = None,
    evaluate: bool = True,
    callback: Callback | None = None,
    config: EmbedConfig | None = None,
) -> EmbedResult:
    """Embeddings of every code and category node of an ontology, and their reconstruction figures.

    Without `from_run`: learned from the structure alone in `epochs` steps, at least 1 (see
    `train_structure`; settings given here override `config`). With `from_run` (a loaded run,
    `hapnet.load`, or its folder): the final embeddings of a trained run's observable codes and
    of their category nodes, no retraining (`source` must be the run's ontology).
    `evaluate=False` skips the reconstruction (its cost is one pass over all pairs of nodes).
    """
    start = time.perf_counter()
    overrides = {
        "dim": dim,
        "levels": levels,
        "epochs": epochs,
        "seed": seed,
        "device": device,
        "model": model,
    }
    ontology = load_ontology(source) if not isinstance(source, Ontology) else source
    if from_run is not None:
        given = [f"--{k}" for k in ("dim", "levels", "epochs", "seed", "model") if overrides[k] is not None]
        if given:
            raise HapnetError(f"{', '.join(given)}: not used with --from-run (the run's own settings apply)")
        ontology, nodes, vectors, settings = _from_run(from_run, ontology, device or "cpu")
        history: list[float] = []
        embedder = None
    else:
        values = asdict(config or EmbedConfig())
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings_config = EmbedConfig(**values).validate()
        embedder, history = train_structure(ontology, settings_config, callback)
        nodes = np.arange(1, len(ontology))
        with torch.no_grad():
            vectors = embedder()[1:]
        settings = {"source": ontology.source or ontology.name, **asdict(settings_config)}
    train_seconds = time.perf_counter() - start
    table = _table(ontology, nodes, vectors)
    figures = None
    if evaluate:
        figures = reconstruction(vectors.detach(), relations(ontology, nodes, "edges"))
    return EmbedResult(
        table=table,
        reconstruction=figures,
        settings=settings,
        seconds=time.perf_counter() - start,
        train_seconds=train_seconds,
        history=history,
        embedder=embedder,
    )


def _from_run(
    run: Run | str | Path, ontology: Ontology, device: str
) -> tuple[Ontology, np.ndarray, torch.Tensor, dict[str, Any]]:
    """(ontology the run used, exported nodes, their final embeddings, settings) of a run or its
    folder (loaded on `device`; a loaded run stays where it is)."""
    run = as_run(run, device=str(resolve_device(device)))
    if run.ontology.ids != ontology.ids:
        raise HapnetError(
            f"{run.path}: trained on ontology {run.config.ontology!r}, not on "
            f"{ontology.source or ontology.name!r} (pass the run's ontology)"
        )
    used = run.ontology.truncate(run.config.levels)
    codes = np.unique(run.vocabulary().nodes)
    nodes = codes
    if get_model(run.config.model).uses_hierarchy:  # category nodes carry trained embeddings
        u, a = ancestor_pairs(used)
        observable = np.zeros(len(used), dtype=bool)
        observable[codes] = True
        nodes = np.union1d(codes, a[observable[u]])
    nodes = nodes[nodes != 0]
    with torch.no_grad():
        vectors = run.model.embedder.all_node_embeddings().index_select(
            0, torch.from_numpy(nodes).to(run.model.embedder.base.weight.device)
        )
    settings = {
        "source": str(run.config.ontology),
        "from_run": str(run.path),
        "model": run.config.model,
        "dim": run.config.dim,
        "levels": run.config.levels,
        "observable_codes": len(codes),
    }
    return run.ontology, nodes, vectors, settings
