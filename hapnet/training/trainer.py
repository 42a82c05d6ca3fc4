"""`train(...)`: data, split, model, training loop, model selection and the run folder.

Follows docs/algorithms.md: patients split 70/10/20 by the seed, accuracy@k overall and by four
frequency groups, test metrics read at the epoch with the lowest validation loss.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hapnet.data.batches import BatchBuilder
from hapnet.data.splits import Split
from hapnet.data.vocabulary import Vocabulary
from hapnet.errors import HapnetError
from hapnet.models.predictor import NextVisitModel
from hapnet.training.config import TrainConfig, make_config
from hapnet.training.distributed import (
    SINGLE,
    DistributedStep,
    Process,
    broadcast_module,
    epoch_seed,
    from_main,
    joined,
)
from hapnet.training.evaluation import Evaluation, evaluate_patients
from hapnet.training.metrics import frequency_groups
from hapnet.training.naming import group_names
from hapnet.training.optim import make_optimizer
from hapnet.training.progress import EpochProgress, TrainCallbacks
from hapnet.training.run_data import (
    RunData,
    all_patient_ids,
    load_run_data,
    run_cooccurrence,
    run_split,
    run_vocabulary,
    summed_target_counts,
)
from hapnet.training.runs import RunWriter, rng_states, set_rng_states
from hapnet.training.setup import batch_builder, build_model, glove_init
from hapnet.training.step import TrainingStep


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
    config: TrainConfig | str | Path | None = None,
    *,
    out: str | Path | None = None,
    force: bool = False,
    callbacks: TrainCallbacks | None = None,
    quiet: bool = False,
    resume: str | Path | None = None,
    **settings: Any,
) -> TrainResult:
    """Train one model and write its run folder (unless out is None).

    `hapnet.train(model="gram", levels=3, epochs=5, out="runs/gram")`, with a TrainConfig, or with
    a settings file (TOML, YAML, JSON; a run's config.json) that the keywords override:
    `hapnet.train("best_config.json", epochs=5)`.
    `hapnet.train(resume="runs/gram")` continues an interrupted run (see `resume`). Progress (a
    line per epoch) goes to stderr unless `quiet=True` or `callbacks` are given. Several seeds:
    `hapnet.train_seeds`.
    """
    if resume is not None:
        if config is not None or out is not None or settings:
            raise HapnetError("resume: the run continues with its saved settings; give no other settings")
        return _resume_run(resume, force=force, callbacks=callbacks, quiet=quiet)
    if config is None or isinstance(config, (str, Path)):
        config = make_config(config_file=config, **settings)
    elif settings:
        raise HapnetError(
            f"train: give settings in the TrainConfig or as keywords, not both ({', '.join(settings)})"
        )
    config.validate()
    with joined() as process:  # a distributed run under torchrun (docs/scaling.md), else one process
        writer = None  # rank 0 alone writes the run folder
        if out is not None:
            writer = from_main(process, lambda: RunWriter.start(out, config, force=force), share=False)
        return _run(config, writer, _callbacks(callbacks, quiet, process), None, process)


def resume(
    run_dir: str | Path, *, force: bool = False, callbacks: TrainCallbacks | None = None, quiet: bool = False
) -> TrainResult:
    """Continue a run that was interrupted (killed, Ctrl-C, diverged) from its last epoch checkpoint.

    `run_dir` is the run's final name or its `.NAME.partial` folder. The run continues with its
    saved configuration and ends with exactly the metrics an uninterrupted run gets.
    """
    with joined() as process:  # rank 0 reads the run folder; every rank restores the same state
        writer = from_main(process, lambda: RunWriter.reopen(run_dir, force=force), share=False)
        config, state = from_main(
            process,
            lambda: (writer.saved_config().validate(), writer.load_resume_state()),  # type: ignore[union-attr]
        )  # type: ignore[misc]
        return _run(config, writer, _callbacks(callbacks, quiet, process), state, process)


def _callbacks(callbacks: TrainCallbacks | None, quiet: bool, process: Process = SINGLE) -> TrainCallbacks:
    if not process.is_main:  # rank 0 alone shows progress
        return TrainCallbacks()
    if callbacks is not None:
        return callbacks
    return TrainCallbacks() if quiet else EpochProgress()


_resume_run = resume  # `train`'s parameter `resume` hides the function


def _run(
    config: TrainConfig,
    writer: RunWriter | None,
    callbacks: TrainCallbacks,
    state: dict[str, Any] | None,
    process: Process = SINGLE,
) -> TrainResult:
    """`_fit` inside the run folder's life cycle: renamed into place when complete.

    On failure the partial folder is removed, unless it holds an epoch checkpoint: then it stays,
    so that the run can be inspected and resumed.
    """
    try:
        result = _fit(config, callbacks, writer, state, process)
        if writer is not None:
            result.run_dir = writer.finish()
        return result
    except BaseException:
        if writer is not None and not writer.has_resume_state():
            writer.abandon()
        raise


# ----------------------------------------------------------------------------- one run
@dataclass
class _Session:
    """Everything a run trains with, built from its config and data."""

    config: TrainConfig
    device: torch.device
    data: RunData  # this rank's patients (all of them in one process)
    split: Split  # positions in the whole data
    vocab: Vocabulary
    groups: np.ndarray  # frequency group of each class
    model: NextVisitModel
    optimizer: torch.optim.Optimizer
    builder: BatchBuilder
    step: TrainingStep
    process: Process = SINGLE  # this rank of a distributed run


@dataclass
class _Progress:
    """Where training stands: the epochs done and the best one so far (with its weights)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"valid_loss": float("inf")})

    @property
    def next_epoch(self) -> int:
        return len(self.history) + 1


def _prepare(
    config: TrainConfig,
    writer: RunWriter | None,
    fresh: bool,
    callbacks: TrainCallbacks,
    process: Process = SINGLE,
) -> _Session:
    """Data, split, vocabulary, model (GloVe-initialised for a fresh run) and optimiser.

    In a distributed run every rank loads its shard of the patients and builds the same model;
    the split, vocabulary, frequency groups and GloVe are those of the whole data
    (`hapnet.training.run_data`), and rank 0's weights are broadcast."""
    torch.manual_seed(config.seed)
    device = process.device(config.device)
    ontology, data = load_run_data(config, process)
    if writer is not None and fresh:
        writer.save_data_fingerprint(data.fingerprint)
    elif not fresh:  # other data would continue with another split and vocabulary
        from_main(process, lambda: writer.check_data_fingerprint(data.fingerprint, data.matches), share=False)  # type: ignore[union-attr]
    split = run_split(data, config)
    vocab = run_vocabulary(data, ontology)
    counts = summed_target_counts(data, split.train, vocab)
    groups = frequency_groups(counts)
    if fresh:
        valid_counts = summed_target_counts(data, split.valid, vocab)
        if process.is_main:
            warn_small_valid_split(data.num_patients, split, valid_counts, groups)
    callbacks.on_data(data, split, vocab)
    model = build_model(config, ontology, vocab)
    if config.pretrain == "glove" and fresh:  # a resumed run loads its trained weights
        cooc = run_cooccurrence(data, config, split.train)  # on rank 0: the whole data's
        if cooc is not None:
            glove_init(model, config, cooc)
    model.to(device)
    broadcast_module(model, process)  # every rank starts from rank 0's weights
    optimizer = make_optimizer(config, model)
    if fresh:
        patient_ids = all_patient_ids(data)  # rank 0 alone writes split.csv
        if writer is not None:
            writer.save_vocabulary(ontology, vocab, counts, groups)
            writer.save_inputs(ontology, patient_ids, split)  # type: ignore[arg-type]
    return _Session(
        config=config,
        device=device,
        data=data,
        split=split,
        vocab=vocab,
        groups=groups,
        model=model,
        optimizer=optimizer,
        builder=batch_builder(config, data.data, vocab),
        step=(
            DistributedStep(model, optimizer, config.loss, process, compile=config.compile)
            if process.distributed
            else TrainingStep(model, optimizer, config.loss, compile=config.compile)
        ),
        process=process,
    )


def _restore(session: _Session, state: dict[str, Any], writer: RunWriter | None) -> _Progress:
    """Model, optimiser, RNG states and progress from a resume checkpoint (every rank of a
    distributed run gets rank 0's; `writer` is rank 0's alone)."""
    where = writer.work if writer is not None else "the resume checkpoint"
    try:
        session.model.load_state_dict(state["model"])
        session.optimizer.load_state_dict(state["optimizer"])
        progress = _Progress(list(state["history"]), dict(state["best"]))
        epoch = int(state["epoch"])
        set_rng_states(state["rng"])
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise HapnetError(f"{where}: the checkpoint does not match this run's model ({exc})") from None
    if len(progress.history) != epoch or progress.best.get("epoch") is None:
        raise HapnetError(f"{where}: inconsistent checkpoint (epoch {epoch})")
    saved_world = int(state.get("world_size", 1))
    if saved_world != session.process.world_size and session.process.is_main:
        warnings.warn(
            f"this run trained its first {epoch} epoch(s) on {saved_world} process(es) and continues on "
            f"{session.process.world_size}: its dropout masks differ from an uninterrupted run's "
            "(resume with the same number of processes to get the same metrics)",
            stacklevel=4,
        )
    if writer is not None:  # a kill may have come between the checkpoint and history.csv
        writer.save_history(progress.history)
    return progress


def _train_epoch(
    session: _Session, epoch: int, callbacks: TrainCallbacks, writer: RunWriter | None
) -> tuple[float, float]:
    """One pass over the training patients in this epoch's order: (mean loss per patient, seconds)."""
    config, process = session.config, session.process
    session.model.train()
    if process.distributed:  # dropout masks of (seed, rank, epoch): the same run, resumed or not
        torch.manual_seed(epoch_seed(config.seed, process.rank, epoch))
    order = np.random.default_rng([config.seed, epoch]).permutation(session.split.train)
    batches = range(0, len(order), config.batch_size)
    callbacks.on_epoch_start(epoch, len(batches))
    started = time.perf_counter()
    total, seen = 0.0, 0
    for index, start in enumerate(batches):
        patients = order[start : start + config.batch_size]
        loss = _step(session, patients)
        if not torch.isfinite(loss):
            raise _diverged(loss.item(), epoch, index + 1, writer)
        total += loss.item() * len(patients)
        seen += len(patients)
        callbacks.on_batch(epoch, index, loss.item())
    return total / max(seen, 1), time.perf_counter() - started


def _step(session: _Session, patients: np.ndarray) -> torch.Tensor:
    """One training step on a batch of patients: the batch's mean diagnosis loss. A rank of a
    distributed run computes its slice of the batch, weighted by the slice's share of patients."""
    if not session.process.distributed:
        return session.step(session.builder.build(patients).to(session.device))
    mine = session.data.local(patients)  # the batch's patients this rank holds
    batch = session.builder.build(mine).to(session.device) if len(mine) else None
    return session.step(batch, len(mine) / len(patients))  # type: ignore[call-arg]


def _evaluate(session: _Session, patients: np.ndarray, full: bool = False) -> Evaluation:
    return evaluate_patients(
        session.model,
        session.builder,
        session.data.local(patients),
        session.groups,
        session.config,
        session.device,
        full=full,
        process=session.process,  # each rank scores the patients it holds, the counts are summed
    )


def _checkpoint(session: _Session, progress: _Progress, writer: RunWriter) -> None:
    # Checkpoint first: a kill after it and before history.csv loses nothing.
    writer.save_resume_state(
        {
            "epoch": len(progress.history),
            "model": session.model.state_dict(),
            "optimizer": session.optimizer.state_dict(),
            "rng": rng_states(),
            "history": progress.history,
            "best": progress.best,
            "world_size": session.process.world_size,  # dropout masks depend on it (epoch_seed)
        }
    )
    writer.save_history(progress.history)


def _fit(
    config: TrainConfig,
    callbacks: TrainCallbacks,
    writer: RunWriter | None,
    state: dict[str, Any] | None = None,
    process: Process = SINGLE,
) -> TrainResult:
    session = _prepare(config, writer, state is None, callbacks, process)
    progress = _Progress() if state is None else _restore(session, state, writer)  # type: ignore[arg-type]
    for epoch in range(progress.next_epoch, config.epochs + 1):
        if _patience_ran_out(config, progress):
            break
        train_loss, seconds = _train_epoch(session, epoch, callbacks, writer)
        valid, test = _evaluate(session, session.split.valid), _evaluate(session, session.split.test)
        if not np.isfinite(valid.loss):  # weights gone to inf/NaN: never checkpoint them
            raise _diverged(valid.loss, epoch, None, writer)
        record = {
            "epoch": epoch,
            "train_loss": train_loss,
            "valid_loss": valid.loss,
            "valid_accuracy": valid.accuracy["accuracy"],
            "test_loss": test.loss,
            "test_accuracy": test.accuracy["accuracy"],
            "seconds": seconds,
            **_task_weights(session.model),
        }
        progress.history.append(record)
        is_best = valid.loss < progress.best["valid_loss"]
        if is_best:
            progress.best = {
                "valid_loss": valid.loss,
                "epoch": epoch,
                "valid": valid.as_dict(),
                "test": test.as_dict(),
                "state": copy.deepcopy(session.model.state_dict()),
            }
        if writer is not None:
            _checkpoint(session, progress, writer)
        callbacks.on_epoch_end(record, is_best)

    if "state" not in progress.best:  # every validation loss was NaN
        raise HapnetError("no epoch had a finite validation loss; nothing to select (try a lower --lr)")
    session.model.load_state_dict(progress.best["state"])
    metrics = _final_metrics(session, progress)
    if writer is not None:
        writer.save_model(session.model, metrics)
    return TrainResult(None, config, metrics, progress.history, session.data.report, session.model)


MIN_VALID_PATIENTS = 50  # fewer: the validation loss that picks the epoch is mostly noise


def warn_small_valid_split(
    num_patients: int, split: Split, valid_counts: np.ndarray, groups: np.ndarray
) -> None:
    """Warn when the validation split is too small to select a model: few patients, or a
    frequency group with no target in it (its accuracy cannot be read there). `valid_counts`:
    how often each class is a target in the validation split."""
    if len(split.valid) < MIN_VALID_PATIENTS:
        warnings.warn(
            f"the validation split has {len(split.valid)} patients (of {num_patients}): too few "
            f"to select an epoch reliably (at least {MIN_VALID_PATIENTS} advised); treat the scores as "
            "indicative only",
            stacklevel=3,
        )
    per_group = np.bincount(groups, weights=valid_counts, minlength=len(group_names()))
    empty = [name for name, n in zip(group_names(), per_group, strict=True) if n == 0]
    if empty:
        warnings.warn(
            f"the validation split has no target code in frequency group {', '.join(empty)}: "
            "its accuracy there is undefined (shown as –)",
            stacklevel=3,
        )


def _patience_ran_out(config: TrainConfig, progress: _Progress) -> bool:
    """Early stopping: `patience` epochs in a row without a lower validation loss than the best."""
    if config.patience == 0 or not progress.history:
        return False
    return len(progress.history) - progress.best.get("epoch", 0) >= config.patience


def _task_weights(model: NextVisitModel) -> dict[str, float]:
    """The learned weight exp(-s_t) of every task, for the history (none without learned weights)."""
    if model.task_log_vars is None:
        return {}
    weights = torch.exp(-model.task_log_vars.detach()).cpu().tolist()
    return {f"weight_{name}": w for name, w in zip(model.tasks, weights, strict=True)}


def _final_metrics(session: _Session, progress: _Progress) -> dict[str, Any]:
    """metrics.json: every score of the best epoch's state (which the model holds again).

    The AUCs need every visit's scores, too costly each epoch: the best state is evaluated once more
    on valid and test with all scores (`full`). That pass repeats the epoch's own evaluation, so its
    accuracy and loss are exactly the ones history.csv recorded for that epoch (a test holds them).
    """
    config, best, split = session.config, progress.best, session.split
    return {
        "model": config.model,
        "levels": config.levels,
        "pretrain": config.pretrain,
        "k": config.k,
        "seed": config.seed,
        "best_epoch": best["epoch"],
        "epochs": config.epochs,
        "epochs_run": len(progress.history),
        "stopped_early": len(progress.history) < config.epochs,
        "train_seconds_per_epoch": [r["seconds"] for r in progress.history],
        "test": _evaluate(session, split.test, full=True).as_dict(),
        "valid": _evaluate(session, split.valid, full=True).as_dict(),
        "split": {"train": len(split.train), "valid": len(split.valid), "test": len(split.test)},
        "codes": len(session.vocab),
        "device": str(session.device),
        "data_fingerprint": session.data.fingerprint,  # which data the run used (hapnet.data.fingerprint)
    }


def _diverged(value: float, epoch: int, step: int | None, writer: RunWriter | None) -> TrainingDiverged:
    where = f"step {step}" if step is not None else "validation"
    message = f"training diverged: loss is {value} at epoch {epoch}, {where}"
    if writer is not None and writer.has_resume_state():
        message += (
            f"; {writer.work} keeps the checkpoint of epoch {epoch - 1} to inspect, or to continue with "
            f"`hapnet train --resume {writer.target}` (the same settings will likely diverge again)"
        )
    elif writer is not None:
        message += "; no epoch completed, so nothing was kept (try a lower --lr)"
    return TrainingDiverged(message)
