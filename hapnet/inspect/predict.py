"""Next-visit prediction for one patient: `predict_next_visit(run, history)`.

The history is a list of visits, oldest first, each a list of raw codes. Codes resolve through the
run's ontology as the loaders do for training (exact node, else the nearest ancestor by ICD prefix);
codes that land outside the run's vocabulary are reported, not fatal. The scores are the softmax of
the diagnosis head's logits after the last visit (the paper's model), computed by the same
`BatchBuilder` + `NextVisitModel.forward` path as training and evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import torch

from hapnet.data.batches import BatchBuilder
from hapnet.data.loaders import load_visits
from hapnet.errors import HapnetError, check_k
from hapnet.models.predictor import DIAGNOSIS
from hapnet.ontology.graph import EXACT, MAPPED, UNKNOWN
from hapnet.training.runs import Run, as_run

OUTSIDE_VOCABULARY = "outside vocabulary"  # in the ontology, but the run never saw it in training


@dataclass(frozen=True)
class ResolvedCode:
    """One raw code of the history: where it landed and whether the run can use it."""

    raw: str
    visit: int  # 0-based position of its visit in the history
    code: str | None  # the ontology node it resolved to (None when unknown)
    status: str  # EXACT, MAPPED, UNKNOWN or OUTSIDE_VOCABULARY

    @property
    def used(self) -> bool:
        return self.status in (EXACT, MAPPED)


@dataclass
class PredictionResult:
    """What `predict_next_visit` returns; `top` is the table of the k most probable codes that
    `hapnet predict` prints."""

    run: Path
    model: str
    top: pd.DataFrame  # rank, code, description, probability, group, train_count
    probabilities: np.ndarray = field(repr=False)  # [num_codes] in the run's class order, sums to 1
    resolved: list[ResolvedCode] = field(default_factory=list)
    visits_used: int = 0

    def skipped(self) -> list[ResolvedCode]:
        return [r for r in self.resolved if not r.used]

    def mapped(self) -> list[ResolvedCode]:
        return [r for r in self.resolved if r.status == MAPPED]

    def as_dict(self) -> dict[str, Any]:
        return {
            "run": str(self.run),
            "model": self.model,
            "visits_used": self.visits_used,
            "predictions": self.top.to_dict(orient="records"),
            "mapped": [{"raw": r.raw, "code": r.code, "visit": r.visit + 1} for r in self.mapped()],
            "skipped": [
                {"raw": r.raw, "code": r.code, "visit": r.visit + 1, "reason": r.status}
                for r in self.skipped()
            ],
        }


def parse_history(text: str) -> list[list[str]]:
    """`"4280,5849;4019,42731"` -> [["4280", "5849"], ["4019", "42731"]] (visits by `;`, codes by `,`)."""
    visits = [[code.strip() for code in part.split(",") if code.strip()] for part in text.split(";")]
    visits = [v for v in visits if v]
    if not visits:
        raise HapnetError(f"--history {text!r}: no code given (visits separated by ';', codes by ',')")
    return visits


def resolve_history(
    run: Run, history: Sequence[Sequence[str]]
) -> tuple[list[np.ndarray], list[ResolvedCode]]:
    """Ontology node indices of every visit's usable codes (visits left empty are dropped)."""
    if isinstance(history, str) or any(isinstance(v, str) for v in history):
        raise HapnetError("history must be a list of visits, each a list of codes (e.g. [['4280', '5849']])")
    code_to_class = run.vocabulary().code_to_class
    visits: list[np.ndarray] = []
    resolved: list[ResolvedCode] = []
    for position, visit in enumerate(history):
        nodes: list[int] = []
        for raw in visit:
            hit = run.ontology.resolve(str(raw))
            if hit.status == UNKNOWN:
                resolved.append(ResolvedCode(str(raw), position, None, UNKNOWN))
                continue
            code = run.ontology.ids[hit.index]
            if code_to_class[hit.index] < 0:
                resolved.append(ResolvedCode(str(raw), position, code, OUTSIDE_VOCABULARY))
                continue
            resolved.append(ResolvedCode(str(raw), position, code, hit.status))
            nodes.append(hit.index)
        if nodes:
            visits.append(np.array(list(dict.fromkeys(nodes)), dtype=np.int64))
    return visits, resolved


@torch.no_grad()
def next_visit_probabilities(run: Run, visits: Sequence[np.ndarray]) -> np.ndarray:
    """Softmax over all codes of the diagnosis head after the last visit (node indices in, [C] out).

    An empty target visit is appended so that the training `BatchBuilder` yields one step per
    visit; the last step's logits score the visit after the history.
    """
    if run.config.time_input:
        raise HapnetError(
            f"{run.path}: this run reads the days between visits (--time-input), which predict "
            "does not take; evaluate it on data with visit times instead"
        )
    lengths = [len(v) for v in visits] + [0]
    data = SimpleNamespace(
        patient_offsets=np.array([0, len(lengths)], dtype=np.int64),
        visit_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        codes=np.concatenate(list(visits)).astype(np.int64),
    )
    model = run.model.eval()
    device = next(model.parameters()).device
    batch = BatchBuilder(data, run.vocabulary().code_to_class).build(np.array([0])).to(device)
    logits = model(batch)[DIAGNOSIS][-1]
    return torch.softmax(logits.double(), dim=0).cpu().numpy()


def rank_codes(run: Run, probabilities: np.ndarray, k: int) -> pd.DataFrame:
    """The `k` most probable codes, descending (ties: lower class first), with vocab.csv facts."""
    order = np.argsort(-probabilities, kind="stable")[: max(0, k)]
    vocab = run.vocab
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(order) + 1),
            "code": vocab["code"].to_numpy()[order],
            "description": vocab["description"].to_numpy()[order],
            "probability": probabilities[order],
            "group": vocab["group"].to_numpy()[order].astype(int),
            "train_count": vocab["train_count"].to_numpy()[order].astype(int),
        }
    )


def predict_next_visit(
    run: Run | str | Path, history: Sequence[Sequence[str]], k: int | None = None
) -> PredictionResult:
    """The codes expected at the next visit after `history` (visits oldest first, raw codes).

    `run`: a loaded run (`hapnet.load`) or its folder. `.top` is the table of the `k` most
    probable codes (default: the run's k of accuracy@k), `.probabilities` the scores of every
    code of the run's vocabulary.
    """
    if k is not None:
        check_k(k)
    run = as_run(run)
    k = run.config.k if k is None else int(k)
    if len(history) == 0:
        raise HapnetError("empty history: give at least one visit with one code")
    visits, resolved = resolve_history(run, history)
    if not visits:
        shown = ", ".join(f"{r.raw} ({r.status})" for r in resolved[:5]) + (
            ", …" if len(resolved) > 5 else ""
        )
        raise HapnetError(f"no code of the history is in the run's vocabulary: {shown or 'no code given'}")
    probabilities = next_visit_probabilities(run, visits)
    return PredictionResult(
        run=run.path,
        model=run.config.model,
        top=rank_codes(run, probabilities, k),
        probabilities=probabilities,
        resolved=resolved,
        visits_used=len(visits),
    )


def patient_history(run: Run | str | Path, data: str | Path, patient: str) -> list[list[str]]:
    """All visits of one patient of a data set (read as training reads it), as ontology codes."""
    run = as_run(run)
    visits = load_visits(
        data, run.ontology, columns=run.config.columns, unknown=run.config.unknown, min_visits=1
    )
    ids = [str(p) for p in visits.patient_ids]
    if str(patient) not in ids:
        shown = ", ".join(ids[:5]) + (", …" if len(ids) > 5 else "")
        raise HapnetError(f"{data}: no patient {patient!r} with a known code (patients: {shown})")
    return [[run.ontology.ids[n] for n in nodes] for nodes in visits.visits_of(ids.index(str(patient)))]
