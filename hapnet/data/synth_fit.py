"""Fit the synthetic generator to a data set's aggregate figures (`hapnet synth --like DATA`).

Only a `DataStats` goes in: no record of the source is read here, so the synthetic twin copies
no patient, visit or code list, only counts and shares. The fit is a coordinate search: each
round tries every knob a step up and a step down, generating the twin's cohort (the source's
patient count, same seed every time, so a step's effect is not drowned in sampling noise) and
keeping a step when it brings the figures closer; the step shrinks every round. Knobs that a
figure sets outright (the most visits of a patient, the most codes of a visit) are set first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from hapnet.data.stats import DataStats, compute_stats, data_stats, relative_differences
from hapnet.data.synth import (
    SynthSettings,
    draw_visit_counts,
    draw_visit_sizes,
    generate_visit_arrays,
    write_synth,
)
from hapnet.data.table import DEFAULT_UNKNOWN
from hapnet.data.visits import VisitData
from hapnet.errors import HapnetError
from hapnet.ontology.builtins import DEFAULT_ONTOLOGY, load_ontology
from hapnet.ontology.graph import Ontology
from hapnet.utils.paths import check_output_location

MAX_FIT_PATIENTS = 50_000  # a larger source is fitted on this many patients (time per round)
TOLERANCE = 0.10  # the relative difference every figure should reach
# Knobs the search moves, roughly grouped by the figures they drive; probabilities stay in (0, 1).
KNOBS = (
    "extra_visits_mean",  # share_2, mean
    "extra_visits_shape",  # share_3
    "frequent_visitors",  # mean, p90
    "frequent_visits_mean",
    "codes_per_visit_mean",  # codes per visit
    "codes_per_visit_shape",  # p10, p90
    "category_zipf",  # the head of the code distribution: top 20 / top 100
    "category_offset",  # top 1 against top 20
    "code_zipf",  # the tail: codes seen once, median count
    "codes_per_category",  # distinct codes
    "rare_codes",  # codes seen once
    "comorbidities_mean",  # exact repeats: in previous / any earlier visit
    "comorbidity_presence",
    "comorbidity_sharpness",  # top 1
    "chronic_presence",
    "chronic_same_code",  # in any earlier but not the previous visit
    "new_conditions",  # new categories in later visits: category seen before
    "progression",  # level-2 category seen before
    "conditions_mean",
)
PROBABILITIES = {
    "frequent_visitors",
    "comorbidity_presence",
    "chronic_presence",
    "chronic_same_code",
    "progression",
}


@dataclass(frozen=True)
class SynthFit:
    """A fitted generator: its settings, the figures it gives, and how far they are."""

    settings: SynthSettings
    stats: DataStats  # of the twin: `patients` patients generated with `seed`
    target: DataStats
    patients: int
    seed: int
    loss: float
    evaluations: int

    @property
    def worst(self) -> tuple[str, float]:
        """The figure furthest from the target and its relative difference."""
        diffs = _differences(self.stats, self.target)
        name = max(diffs, key=lambda k: abs(diffs[k]))
        return name, diffs[name]


def fit_synth_settings(
    target: DataStats,
    ontology: Ontology | str = DEFAULT_ONTOLOGY,
    *,
    patients: int | None = None,
    seed: int = 0,
    rounds: int = 4,
    step: float = 0.4,
    start: SynthSettings | None = None,
) -> SynthFit:
    """Generator settings whose data look like `target` (every figure of `hapnet data-stats`).

    `patients` defaults to the target's patient count (at most `MAX_FIT_PATIENTS`); the twin is
    then `generate(ontology, patients, seed, fit.settings)`, whose figures are `fit.stats`.
    `step` is the first round's move (a factor e^step; halved every round); `start` the
    settings to start from (default: the generator's, calibrated on MIMIC-III).
    """
    if rounds < 0:
        raise HapnetError(f"rounds must be at least 0, got {rounds}")
    ontology = ontology if isinstance(ontology, Ontology) else load_ontology(ontology)
    patients = min(patients or target.patients_2plus, MAX_FIT_PATIENTS)
    settings = replace(
        start or SynthSettings(),
        # A maximum is reached only by clipping: set the caps outright, search the rest.
        max_visits=max(2, target.visits_per_patient.max),
        max_codes=max(1, target.codes_per_visit.max),
        min_codes=1,
    )
    settings = _prefit_shapes(settings, target)
    evaluations = 0

    def evaluate(candidate: SynthSettings) -> tuple[float, DataStats]:
        nonlocal evaluations
        evaluations += 1
        stats = compute_stats(*generate_visit_arrays(ontology, patients, seed, candidate), ontology)
        return _loss(stats, target), stats

    best_loss, best_stats = evaluate(settings)
    for _ in range(rounds):
        for knob in KNOBS:
            for direction in (1, -1):
                candidate = _moved(settings, knob, step, direction, target)
                if candidate is None:
                    continue
                loss, stats = evaluate(candidate)
                if loss < best_loss:
                    settings, best_loss, best_stats = candidate, loss, stats
                    break  # this direction helped: no need to try the other
        step /= 2
    return SynthFit(settings, best_stats, target, patients, seed, best_loss, evaluations)


def _prefit_shapes(settings: SynthSettings, target: DataStats) -> SynthSettings:
    """Visits per patient and codes per visit depend on their own knobs only: fit those first on
    large samples of the two distributions alone (milliseconds), by bisection on each knob in
    turn, so that the search starts with them right."""
    vpp, cpv = target.visits_per_patient, target.codes_per_visit
    rng_seed, n = 0, 100_000

    def visits(s: SynthSettings) -> np.ndarray:
        return draw_visit_counts(np.random.default_rng(rng_seed), n, s)

    def sizes(s: SynthSettings) -> np.ndarray:
        rng = np.random.default_rng(rng_seed)
        return draw_visit_sizes(rng, n, s) + rng.random(n)  # jitter: percentiles move smoothly

    # (knob, figure of the samples, target, whether the figure grows with the knob)
    fits = (
        ("extra_visits_mean", lambda s: np.mean(visits(s) == 2), vpp.share_2, False),
        ("extra_visits_shape", lambda s: np.mean(visits(s) == 3), vpp.share_3, True),
        ("frequent_visitors", lambda s: visits(s).mean(), vpp.mean, True),
        ("codes_per_visit_mean", lambda s: sizes(s).mean() - 0.5, cpv.mean, True),
        (
            "codes_per_visit_shape",
            lambda s: np.subtract(*np.percentile(sizes(s), [90, 10])),
            max(cpv.p90 - cpv.p10, 1.0),
            False,
        ),
    )
    for _ in range(3):
        for knob, figure, goal, increasing in fits:
            low, high = getattr(settings, knob) / 8, getattr(settings, knob) * 8
            if knob in PROBABILITIES:
                high = min(high, 0.5)
            for _ in range(20):  # bisection on the log of the knob
                middle = math.sqrt(low * high)
                above = figure(replace(settings, **{knob: middle})) > goal
                low, high = (low, middle) if above == increasing else (middle, high)
            settings = replace(settings, **{knob: math.sqrt(low * high)})
    return settings


def _moved(
    settings: SynthSettings, knob: str, step: float, direction: int, target: DataStats
) -> SynthSettings | None:
    """`settings` with one knob a step up or down; None where the move changes nothing."""
    value = getattr(settings, knob)
    if knob in PROBABILITIES:  # steps on the log-odds keep a probability inside (0, 1)
        logit = math.log(value / (1 - value)) + direction * step * 2.5
        new = min(max(1 / (1 + math.exp(-logit)), 0.005), 0.995)
    elif knob == "codes_per_category":
        new = max(1, round(value * math.exp(direction * step)))
    else:
        new = value * math.exp(direction * step)
    if knob == "codes_per_visit_mean":
        new = min(max(new, 1.01), target.codes_per_visit.max)
    if knob in ("conditions_mean",):
        new = max(new, 1.0)
    return None if new == value else replace(settings, **{knob: new})


def _differences(stats: DataStats, target: DataStats) -> dict[str, float]:
    """Relative difference of every figure (the value itself where the target is 0)."""
    values = stats.flat()
    return {k: values[k] if d is None else d for k, d in relative_differences(stats, target).items()}


def _loss(stats: DataStats, target: DataStats) -> float:
    """Mostly a steep penalty for figures beyond 60% of the tolerance (what the search fixes
    first), plus a small sum of squared relative differences that evens out the rest."""
    total = 0.0
    for diff in _differences(stats, target).values():
        total += 0.1 * diff**2 + 100 * max(0.0, abs(diff) - 0.6 * TOLERANCE) ** 2
    return total


def write_synth_like(
    source: VisitData | str | Path,
    out_dir: str | Path,
    ontology: Ontology | str = DEFAULT_ONTOLOGY,
    *,
    patients: int | None = None,
    seed: int = 0,
    rounds: int = 4,
    columns: dict[str, str] | None = None,
    unknown: str = DEFAULT_UNKNOWN,
    force: bool = False,
) -> tuple[Path, SynthFit]:
    """A synthetic twin of `source` (anything `load_visits` reads): the generator fitted to its
    `data_stats` only, written like `write_synth`; `synth.json` adds the source's figures, the
    twin's and the fit. `patients` defaults to the source's patient count."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:  # before the fit, which takes a while
        raise HapnetError(f"{out_dir}: already exists (use --force to overwrite)")
    check_output_location(out_dir, force=force, kind="folder")
    ontology = ontology if isinstance(ontology, Ontology) else load_ontology(ontology)
    target = data_stats(source, ontology, columns=columns, unknown=unknown)
    patients = patients or target.patients_2plus
    fit = fit_synth_settings(target, ontology, patients=patients, seed=seed, rounds=rounds)
    like = {
        "source": str(source) if not isinstance(source, VisitData) else source.report.source,
        "source_stats": target.to_dict(),
        "fitted_on_patients": fit.patients,
        "fitted_stats": fit.stats.to_dict(),
        "evaluations": fit.evaluations,
    }
    path = write_synth(
        out_dir, ontology, patients, seed, settings=fit.settings, force=force, extra={"like": like}
    )
    return path, fit
