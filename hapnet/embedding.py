"""`hapnet embed`: a vector for every code of an ontology, and how much of the ontology it recovers.

Two sources of vectors:
- the structure alone (`embed(ontology)`): base embeddings of every node go through the same
  embedder as in training (HAP: bottom-up then top-down propagation, `levels` honoured) and are
  trained so that each node's neighbours in the ontology (its parents and children) are ranked
  above sampled non-neighbours: the softmax ranking loss of Nickel & Kiela (2017, "Poincaré
  Embeddings"), on cosine similarity (plus a lighter second tier: siblings and grandparents
  above unrelated nodes);
- a trained run (`embed(ontology, from_run=RUN_DIR)`): the run's final embeddings (after
  propagation) of its observable codes and their category nodes, no retraining.

Reconstruction (Nickel & Kiela's protocol on the ontology's edges): for every node u with at least
one neighbour, rank all other nodes v != u by cosine similarity to u; the filtered rank of a true
neighbour is 1 + the number of non-neighbours ranked above it; MAP is the mean over nodes u of the
average precision of u's ranking, mean rank the mean filtered rank over all (u, neighbour) pairs.
`relation="ancestors"` runs the same protocol on the transitive closure (u's neighbours = all
its ancestors), the WordNet setting of the paper. The artificial root takes no part.
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

from hapnet.embedding_io import EmbeddingTable, read_embeddings, write_embeddings
from hapnet.errors import HapnetError
from hapnet.ontology import Ontology
from hapnet.ontology_io import load_ontology

RELATIONS = ("edges", "ancestors")
SIMILARITIES = ("cosine", "poincare")
PROTOCOL = (
    "Nickel & Kiela reconstruction on the ontology's edges: for every node u (root excluded) with "
    "a neighbour (parent or child), all other nodes ranked by cosine similarity; filtered rank = "
    "1 + non-neighbours ranked above; MAP over nodes, mean rank over (u, neighbour) pairs"
)


# ============================================================================= settings and result
@dataclass
class EmbedConfig:
    """Settings of `embed` from the structure alone. The defaults are what measured best (see the
    benchmark benchmarks/bench_embed.py)."""

    dim: int = 128
    attention_dim: int = 64
    levels: int | None = None  # HAP propagates over the lowest K levels only
    model: str = "hap"  # any embedder of the registry; "rnn" = plain embeddings, no propagation
    epochs: int = 10  # one epoch = one full-batch step over every edge of the ontology
    lr: float = 0.01  # Adam
    temperature: float = 0.05  # cosine / temperature are the logits of the ranking softmax
    negatives: int = 256  # uniform negatives per step, shared by all nodes
    hard_negatives: int = 8  # per node: ends of 2-step walks (siblings, grandparents, grandchildren)
    family_weight: float = 0.3  # weight of ranking those 2-step nodes above unrelated ones
    seed: int = 0
    device: str = "auto"

    def validate(self) -> EmbedConfig:
        from hapnet.models import get_model

        get_model(self.model)
        checks = [
            (self.dim >= 1 and self.attention_dim >= 1, "--dim and the attention size must be at least 1"),
            (self.epochs >= 0, "--epochs must be at least 0"),
            (self.levels is None or self.levels >= 1, "--levels must be at least 1"),
            (self.lr > 0 and self.temperature > 0, "lr and temperature must be positive"),
            (self.negatives >= 1 and self.hard_negatives >= 0, "negatives must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise HapnetError(message)
        return self


@dataclass
class Reconstruction:
    """The reconstruction figures of one set of vectors (see the module docstring)."""

    map: float
    mean_rank: float
    nodes: int  # nodes embedded and ranked (root excluded)
    queries: int  # nodes with at least one neighbour: the u's of the protocol
    pairs: int  # (u, neighbour) pairs
    seconds: float
    relation: str = "edges"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        """Write the table in the format named by the suffix (see `hapnet.embedding_io`)."""
        return write_embeddings(self.table, path, force=force)


Callback = Callable[[int, int, float], None]  # (epoch, epochs, loss)


# ============================================================================= relations
@dataclass
class Relations:
    """The true neighbours of every row of an embedding table, as CSR over row indices."""

    offsets: np.ndarray  # int64 [M+1]
    targets: np.ndarray  # int64 [P] row indices, sorted within each row
    kind: str = "edges"  # or "ancestors"

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def sources(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.offsets) - 1), self.counts)

    @property
    def num_pairs(self) -> int:
        return len(self.targets)

    def sample(self, count: int, seed: int = 0) -> Relations:
        """The same relations for `count` random rows only (the others get no neighbour)."""
        rows = np.flatnonzero(self.counts > 0)
        if count >= len(rows):
            return self
        keep = np.zeros(len(self.counts), dtype=bool)
        keep[np.random.default_rng(seed).choice(rows, count, replace=False)] = True
        counts = np.where(keep, self.counts, 0)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        return Relations(offsets, self.targets[np.repeat(keep, self.counts)], self.kind)


def _csr(sources: np.ndarray, targets: np.ndarray, size: int, kind: str) -> Relations:
    keys = np.unique(sources.astype(np.int64) * size + targets)
    sources, targets = keys // size, keys % size
    return Relations(np.concatenate([[0], np.cumsum(np.bincount(sources, minlength=size))]), targets, kind)


def ancestor_pairs(ontology: Ontology) -> tuple[np.ndarray, np.ndarray]:
    """(u, a) for every ancestor a of every node u through the ontology's edges, root excluded."""
    offsets, parents = ontology._parents_csr
    keep = ontology.edge_parent != 0
    node, up = ontology.edge_child[keep], ontology.edge_parent[keep]
    all_nodes, all_ups = [node], [up]
    while len(node):  # one level of ancestors per round: at most depth rounds
        counts = ontology.num_parents[up]
        node = np.repeat(node, counts)
        up = parents[np.repeat(offsets[up] - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())]
        node, up = node[up != 0], up[up != 0]
        all_nodes.append(node)
        all_ups.append(up)
    return np.concatenate(all_nodes), np.concatenate(all_ups)


def relations(ontology: Ontology, nodes: np.ndarray, relation: str = "edges") -> Relations:
    """True neighbours among `nodes` (sorted node indices, root excluded) as rows of `nodes`.

    "edges": parents and children (the ontology's edges, both ways); "ancestors": every ancestor.
    """
    if relation == "edges":
        keep = ontology.edge_parent != 0
        u = np.concatenate([ontology.edge_child[keep], ontology.edge_parent[keep]])
        v = np.concatenate([ontology.edge_parent[keep], ontology.edge_child[keep]])
    elif relation == "ancestors":
        u, v = ancestor_pairs(ontology)
    else:
        raise HapnetError(f"unknown relation {relation!r}; choose from {', '.join(RELATIONS)}")
    row = np.full(len(ontology), -1, dtype=np.int64)
    row[nodes] = np.arange(len(nodes))
    inside = (row[u] >= 0) & (row[v] >= 0)
    return _csr(row[u[inside]], row[v[inside]], len(nodes), relation)


# ============================================================================= reconstruction
def _descending_bits(values: torch.Tensor) -> torch.Tensor:
    """int64 in [0, 2^32) that sort ascending as the float32 `values` sort descending."""
    bits = values.float().contiguous().view(torch.int32).long()
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # monotone in the float's value
    return (2**31 - 1) - ordered


def reconstruction(
    vectors: torch.Tensor | np.ndarray,
    truth: Relations,
    *,
    similarity: str = "cosine",
    block_elements: int = 1 << 24,
) -> Reconstruction:
    """MAP and mean rank of `truth` under cosine similarity (Nickel & Kiela's protocol).

    Rows are compared in blocks of queries against all rows (block x M similarities, never M x M);
    within a block only the similarities at or above the row's weakest true neighbour are kept and
    sorted, so the cost is the matrix product plus a pass over it. Ties count in the neighbour's
    favour. `similarity="poincare"` ranks by Poincaré distance instead (for vectors in the unit
    ball, such as gensim's PoincareModel: the benchmark's comparison).
    """
    if similarity not in SIMILARITIES:
        raise HapnetError(f"unknown similarity {similarity!r}; choose from {', '.join(SIMILARITIES)}")
    start = time.perf_counter()
    x = torch.as_tensor(vectors).float()
    if similarity == "cosine":
        x = F.normalize(x, dim=1)
    else:
        squared = (x * x).sum(1)
        room = (1 - squared).clamp(min=1e-7)  # distance to the ball's boundary
    device = x.device
    m = x.shape[0]
    counts = truth.counts
    queries = np.flatnonzero(counts > 0)
    block = max(1, block_elements // max(m, 1))
    targets = torch.from_numpy(truth.targets).to(device)
    ap_sum = 0.0
    rank_sum = 0.0
    for first in range(0, len(queries), block):
        rows_np = queries[first : first + block]
        rows = torch.from_numpy(rows_np).to(device)
        b = len(rows)
        sims = x.index_select(0, rows) @ x.T
        if similarity == "poincare":  # -(|u-v|^2 / ((1-|u|^2)(1-|v|^2))): same order as -distance
            sims = (2 * sims - squared[rows, None] - squared[None, :]) / (room[rows, None] * room[None, :])
        sims[torch.arange(b, device=device), rows] = -torch.inf  # u itself is not ranked
        # True neighbours of the block's rows, and each row's weakest one.
        row_counts = torch.from_numpy(counts[rows_np]).to(device)
        pos_row = torch.repeat_interleave(torch.arange(b, device=device), row_counts)
        # Rows between two queries have no neighbour: the block's neighbours are one slice.
        pos_col = targets[truth.offsets[rows_np[0]] : truth.offsets[rows_np[-1] + 1]]
        positive = pos_row * m + pos_col  # sorted keys of the block's (row, neighbour) cells
        weakest = torch.full((b,), torch.inf, device=device)
        weakest = weakest.scatter_reduce(0, pos_row, sims[pos_row, pos_col], reduce="amin")
        # Everything at least as similar as the weakest neighbour, sorted (one int64 key) by row,
        # then by similarity, descending, neighbours first among equals.
        r, c = (sims >= weakest[:, None]).nonzero(as_tuple=True)
        is_pos = torch.isin(r * m + c, positive, assume_unique=True).long()
        order = torch.argsort((r << 33) | (_descending_bits(sims[r, c]) << 1) | (1 - is_pos))
        r, is_pos = r[order], is_pos[order]
        per_row = torch.bincount(r, minlength=b)  # every query row has its neighbours in here
        seg_start = torch.cumsum(per_row, 0) - per_row
        place = torch.arange(len(r), device=device) - seg_start[r] + 1  # 1-based place in u's ranking
        upto = torch.cumsum(is_pos, 0)  # neighbours so far, counted from the first row
        upto = upto - (upto - is_pos)[seg_start][r]  # ... from the start of the row
        keep = is_pos.bool()
        i, place = upto[keep].double(), place[keep].double()  # the i-th neighbour sits at `place`
        ap_rows = torch.zeros(b, dtype=torch.float64, device=device).index_add(0, r[keep], i / place)
        ap_sum += (ap_rows / row_counts.double()).sum().item()
        rank_sum += (place - i + 1).sum().item()  # 1 + non-neighbours above
    return Reconstruction(
        map=ap_sum / max(len(queries), 1),
        mean_rank=rank_sum / max(truth.num_pairs, 1),
        nodes=m,
        queries=len(queries),
        pairs=truth.num_pairs,
        seconds=time.perf_counter() - start,
        relation=truth.kind,
    )


# ============================================================================= learning from the structure
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


def _device(name: str) -> torch.device:
    from hapnet.trainer import resolve_device

    return resolve_device(name)


def train_structure(
    ontology: Ontology, config: EmbedConfig, callback: Callback | None = None
) -> tuple[torch.nn.Module, list[float]]:
    """Train an embedder of every node (`config.model`, HAP by default) on the ranking objective.

    The embedder is built exactly as for `hapnet train` (on the ontology truncated to
    `config.levels`); the objective always uses the full ontology's edges.
    """
    from hapnet.models import EmbedderConfig, build_embedder

    device = _device(config.device)
    hierarchy = ontology.truncate(config.levels).compile()
    everything = np.arange(len(ontology))
    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's RNG
        torch.manual_seed(config.seed)
        embedder = build_embedder(
            config.model,
            hierarchy,
            everything,
            EmbedderConfig(dim=config.dim, attention_dim=config.attention_dim),
        ).to(device)
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


# ============================================================================= the entry points
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
    from_run: str | Path | None = None,
    evaluate: bool = True,
    callback: Callback | None = None,
    config: EmbedConfig | None = None,
) -> EmbedResult:
    """Embeddings of every code and category node of an ontology, and their reconstruction figures.

    Without `from_run`: learned from the structure alone (see `train_structure`; settings given
    here override `config`). With `from_run`: the final embeddings of a trained run's observable
    codes and of their category nodes, no retraining (`source` must be the run's ontology).
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
        ontology, nodes, vectors, settings = _from_run(Path(from_run), ontology, device or "cpu")
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
    run_dir: Path, ontology: Ontology, device: str
) -> tuple[Ontology, np.ndarray, torch.Tensor, dict[str, Any]]:
    """(ontology the run used, exported nodes, their final embeddings, settings) of a run folder."""
    from hapnet.models import get_model
    from hapnet.runs import load

    run = load(run_dir, device=str(_device(device)))
    if run.ontology.ids != ontology.ids:
        raise HapnetError(
            f"{run_dir}: trained on ontology {run.config.ontology!r}, not on "
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
        "from_run": str(run_dir),
        "model": run.config.model,
        "dim": run.config.dim,
        "levels": run.config.levels,
        "observable_codes": len(codes),
    }
    return run.ontology, nodes, vectors, settings


def _lookup(table: EmbeddingTable, code: str, source: str) -> int:
    """Row of `code`: as written, normalised (`038.9` -> `0389`), spaces as `_`, or any case."""
    from hapnet.codes import normalize_code

    index = table.index()
    for candidate in (code, code.strip(), normalize_code(code), "_".join(code.split())):
        if candidate in index:
            return index[candidate]
    folded = {c.casefold(): i for c, i in index.items()}
    if code.strip().casefold() in folded:
        return folded[code.strip().casefold()]
    raise HapnetError(f"{source}: unknown code {code!r} (not among its {len(table):,} codes)")


def neighbors(
    embeddings: EmbeddingTable | EmbedResult | str | Path, code: str, k: int = 10
) -> tuple[pd.Series, pd.DataFrame]:
    """The `k` codes nearest to `code` by cosine similarity: (the code's own row, the neighbours).

    `embeddings` is a table, an `embed` result, or a file in any format `hapnet embed` writes.
    Each frame row: rank, code, description, level, similarity.
    """
    if k < 1:
        raise HapnetError(f"-k must be at least 1, got {k}")
    source = "embeddings"
    if isinstance(embeddings, EmbedResult):
        table = embeddings.table
    elif isinstance(embeddings, EmbeddingTable):
        table = embeddings
    else:
        source = str(embeddings)
        table = read_embeddings(embeddings)
    row = _lookup(table, code, source)
    x = F.normalize(torch.from_numpy(table.vectors), dim=1)
    sims = x @ x[row]
    sims[row] = -torch.inf
    best = torch.topk(sims, min(k, len(table) - 1)).indices.numpy()
    levels = table.levels if table.levels is not None else np.full(len(table), -1)

    def rows(indices: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "code": [table.codes[i] for i in indices],
                "description": [table.descriptions[i] for i in indices],
                "level": levels[indices],
                "similarity": sims[indices].numpy().astype(np.float64) if len(indices) else [],
            }
        )

    frame = rows(best)
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    query = pd.Series(
        {"code": table.codes[row], "description": table.descriptions[row], "level": levels[row]}
    )
    return query, frame
