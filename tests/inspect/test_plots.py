"""`plot_runs` and `hapnet plot`: files written (PNG and SVG, atomically), labels and categories."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from tiny import build_tiny_run, hapnet

from hapnet.errors import HapnetError
from hapnet.inspect.explain import explain_code
from hapnet.inspect.plots import (
    plot_explanation,
    plot_runs,
    project_2d,
    read_run_files,
    top_categories,
    unique_labels,
)
from hapnet.ontology.builtins import load_ontology
from hapnet.training.naming import run_label
from hapnet.training.runs import load

STEMS = ("learning_curves", "accuracy_by_group", "embedding_map")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module")
def runs(tiny: Path) -> dict[str, Path]:
    return {model: build_tiny_run(tiny, model) for model in ("hap", "gram")}


def assert_figures(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{s}.{f}" for s in STEMS for f in ("png", "svg")
    )
    for stem in STEMS:
        png, svg = folder / f"{stem}.png", folder / f"{stem}.svg"
        assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 10_000
        assert b"<svg" in svg.read_bytes()[:2000] and svg.stat().st_size > 10_000


def test_plot_runs_writes_every_figure_as_png_and_svg(runs: dict[str, Path]) -> None:
    written = plot_runs([runs["hap"], runs["gram"]])
    folder = runs["hap"] / "plots"  # the default folder
    assert sorted(written) == sorted(folder / f"{s}.{f}" for s in STEMS for f in ("png", "svg"))
    assert_figures(folder)
    # Existing figures are never replaced silently, and nothing is written when refused.
    before = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
    with pytest.raises(HapnetError, match="learning_curves.png: already exists"):
        plot_runs([runs["hap"]])
    assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    plot_runs([runs["hap"]], force=True, map_method="pca")
    assert_figures(folder)


def test_run_labels_use_the_papers_names(runs: dict[str, Path]) -> None:
    assert run_label({"model": "hap"}) == "HAP"
    assert run_label({"model": "gram", "levels": 3}) == "GRAM (lv3)"
    assert run_label({"model": "rnn", "pretrain": "glove"}) == "RNN+"
    assert run_label({"model": "rollup", "pretrain": "glove"}) == "Rollup+"
    assert run_label({"model": "hap", "pretrain": "glove", "levels": 2}) == "HAP (lv2, GloVe)"
    files = [read_run_files(runs["hap"]), read_run_files(runs["gram"]), read_run_files(runs["hap"])]
    assert unique_labels(files[:2]) == ["HAP (GloVe)", "GRAM (GloVe)"]
    parent = runs["hap"].parent.name  # the same folder twice: its parent tells them apart
    assert unique_labels(files) == [
        f"HAP (GloVe) [{parent}/hap]",
        "GRAM (GloVe)",
        f"HAP (GloVe) [{parent}/hap]",
    ]
    other = dataclasses.replace(files[0], path=Path("elsewhere/hap-long"))
    assert unique_labels([files[0], other]) == ["HAP (GloVe) [hap]", "HAP (GloVe) [hap-long]"]


def test_top_categories_follow_the_first_parent_to_level_1(runs: dict[str, Path]) -> None:
    ontology = load_ontology(load(runs["hap"]).config.ontology)
    codes = ["A11", "A22", "B21", "C211", "B12", "C"]
    category, level = top_categories(ontology, np.array([ontology.index(c) for c in codes]))
    assert level == 1
    names = [ontology.ids[i] for i in category]
    # B12 hangs under A1 and B1: one of its chapters (the first parent's); a chapter is its own.
    assert names[:4] == ["A", "A", "B", "C"] and names[4] in ("A", "B") and names[5] == "C"


def test_projection_methods() -> None:
    points = np.random.default_rng(0).normal(size=(40, 8))
    for method, name in (("auto", "t-SNE"), ("tsne", "t-SNE"), ("pca", "PCA")):
        xy, used = project_2d(points, method)
        assert xy.shape == (40, 2) and used == name and np.isfinite(xy).all()
    assert project_2d(points[:5], "auto")[1] == "PCA"  # too few points for t-SNE
    with pytest.raises(HapnetError, match="--map must be auto, tsne or pca"):
        project_2d(points, "umap")


def test_plot_explanation_file(runs: dict[str, Path], tmp_path: Path) -> None:
    explanation = explain_code(load(runs["hap"]), "B12")
    path = plot_explanation(explanation, tmp_path / "b12.svg", top=8)
    assert path.read_text().count("<svg") == 1 and path.stat().st_size > 10_000
    with pytest.raises(HapnetError, match="use a .png, .svg or .pdf"):
        plot_explanation(explanation, tmp_path / "b12.txt")


def test_cli_plot(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "figures"
    result = hapnet("plot", runs["hap"], runs["gram"], "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("wrote ") == 6
    assert_figures(out)
    result = hapnet("plot", runs["hap"], "-o", out)
    assert result.exit_code == 2 and result.stderr.strip().startswith(f"error: {out / 'learning_curves.png'}")
    result = hapnet("plot", runs["hap"], "no/such/run", "-o", tmp_path / "other")
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        == "error: no/such/run: not a hapnet run folder (expected config.json, vocab.csv and checkpoint.pt)"
    )
    assert not (tmp_path / "other").exists()
