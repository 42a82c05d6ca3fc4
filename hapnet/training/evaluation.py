"""Scoring next-visit prediction: `evaluate_patients` (the loss, accuracy@k, per-visit recall@k and
weighted F1 of a model on some patients, what every epoch reports; with `full=True` also the AUCs)
and `evaluate(run_dir, data=None, k=None)` (a saved run on its test split or on other data, with
every score). The scores are defined in docs/algorithms.md."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hapnet.data.batches import BatchBuilder
from hapnet.data.fingerprint import data_fingerprint, fingerprint_matches
from hapnet.data.loaders import load_visits
from hapnet.data.splits import split_patients
from hapnet.data.visits import VisitData
from hapnet.errors import HapnetError, check_k
from hapnet.models.losses import next_visit_loss
from hapnet.models.predictor import DIAGNOSIS, NextVisitModel
from hapnet.training.config import TrainConfig
from hapnet.training.distributed import SINGLE, Process, merge_totals
from hapnet.training.metrics import AccuracyAtK, ScoreCollector, VisitScores
from hapnet.training.runs import SPLIT, Run, load
from hapnet.training.setup import batch_builder, reading_settings, training_data_path
from hapnet.utils.arrays import range_owners
from hapnet.utils.device import resolve_device

AUX_K = 5  # an auxiliary task (a level's categories) is scored by accuracy@5: a level has few classes


@dataclass
class Evaluation:
    loss: float
    accuracy: dict[str, Any]
    tasks: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # auxiliary tasks
    scores: dict[str, float | int] = dataclasses.field(default_factory=dict)  # recall@k, F1, AUCs

    def as_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            **self.accuracy,
            **self.scores,
            **({"tasks": self.tasks} if self.tasks else {}),
        }


@torch.no_grad()
def evaluate_patients(
    model: NextVisitModel,
    builder: BatchBuilder,
    patients: np.ndarray,
    groups: np.ndarray,
    config: TrainConfig,
    device: torch.device,
    full: bool = False,
    process: Process = SINGLE,
) -> Evaluation:
    """Loss (mean over patients), accuracy@k, per-visit recall@10/20 and the weighted F1 of the
    top-|y| codes of next-visit prediction for these patients; with `full`, also the micro and
    macro PR-AUC and ROC-AUC (they keep every score: memory of visits x codes x 5 bytes). For
    each auxiliary task of the model, its loss and accuracy@AUX_K. In a distributed run
    (`process`) each rank gives the patients it holds, and the counts of every rank are added
    up: every rank gets the figures of one process scoring them all."""
    model.eval()
    g = model.code_embeddings()
    meters = {DIAGNOSIS: AccuracyAtK(config.k, groups)}
    meters.update({t.name: AccuracyAtK(AUX_K, np.zeros(t.num_categories, np.int64)) for t in builder.tasks})
    visit_scores = VisitScores(len(groups))
    collector = ScoreCollector() if full else None
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
            targets = batch.targets(logits[name].shape[1], task)
            meter.update(logits[name], targets)
            if name == DIAGNOSIS:
                visit_scores.update(logits[name], targets)
                if collector is not None:
                    collector.update(log_probabilities(logits[name], config.loss), targets)
        count += batch.num_patients
    if process.distributed:
        accumulators = [*meters.values(), visit_scores, *([collector] if collector is not None else [])]
        totals, count = merge_totals(process, accumulators, totals, count)
    tasks = {
        name: {"loss": totals[name] / max(count, 1), f"accuracy@{AUX_K}": meter.result()["accuracy"]}
        for name, meter in meters.items()
        if name != DIAGNOSIS
    }
    scores = {**visit_scores.result(), **(collector.result() if collector is not None else {})}
    return Evaluation(totals[DIAGNOSIS] / max(count, 1), meters[DIAGNOSIS].result(), tasks, scores)


def log_probabilities(logits: torch.Tensor, loss: str) -> torch.Tensor:
    """The model's next-visit log-probabilities, what the AUCs rank across visits (logits would
    not do: their offset differs from visit to visit). Codes compete in a softmax, except under
    the BCE loss, which trains each code's sigmoid on its own. Logs keep the tiny probabilities
    of unlikely codes apart in float32."""
    if loss == "bce":
        return torch.nn.functional.logsigmoid(logits)
    return torch.log_softmax(logits, dim=1)


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
        patient_splits=None if data.patient_splits is None else data.patient_splits[keep_patient],
    )
    return restricted, int((~keep_code).sum())


def evaluate(
    run: Run | str | Path, data: str | Path | None = None, k: int | None = None, device: str = "auto"
) -> dict[str, Any]:
    """Every score of a saved run (`Run` or its folder): accuracy@k (overall, by frequency group),
    loss, per-visit recall@10/20, weighted F1, micro and macro PR-AUC and ROC-AUC.

    Without `data`: the run's own test split (the patients of its split.csv), on the data it
    trained on; refused if that data changed since (its fingerprint differs). With `data`: every
    patient of that data set, restricted to the codes the run can predict (the rest are counted).
    """
    if k is not None:
        check_k(k)
    if isinstance(run, Run):
        torch_device = next(run.model.parameters()).device
    else:
        torch_device = resolve_device(device)
        run = load(run, device=str(torch_device))
    config = dataclasses.replace(run.config, k=run.config.k if k is None else k)
    vocab = run.vocabulary()
    groups = run.vocab["group"].to_numpy()
    dropped = 0
    if data is None:
        visits, patients = _test_split(run)
        scope = "test split of the training data"
    else:
        visits = load_visits(data, run.ontology, **reading_settings(config))
        if run.data_fingerprint is not None and fingerprint_matches(run.data_fingerprint, visits):
            warnings.warn(
                f"{data} is the data run {run.path} trained on: these scores include its training "
                "and validation patients; leave out --data to score its test split",
                stacklevel=2,
            )
        visits, dropped = restrict_to_codes(visits, vocab.code_to_class)
        patients = np.arange(len(visits.patient_ids))
        scope = f"all {len(patients):,} patients of {data} (not the run's test split)"
    if len(patients) == 0:
        raise HapnetError(f"{data or run.path}: no patient with 2+ visits of codes this run knows")
    builder = batch_builder(config, visits, vocab)
    result = evaluate_patients(run.model, builder, patients, groups, config, torch_device, full=True)
    return {
        "run": str(run.path),
        "model": config.model,
        "k": config.k,
        "scope": scope,
        "patients": int(len(patients)),
        "codes_outside_vocabulary": dropped,
        "data": [list(row) for row in visits.report.as_rows()],
        "test": result.as_dict(),
    }


def _test_split(run: Run) -> tuple[VisitData, np.ndarray]:
    """The data a run trained on, read with the run's own ontology, and its test patients.

    Only the data the run saw has its test split: if the data changed (patients or codes added,
    edited or removed), re-splitting it would score other patients, silently.
    """
    path = training_data_path(run.config)
    config = run.config
    visits = load_visits(path, run.ontology, **reading_settings(config))
    now = data_fingerprint(visits)
    if run.data_fingerprint is not None and not fingerprint_matches(run.data_fingerprint, visits, now):
        raise HapnetError(
            f"{path}: the data changed since run {run.path} trained on it (fingerprint "
            f"{run.data_fingerprint[:12]}, now {now[:12]}), so its test split no longer exists; "
            f"to score the run on the data as it is now, give it explicitly: --data {path} "
            "(every patient of it is scored)"
        )
    ids = run.split_ids()
    if ids is None:  # a run from before split.csv: its split is the seed's, on unchanged data
        return visits, split_patients(len(visits.patient_ids), run.config.seed).test
    position = {str(p): i for i, p in enumerate(visits.patient_ids)}
    missing = [p for p in ids["test"] if p not in position]
    if missing:
        raise HapnetError(f"{run.path / SPLIT}: test patient {missing[0]} is not in {path}")
    return visits, np.sort(np.array([position[p] for p in ids["test"]], dtype=np.int64))
