"""`train(...)`: data, split, model, training loop, model selection and the run folder.

Follows algorithms.md: patients split 70/10/20 by the seed, accuracy@k overall and by four
frequency groups, test metrics read at the epoch with the lowest validation loss.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hapnet.allocator import keep_freed_memory
from hapnet.config import TrainConfig, make_config
from hapnet.errors import HapnetError
from hapnet.metrics import AccuracyAtK, frequency_groups
from hapnet.models import get_model
from hapnet.ontology import Ontology
from hapnet.ontology_io import load_ontology
from hapnet.optim import Adadelta, make_adam
from hapnet.predictor import DIAGNOSIS, BatchBuilder, NextVisitModel, next_visit_loss
from hapnet.visits import VisitData, load_visits

SPLIT = {"test": 0.2, "valid": 0.1}  # the rest trains


# ----------------------------------------------------------------------------- data
@dataclass
class Split:
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def split_patients(num_patients: int, seed: int) -> Split:
    """Random 70/10/20 split of patient indices with the run's seed."""
    order = np.random.default_rng(seed).permutation(num_patients)
    num_test = int(round(SPLIT["test"] * num_patients))
    num_valid = int(round(SPLIT["valid"] * num_patients))
    return Split(
        train=np.sort(order[num_test + num_valid :]),
        valid=np.sort(order[num_test : num_test + num_valid]),
        test=np.sort(order[:num_test]),
    )


def target_counts(
    data: VisitData, patients: np.ndarray, code_to_class: np.ndarray, num_codes: int
) -> np.ndarray:
    """How often each class is a prediction target (every visit but a patient's first)."""
    starts = data.patient_offsets[patients] + 1
    ends = data.patient_offsets[patients + 1]
    lengths = ends - starts
    from hapnet.predictor import _gather_ranges

    visits = _gather_ranges(starts, lengths)
    code_idx = _gather_ranges(data.visit_offsets[visits], np.diff(data.visit_offsets)[visits])
    return np.bincount(code_to_class[data.codes[code_idx]], minlength=num_codes)


def default_data_path(ontology_source: str, patients: int, seed: int = 0) -> Path:
    """The built-in synthetic data set, generated once into the cache folder."""
    from hapnet.ontology_io import cache_dir
    from hapnet.synth import GENERATOR_VERSION, write_synth

    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(ontology_source).name)
    # The generator version is in the name: a newer hapnet never trains on an older cached set.
    path = cache_dir() / f"synth-v{GENERATOR_VERSION}-{safe}-{patients}-seed{seed}"
    if not path.exists():
        write_synth(path, ontology=ontology_source, patients=patients, seed=seed)
    return path


def load_training_data(config: TrainConfig) -> tuple[Ontology, VisitData]:
    ontology = load_ontology(config.ontology)
    path = config.data or default_data_path(config.ontology, config.synth_patients)
    data = load_visits(path, ontology, columns=config.columns, unknown=config.unknown)
    if len(data.patient_ids) < 10:
        raise HapnetError(
            f"{path}: only {len(data.patient_ids)} patients with 2+ visits; at least 10 are needed to split"
        )
    return ontology, data


# ----------------------------------------------------------------------------- model
@dataclass
class Vocabulary:
    """The observable codes: class index <-> ontology node index."""

    nodes: np.ndarray  # [C] node index of each class
    code_to_class: np.ndarray  # [num_nodes] class index, -1 for nodes that are not observable

    @classmethod
    def from_nodes(cls, nodes: np.ndarray, num_nodes: int) -> Vocabulary:
        nodes = np.asarray(nodes, dtype=np.int64)
        code_to_class = np.full(num_nodes, -1, dtype=np.int64)
        code_to_class[nodes] = np.arange(len(nodes))
        return cls(nodes, code_to_class)

    def __len__(self) -> int:
        return len(self.nodes)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HapnetError("--device cuda: no CUDA GPU is available here (use --device cpu or auto)")
    return torch.device(name)


def model_ontology(config: TrainConfig, ontology: Ontology, vocab: Vocabulary) -> Ontology:
    """The ontology a model of `config` runs on: truncated to `levels`, and with scope "observed"
    pruned to the observable codes and their ancestors."""
    used = ontology.truncate(config.levels)
    return used.prune(vocab.nodes) if config.ontology_scope == "observed" else used


def build_model(config: TrainConfig, ontology: Ontology, vocab: Vocabulary) -> NextVisitModel:
    """The registry's embedder for `config.model` on the model's ontology + the visit GRU.
    With scope "observed" only the nodes in use get a base embedding (a smaller table)."""
    from hapnet.models import EmbedderConfig

    spec = get_model(config.model)
    hierarchy = model_ontology(config, ontology, vocab).compile()
    embedder_config = EmbedderConfig(
        dim=config.dim,
        attention_dim=config.attention_dim,
        base_nodes="used" if config.ontology_scope == "observed" else "all",
    )
    embedder = spec.embedder(hierarchy, vocab.nodes, embedder_config)
    return NextVisitModel(embedder, len(vocab), config.dim, config.hidden, config.dropout)


def glove_init(model: NextVisitModel, config: TrainConfig, data: VisitData, train: np.ndarray) -> None:
    """GloVe on the training visits: codes only (RNN+/Rollup+) or codes and ancestors (HAP/GRAM)."""
    from hapnet.glove import cooccurrence
    from hapnet.hierarchy import ancestor_sets

    spec = get_model(config.model)
    ontology = data.ontology.truncate(config.levels)
    if spec.glove_scope == "ancestors":
        ancestors = ancestor_sets(ontology)
    elif spec.glove_scope == "parents":  # Rollup+: the parent rows are the ones Rollup uses
        ancestors = [frozenset(ontology.parents(i).tolist()) for i in range(len(ontology))]
    else:
        ancestors = None
    subset = data.subset(train)
    cooc = cooccurrence(subset.visit_offsets, subset.codes, len(ontology), ancestors)
    model.embedder.init_base(cached_glove(cooc, config.dim, config.glove_epochs, config.seed))


def cached_glove(cooc: Any, dim: int, epochs: int, seed: int) -> torch.Tensor:
    """GloVe vectors of a co-occurrence matrix, cached by its content and the settings.

    HAP and GRAM at the same levels (or a re-run, or a resumed sweep) share one GloVe: in a paper
    reproduction it is most of the time spent before the first epoch.
    """
    import hashlib

    import scipy.sparse as sp

    from hapnet.glove import train_glove
    from hapnet.ontology_io import cache_dir
    from hapnet.textio import atomic_path

    coo = sp.coo_matrix(cooc)
    digest = hashlib.sha256(f"glove-v1 {coo.shape} {dim} {epochs} {seed}".encode())
    for part in (coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data.astype(np.float64)):
        digest.update(part.tobytes())
    path = cache_dir() / "glove" / f"{digest.hexdigest()[:32]}.npy"
    if path.exists():
        try:
            return torch.from_numpy(np.load(path))
        except (OSError, ValueError):  # a damaged cache file: compute again
            pass
    vectors = train_glove(cooc, dim, epochs=epochs, seed=seed)
    try:
        with atomic_path(path, overwrite=True) as tmp, open(tmp, "wb") as handle:
            np.save(handle, vectors.numpy())
    except OSError:  # a read-only cache folder only costs the next run the time
        pass
    return vectors


def make_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "adadelta":  # the paper's (Theano defaults: rho 0.95, eps 1e-6)
        return Adadelta(params, lr=config.lr, rho=0.95, eps=1e-6, weight_decay=config.weight_decay)
    return make_adam(
        params, decoupled=config.optimizer == "adamw", lr=config.lr, weight_decay=config.weight_decay
    )


# ----------------------------------------------------------------------------- loop
@dataclass
class Evaluation:
    loss: float
    accuracy: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, **self.accuracy}


@torch.no_grad()
def evaluate_patients(
    model: NextVisitModel,
    builder: BatchBuilder,
    patients: np.ndarray,
    groups: np.ndarray,
    config: TrainConfig,
    device: torch.device,
) -> Evaluation:
    """Loss (mean over patients) and accuracy@k of next-visit prediction for these patients."""
    model.eval()
    g = model.code_embeddings()
    meter = AccuracyAtK(config.k, groups)
    total, count = 0.0, 0
    for start in range(0, len(patients), config.batch_size):
        batch = builder.build(patients[start : start + config.batch_size]).to(device)
        logits = model(batch, g)[DIAGNOSIS]
        total += next_visit_loss(logits, batch, config.loss).item() * batch.num_patients
        count += batch.num_patients
        meter.update(logits, batch.targets(logits.shape[1]))
    return Evaluation(total / max(count, 1), meter.result())


class TrainCallbacks:
    """Hooks for progress display; the library itself prints nothing."""

    def on_data(self, data: VisitData, split: Split, vocab: Vocabulary) -> None: ...

    def on_epoch_start(self, epoch: int, num_batches: int) -> None: ...

    def on_batch(self, epoch: int, batch_index: int, loss: float) -> None: ...

    def on_epoch_end(self, record: dict[str, Any], is_best: bool) -> None: ...


@dataclass
class TrainResult:
    """What `train` returns and `hapnet train` prints."""

    run_dir: Path | None
    config: TrainConfig
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    data_report: Any = None
    model: NextVisitModel | None = field(default=None, repr=False)


class TrainingDiverged(HapnetError):
    """The loss became NaN or infinite; the run folder keeps the last good epoch's checkpoint."""


def train(
    config: TrainConfig | None = None,
    *,
    out: str | Path | None = None,
    force: bool = False,
    callbacks: TrainCallbacks | None = None,
    resume: str | Path | None = None,
    **settings: Any,
) -> TrainResult:
    """Train one model and write its run folder (unless out is None and settings say nothing).

    `hapnet.train(model="gram", levels=3, epochs=5, out="runs/gram")` or with a TrainConfig.
    `hapnet.train(resume="runs/gram")` continues an interrupted run (see `resume`).
    """
    from hapnet.runs import RunWriter

    if resume is not None:
        if config is not None or out is not None or settings:
            raise HapnetError("resume: the run continues with its saved settings; give no other settings")
        return _resume_run(resume, force=force, callbacks=callbacks)
    config = config if config is not None else make_config(**settings)
    config.validate()
    writer = RunWriter.start(out, config, force=force) if out is not None else None
    return _run(config, writer, callbacks or TrainCallbacks(), None)


def resume(
    run_dir: str | Path, *, force: bool = False, callbacks: TrainCallbacks | None = None
) -> TrainResult:
    """Continue a run that was interrupted (killed, Ctrl-C, diverged) from its last epoch checkpoint.

    `run_dir` is the run's final name or its `.NAME.partial` folder. The run continues with its
    saved configuration and ends with exactly the metrics an uninterrupted run gets.
    """
    from hapnet.runs import RunWriter

    writer = RunWriter.reopen(run_dir, force=force)
    config = writer.saved_config().validate()
    state = writer.load_resume_state()
    return _run(config, writer, callbacks or TrainCallbacks(), state)


_resume_run = resume  # `train`'s parameter `resume` hides the function


def _run(
    config: TrainConfig, writer: Any, callbacks: TrainCallbacks, state: dict[str, Any] | None
) -> TrainResult:
    """`_fit` inside the run folder's life cycle: renamed into place when complete.

    On failure the partial folder is removed, unless it holds an epoch checkpoint: then it stays,
    so that the run can be inspected and resumed.
    """
    try:
        result = _fit(config, callbacks, writer, state)
        if writer is not None:
            result.run_dir = writer.finish()
        return result
    except BaseException:
        if writer is not None and not writer.has_resume_state():
            writer.abandon()
        raise


def _fit(
    config: TrainConfig, callbacks: TrainCallbacks, writer: Any, state: dict[str, Any] | None = None
) -> TrainResult:
    from hapnet.runs import data_fingerprint, rng_states, set_rng_states

    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    if device.type == "cpu":
        keep_freed_memory()  # the same large tensors are freed and taken again every step
    ontology, data = load_training_data(config)
    fingerprint = data_fingerprint(data)
    if writer is not None and state is None:
        writer.save_data_fingerprint(fingerprint)
    elif writer is not None:  # other data would continue with another split and vocabulary
        writer.check_data_fingerprint(fingerprint)
    split = split_patients(len(data.patient_ids), config.seed)
    vocab = Vocabulary.from_nodes(np.unique(data.codes), len(ontology))
    counts = target_counts(data, split.train, vocab.code_to_class, len(vocab))
    groups = frequency_groups(counts)
    callbacks.on_data(data, split, vocab)

    model = build_model(config, ontology, vocab)
    if config.pretrain == "glove" and state is None:  # a resumed run loads its trained weights
        glove_init(model, config, data, split.train)
    model.to(device)
    optimizer = make_optimizer(config, model)
    builder = BatchBuilder(data, vocab.code_to_class)

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"valid_loss": float("inf")}
    first_epoch = 1
    if state is None:
        if writer is not None:
            writer.save_vocabulary(ontology, vocab, counts, groups)
    else:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            history, best = list(state["history"]), dict(state["best"])
            first_epoch = int(state["epoch"]) + 1
            set_rng_states(state["rng"])
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            source = writer.work if writer is not None else "resume state"
            raise HapnetError(f"{source}: the checkpoint does not match this run's model ({exc})") from None
        if len(history) != first_epoch - 1 or best.get("epoch") is None:
            raise HapnetError(f"{writer.work}: inconsistent checkpoint (epoch {first_epoch - 1})")
        writer.save_history(history)  # a kill may have come between the checkpoint and history.csv

    for epoch in range(first_epoch, config.epochs + 1):
        model.train()
        order = np.random.default_rng([config.seed, epoch]).permutation(split.train)
        batches = range(0, len(order), config.batch_size)
        callbacks.on_epoch_start(epoch, len(batches))
        started = time.perf_counter()
        train_loss, seen = 0.0, 0
        for index, start in enumerate(batches):
            batch = builder.build(order[start : start + config.batch_size]).to(device)
            loss = next_visit_loss(model(batch)[DIAGNOSIS], batch, config.loss)
            if not torch.isfinite(loss):
                raise _diverged(loss.item(), epoch, index + 1, writer)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            train_loss += loss.item() * batch.num_patients
            seen += batch.num_patients
            callbacks.on_batch(epoch, index, loss.item())
        seconds = time.perf_counter() - started
        valid = evaluate_patients(model, builder, split.valid, groups, config, device)
        test = evaluate_patients(model, builder, split.test, groups, config, device)
        record = {
            "epoch": epoch,
            "train_loss": train_loss / max(seen, 1),
            "valid_loss": valid.loss,
            "valid_accuracy": valid.accuracy["accuracy"],
            "test_loss": test.loss,
            "test_accuracy": test.accuracy["accuracy"],
            "seconds": seconds,
        }
        history.append(record)
        is_best = valid.loss < best["valid_loss"]
        if is_best:
            best = {
                "valid_loss": valid.loss,
                "epoch": epoch,
                "valid": valid.as_dict(),
                "test": test.as_dict(),
            }
            best["state"] = copy.deepcopy(model.state_dict())
        if writer is not None:
            # Checkpoint first: a kill after it and before history.csv loses nothing.
            writer.save_resume_state(
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": rng_states(),
                    "history": history,
                    "best": best,
                }
            )
            writer.save_history(history)
        callbacks.on_epoch_end(record, is_best)

    if "state" not in best:  # every validation loss was NaN: keep the last epoch
        raise HapnetError("no epoch had a finite validation loss; nothing to select (try a lower --lr)")
    model.load_state_dict(best["state"])
    metrics = {
        "model": config.model,
        "levels": config.levels,
        "pretrain": config.pretrain,
        "k": config.k,
        "seed": config.seed,
        "best_epoch": best["epoch"],
        "epochs": config.epochs,
        "train_seconds_per_epoch": [r["seconds"] for r in history],
        "test": best["test"],
        "valid": best["valid"],
        "split": {"train": len(split.train), "valid": len(split.valid), "test": len(split.test)},
        "codes": len(vocab),
        "device": str(device),
        "data_fingerprint": fingerprint,  # which data the run used (sha256 of the loaded arrays)
    }
    if writer is not None:
        writer.save_model(model, metrics)
    return TrainResult(None, config, metrics, history, data.report, model)


def _diverged(value: float, epoch: int, step: int, writer: Any) -> TrainingDiverged:
    message = f"training diverged: loss is {value} at epoch {epoch}, step {step}"
    if writer is not None and writer.has_resume_state():
        message += (
            f"; {writer.work} keeps the checkpoint of epoch {epoch - 1} to inspect, or to continue with "
            f"`hapnet train --resume {writer.target}` (the same settings will likely diverge again)"
        )
    elif writer is not None:
        message += "; no epoch completed, so nothing was kept (try a lower --lr)"
    return TrainingDiverged(message)
