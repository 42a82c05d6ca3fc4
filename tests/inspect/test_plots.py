"""`plot_runs` and `hapnet plot`: files written (PNG and SVG, atomically), labels and categories."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from tiny import build_tiny_run, hapnet

from hapnet.errors import HapnetError
from hapnet.inspect import plots
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
    path = plot_explanation(explanation, tmp_path / "b12.svg", k=8)
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


# ----------------------------------------------------------------------------- damaged runs, bad outputs
@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("metrics.json", "{oops", "metrics.json: not a hapnet metrics file (Expecting property name"),
        (
            "metrics.json",
            "[1, 2]",
            "metrics.json: not a hapnet metrics file (a JSON list, expected an object)",
        ),
        ("metrics.json", '{"test": 3}', "metrics.json: not a hapnet metrics file (no `test` results)"),
        ("history.csv", "epoch,loss\n1,2\n", "history.csv: not a hapnet history file (no column train_loss"),
        (
            "history.csv",
            "epoch,train_loss,valid_loss,valid_accuracy\n1,x,2,0.5\n",
            "history.csv: not a hapnet history file (column train_loss is not numbers)",
        ),
        ("history.csv", "", "history.csv: not a hapnet history file (No columns to parse"),
        ("vocab.csv", "class,name\n0,x\n", "vocab.csv: not a hapnet vocabulary file (no column code)"),
        (
            "config.json",
            "[]",
            "config.json: not a hapnet run configuration (a JSON list, expected an object)",
        ),
        ("config.json", '{"seed": "0"}', "config.json: not a hapnet run configuration (`seed` is '0')"),
        ("config.json", '{"k": true}', "config.json: not a hapnet run configuration (`k` is True)"),
        (
            "code_embeddings.npy",
            b"\x80\x04\x95",
            "code_embeddings.npy: not a hapnet embeddings file (a Python pickle, never loaded)",
        ),
        ("code_embeddings.npy", b"", "code_embeddings.npy: not a hapnet embeddings file (an empty file)"),
    ],
)
def test_a_damaged_run_file_is_one_line_naming_it(
    runs: dict[str, Path], tmp_path: Path, name: str, content: str | bytes, message: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["hap"], run, ignore=shutil.ignore_patterns("plots"))
    (run / name).write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(HapnetError) as caught:
        plot_runs([run], tmp_path / "figures", map_method="pca")
    assert str(caught.value).startswith(f"{run / message.split(':')[0]}:") and message in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "figures").exists()
    result = hapnet("plot", run, "-o", tmp_path / "figures")
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {caught.value}"


def test_figures_that_cannot_be_written_are_refused_before_drawing(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("drew a figure that cannot be written")

    monkeypatch.setattr(plots, "learning_curves_figure", never)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(HapnetError, match="notes.txt is a file, not a folder"):
        plot_runs([runs["hap"]], tmp_path / "notes.txt" / "figures")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode, **kw: Path(path) != locked and real_access(path, mode)
    )
    with pytest.raises(HapnetError, match=f"cannot write in {locked} \\(permission denied\\)"):
        plot_runs([runs["hap"]], locked / "figures")
    explanation = explain_code(load(runs["hap"]), "B12")
    monkeypatch.setattr(plots, "explanation_figure", never)
    with pytest.raises(HapnetError, match="notes.txt is a file, not a folder"):
        plot_explanation(explanation, tmp_path / "notes.txt" / "b12.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked", "notes.txt"]
    assert list(locked.iterdir()) == []
