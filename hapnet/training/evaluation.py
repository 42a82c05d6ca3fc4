"""Scoring next-visit prediction: `evaluate_patients` (the loss and accuracy@k of a model on some
patients, what every epoch reports) and `evaluate(run_dir, data=None, k=None)` (a saved run on its
test split or on other data)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hapnet.data.batches import BatchBuilder
from hapnet.data.loaders import load_visits
from hapnet.data.splits import split_patients
from hapnet.data.visits import VisitData
from hapnet.errors import HapnetError
from hapnet.models.losses import next_visit_loss
from hapnet.models.predictor import DIAGNOSIS, NextVisitModel
from hapnet.training.config import TrainConfig
from hapnet.training.metrics import AccuracyAtK
from hapnet.training.runs import load
from hapnet.training.setup import batch_builder, load_training_data
from hapnet.utils.arrays import range_owners
from hapnet.utils.device import resolve_device

AUX_K = 5  # an auxiliary task (a level's categories) is scored by accuracy@5: a level has few classes


@dataclass
class Evaluation:
    loss: float
    accuracy: dict[str, Any]
    tasks: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # auxiliary tasks

    def as_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, **self.accuracy, **({"tasks": self.tasks} if self.tasks else {})}


@torch.no_grad()
def evaluate_patients(
    model: NextVisitModel,
    builder: BatchBuilder,
    patients: np.ndarray,
    groups: np.ndarray,
    config: TrainConfig,
    device: torch.device,
) -> Evaluation:
    """Loss (mean over patients) and accuracy@k of next-visit prediction for these patients;
    for each auxiliary task of the model, its loss and accuracy@AUX_K."""
    model.eval()
    g = model.code_embeddings()
    meters = {DIAGNOSIS: AccuracyAtK(config.k, groups)}
    meters.update({t.name: AccuracyAtK(AUX_K, np.zeros(t.num_categories, np.int64)) for t in builder.tasks})
    totals = dict.fromkeys(meters, 0.0)
    count = 0
    for start in range(0, len(patients), config.batch_size):
        batch = builder.build(patients[start : start + config.batch_size]).to(device)
        logits = model(batch, g)
        for name, meter in meters.items():
            task = None if name == DIAGNOSIS else name
            totals[name] += (
                next_visit_loss(logits[name], batch, config.loss, task).item() * batch.num_patients
            )
            meter.update(logits[name], batch.targets(logits[name].shape[1], task))
        count += batch.num_patients
    tasks = {
        name: {"loss": totals[name] / max(count, 1), f"accuracy@{AUX_K}": meter.result()["accuracy"]}
        for name, meter in meters.items()
        if name != DIAGNOSIS
    }
    return Evaluation(totals[DIAGNOSIS] / max(count, 1), meters[DIAGNOSIS].result(), tasks)


def restrict_to_codes(data: VisitData, code_to_class: np.ndarray) -> tuple[VisitData, int]:
    """Drop codes outside the vocabulary, then empty visits, then patients left with < 2 visits.

    Returns the restricted data and how many code occurrences were dropped.
    """
    keep_code = code_to_class[data.codes] >= 0
    visit_lengths = np.diff(data.visit_offsets)
    visit_of_code = range_owners(visit_lengths)
    new_lengths = np.bincount(visit_of_code[keep_code], minlength=len(visit_lengths))
    visits_per_patient = np.diff(data.patient_offsets)
    patient_of_visit = range_owners(visits_per_patient)
    nonempty = new_lengths > 0
    new_visits_per_patient = np.bincount(patient_of_visit[nonempty], minlength=len(visits_per_patient))
    keep_patient = new_visits_per_patient >= 2
    keep_visit = nonempty & keep_patient[patient_of_visit]
    keep_code &= keep_visit[visit_of_code]
    restricted = dataclasses.replace(
        data,
        patient_ids=data.patient_ids[keep_patient],
        patient_offsets=np.concatenate([[0], np.cumsum(new_visits_per_patient[keep_patient])]).astype(
            np.int64
        ),
        visit_offsets=np.concatenate([[0], np.cumsum(new_lengths[keep_visit])]).astype(np.int64),
        codes=data.codes[keep_code],
        visit_times=None if data.visit_times is None else data.visit_times[keep_visit],
    )
    return restricted, int((~keep_code).sum())


def evaluate(
    run_dir: str | Path, data: str | Path | None = None, k: int | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Accuracy@k (overall, by frequency group) and loss of a saved run.

    Without `data`: the run's own test split (same data, same seed). With `data`: every patient
    of that data set, restricted to the codes the run can predict (the rest are counted).
    """
    if k is not None and k < 1:
        raise HapnetError(f"--k must be at least 1, got {k}")
    torch_device = resolve_device(device)
    run = load(run_dir, device=str(torch_device))
    config = dataclasses.replace(run.config, k=run.config.k if k is None else k)
    vocab = run.vocabulary()
    groups = run.vocab["group"].to_numpy()
    dropped = 0
    if data is None:
        _, visits = load_training_data(config)
        patients = split_patients(len(visits.patient_ids), config.seed).test
        scope = "test split of the training data"
    else:
        visits = load_visits(data, run.ontology, columns=config.columns, unknown=config.unknown)
        visits, dropped = restrict_to_codes(visits, vocab.code_to_class)
        patients = np.arange(len(visits.patient_ids))
        scope = f"all patients of {data}"
    if len(patients) == 0:
        raise HapnetError(f"{data or run_dir}: no patient with 2+ visits of codes this run knows")
    builder = batch_builder(config, visits, vocab)
    result = evaluate_patients(run.model, builder, patients, groups, config, torch_device)
    return {
        "run": str(run_dir),
        "model": config.model,
        "k": config.k,
        "scope": scope,
        "patients": int(len(patients)),
        "codes_outside_vocabulary": dropped,
        "data": [list(row) for row in visits.report.as_rows()],
        "test": result.as_dict(),
    }
