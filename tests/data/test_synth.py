"""The synthetic generator: determinism, MIMIC-III's figures, hierarchy signal, the fit, `hapnet synth`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import hapnet
from hapnet.data import synth
from hapnet.data.loaders import load_visits
from hapnet.data.stats import compute_stats, load_stats
from hapnet.data.stats import relative_differences as _relative_differences
from hapnet.data.synth import SynthSettings, generate, write_synth
from hapnet.data.synth_fit import fit_synth_settings
from hapnet.errors import HapnetError


@pytest.fixture(scope="module")
def icd9():
    return hapnet.load_ontology("icd9-ccs")


@pytest.fixture(scope="module")
def mimic_sized(icd9) -> pd.DataFrame:
    return generate(icd9, 7_500, seed=0)


def test_same_seed_same_frame_other_seed_other_frame(icd9):
    a = generate(icd9, 400, seed=3)
    pd.testing.assert_frame_equal(a, generate(icd9, 400, seed=3))
    assert not a.equals(generate(icd9, 400, seed=4))


def test_blocks_continue_ids_and_do_not_change_earlier_patients(icd9, monkeypatch):
    monkeypatch.setattr(synth, "BLOCK_PATIENTS", 100)
    frame = generate(icd9, 250, seed=1)
    assert sorted(frame.patient.unique()) == list(range(1, 251))
    assert sorted(frame.visit.unique()) == list(range(1, frame.visit.nunique() + 1))
    first = generate(icd9, 100, seed=1)  # the first block alone is the same data
    pd.testing.assert_frame_equal(frame[frame.patient <= 100].reset_index(drop=True), first)


def relative_differences(stats, reference) -> dict:  # noqa: ANN001
    return {k: d for k, d in _relative_differences(stats, reference).items() if d is not None}


def test_every_figure_within_10_percent_of_mimic_iii(icd9):
    """The defaults (7,500 patients, icd9-ccs, seed 0) against MIMIC-III's aggregate figures."""
    stats = compute_stats(*synth.generate_visit_arrays(icd9, 7_500, seed=0), icd9)
    reference = load_stats("mimic3")
    off = {k: round(d, 3) for k, d in relative_differences(stats, reference).items() if abs(d) > 0.10}
    assert off == {}
    assert len(stats.flat()) == 24


def test_rows_are_distinct_visits_in_time_order_within_caps(mimic_sized):
    frame = mimic_sized
    visits = frame.groupby("visit").size()
    per_patient = frame.groupby("patient").visit.nunique()
    settings = SynthSettings()
    assert visits.min() >= settings.min_codes and visits.max() <= settings.max_codes
    assert per_patient.min() == 2 and per_patient.max() <= settings.max_visits
    assert not frame.duplicated(["visit", "code"]).any()
    first_day = frame.groupby("visit").agg(patient=("patient", "first"), time=("time", "first"))
    assert (first_day.groupby("patient").time.diff().dropna() > pd.Timedelta(0)).all()
    # the arrays are the frame's data: same sizes, same codes in each visit
    patient_offsets, visit_offsets, codes = synth.generate_visit_arrays("icd9-ccs", 7_500, seed=0)
    assert np.diff(patient_offsets).tolist() == per_patient.tolist()
    assert np.diff(visit_offsets).tolist() == visits.tolist()
    assert len(codes) == len(frame)


def test_population_is_the_settings_and_the_seed_draws_patients(icd9):
    """Another seed: other patients from the same population, so the figures stay close."""
    one = compute_stats(*synth.generate_visit_arrays(icd9, 3_000, seed=1), icd9)
    two = compute_stats(*synth.generate_visit_arrays(icd9, 3_000, seed=2), icd9)
    assert one != two
    assert abs(one.code_frequency.top20_share - two.code_frequency.top20_share) < 0.02
    other = SynthSettings(population_seed=1)
    three = compute_stats(*synth.generate_visit_arrays(icd9, 3_000, seed=1, settings=other), icd9)
    assert three.code_frequency != one.code_frequency


@pytest.mark.slow
def test_fit_recovers_the_figures_of_other_settings(icd9):
    """A source made with quite different settings: the fit brings every figure within 10%."""
    source = SynthSettings(
        extra_visits_mean=0.8,
        comorbidities_mean=1.5,
        chronic_same_code=0.3,
        codes_per_visit_mean=9.0,
        code_zipf=1.6,
        max_codes=30,
        progression=0.3,
        rare_codes=0.05,
    )
    target = compute_stats(*synth.generate_visit_arrays(icd9, 2_000, seed=7, settings=source), icd9)
    start = compute_stats(*synth.generate_visit_arrays(icd9, 2_000, seed=0), icd9)
    assert max(abs(d) for d in relative_differences(start, target).values()) > 0.4  # far at first
    fit = fit_synth_settings(target, icd9, seed=0, rounds=3)
    assert fit.patients == 2_000 and fit.settings.max_codes == 30
    off = {k: round(d, 3) for k, d in relative_differences(fit.stats, target).items() if abs(d) > 0.10}
    assert off == {}
    # the fitted figures are those of the data the settings generate
    assert compute_stats(*synth.generate_visit_arrays(icd9, 2_000, 0, fit.settings), icd9) == fit.stats


def category_of(ontology, frame: pd.DataFrame) -> np.ndarray:
    nodes = np.array([ontology.index(c) for c in frame.code.cat.categories])
    parents = np.array([ontology.parents(n)[0] for n in nodes])
    return parents[frame.code.cat.codes.to_numpy()]


def test_structure_rare_codes_share_categories_and_conditions_recur(icd9, mimic_sized):
    frame = mimic_sized.copy()
    frame["category"] = category_of(icd9, frame)
    counts = frame.code.value_counts()
    frame["count"] = frame.code.map(counts).astype(int)
    # Rare codes (seen < 5 times) sit in categories seen far more often, with frequent siblings.
    rare = frame[frame["count"] < 5]
    category_rows = frame.groupby("category").size()[rare.category].to_numpy()
    assert (category_rows >= 10 * rare["count"].to_numpy()).mean() > 0.9
    by_category = frame.groupby("category")["count"].max()
    assert (by_category[rare.category].to_numpy() >= 20).mean() > 0.8

    # Next-visit signal: a category of visit t shows again at t+1 far more often than a random
    # visit of another patient's history would predict; the same for exact codes (chronic).
    visit_patient = frame.groupby("visit").patient.first()
    next_visit = pd.Series(visit_patient.index[1:], index=visit_patient.index[:-1])
    same_patient = visit_patient.to_numpy()[1:] == visit_patient.to_numpy()[:-1]
    next_visit = next_visit[same_patient]

    def recurrence(key: str, shuffle: bool) -> float:
        sets = frame.groupby("visit")[key].agg(frozenset)
        targets = next_visit.to_numpy()
        if shuffle:
            targets = np.random.default_rng(0).permutation(targets)
        now, later = sets[next_visit.index].to_numpy(), sets[targets].to_numpy()
        return float(np.mean([len(a & b) / len(b) for a, b in zip(now, later, strict=True)]))

    assert recurrence("category", False) > 3 * recurrence("category", True)
    assert recurrence("code", False) > 3.5 * recurrence("code", True)


def test_write_synth_round_trip_and_manifest(icd9, tmp_path):
    folder = write_synth(tmp_path / "out", icd9, patients=300, seed=2)
    manifest = json.loads((folder / "synth.json").read_text())
    frame = generate(icd9, 300, seed=2)
    assert (manifest["patients"], manifest["rows"], manifest["visits"]) == (
        300,
        len(frame),
        frame.visit.nunique(),
    )
    assert manifest["ontology"] == "icd9-ccs" and manifest["settings"] == SynthSettings().__dict__
    written = pd.read_csv(folder / "visits.csv.gz", dtype=str)
    assert list(written.columns) == ["patient", "visit", "time", "code"]
    assert written.code.tolist() == frame.code.astype(str).tolist()
    assert written.time.tolist() == frame.time.dt.strftime("%Y-%m-%d").tolist()
    data = load_visits(folder, icd9)
    assert data.report.patients == 300 and data.report.codes == len(frame)
    assert manifest["distinct_codes"] == data.report.distinct_codes


def test_write_synth_refuses_existing_folder_and_is_atomic(icd9, tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "mine.txt").write_text("keep me")
    with pytest.raises(HapnetError, match="already exists"):
        write_synth(target, icd9, patients=10)
    assert (target / "mine.txt").read_text() == "keep me"

    def broken(*args, **kwargs):
        yield from ()
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "iter_blocks", broken)
    with pytest.raises(RuntimeError):
        write_synth(tmp_path / "new", icd9, patients=10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no half-written folder


def test_combined_ontology_codes_are_namespaced(tmp_path):
    try:
        ontology = hapnet.load_ontology("icd9-icd10")
    except HapnetError as exc:  # pragma: no cover - only until the combined ontology lands
        pytest.skip(f"icd9-icd10 not available yet ({exc})")
    frame = generate(ontology, 200, seed=0)
    systems = {code.split(":")[0] for code in frame.code.astype(str).unique()}
    assert systems == {"ICD9", "ICD10"}


def test_bad_settings():
    with pytest.raises(HapnetError, match="--patients"):
        generate("icd9-ccs", 0)
    with pytest.raises(HapnetError, match="min_codes"):
        generate("icd9-ccs", 10, settings=SynthSettings(min_codes=40))


def test_cli_synth_end_to_end(tmp_path):
    from hapnet.cli.main import app

    runner = CliRunner()
    out = tmp_path / "data"
    result = runner.invoke(app, ["synth", "-o", str(out), "--patients", "250", "--seed", "9"])
    assert result.exit_code == 0, result.output
    for label in ("patients", "250", "visits", "distinct codes", "codes per visit", "visits.csv.gz"):
        assert label in result.output
    data = load_visits(out, hapnet.load_ontology("icd9-ccs"))
    assert data.num_patients == 250

    again = runner.invoke(app, ["synth", "-o", str(out), "--patients", "5"])
    assert again.exit_code == 2 and "already exists" in again.output and "--force" in again.output
    assert load_visits(out, hapnet.load_ontology("icd9-ccs")).num_patients == 250

    forced = runner.invoke(app, ["synth", "-o", str(out), "--patients", "20", "--force"])
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "synth.json").read_text())["patients"] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]

    bad = runner.invoke(app, ["synth", "-o", str(tmp_path / "x"), "--ontology", "no-such-thing"])
    assert bad.exit_code == 2 and "no-such-thing" in bad.output and "Traceback" not in bad.output
