"""Figures of trained runs: learning curves, accuracy by frequency group, a 2-D map of the code
embeddings, and the bar chart of an explanation. matplotlib with the Agg backend (no display);
every file is written atomically, as PNG and SVG.

They read the run folder's files only (history.csv, metrics.json, vocab.csv, code_embeddings.npy
and its own ontology.npz): no model is built.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hapnet.embeddings.formats import read_matrix  # noqa: E402
from hapnet.errors import HapnetError, InputError, error_summary  # noqa: E402
from hapnet.inspect.explain import Explanation  # noqa: E402
from hapnet.ontology.graph import Ontology  # noqa: E402
from hapnet.training.naming import group_names, run_label  # noqa: E402
from hapnet.training.runs import (  # noqa: E402
    CONFIG,
    EMBEDDINGS,
    HISTORY,
    METRICS,
    VOCAB,
    Run,
    is_run_dir,
    read_metrics,
    run_ontology,
)
from hapnet.utils.paths import check_output_location  # noqa: E402
from hapnet.utils.textio import atomic_path, read_json_object  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGURE_FORMATS = ("png", "svg")  # every figure is written in both
DPI = 150
TSNE_MAX_CODES = 5000  # above this, the map uses PCA (t-SNE: ~20 s for 3,400 codes on one core)
MAP_CATEGORIES = 12  # categories named in the map's legend; the rest are "other"
# tab10 without its grey (kept for "other"), then three distinct darker tones: 12 colours.
CATEGORY_COLORS = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
    "#e377c2", "#bcbd22", "#17becf", "#393b79", "#e7ba52", "#637939",
]  # fmt: skip
GROUP_NAMES = group_names("\n")
RELATION_COLORS = {
    "self": "#d62728",
    "ancestor": "#1f77b4",
    "descendant": "#2ca02c",
    "sibling": "#ff7f0e",
    "cousin": "#9467bd",
    "other": "#7f7f7f",
}


# ----------------------------------------------------------------------------- run files
@dataclass
class RunFiles:
    """What a run folder holds, read without building the model."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: pd.DataFrame
    vocab: pd.DataFrame

    @property
    def label(self) -> str:
        return run_label(self.config)

    def embeddings(self) -> np.ndarray:
        path = self.path / EMBEDDINGS
        if not path.is_file():
            raise HapnetError(f"{path}: missing (the run did not finish?)")
        values = read_matrix(path)
        if len(values) != len(self.vocab):
            raise HapnetError(
                f"{path}: shape {values.shape} does not match {len(self.vocab)} codes in vocab.csv"
            )
        return values


# The config.json settings the figures read, and their JSON types (absent is fine: defaults).
CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "ontology": (str,),
    "pretrain": (str, type(None)),
    "levels": (int, type(None)),
    "aux_levels": (list, type(None)),
    "time_input": (bool, type(None)),
    "k": (int,),
    "seed": (int,),
}
HISTORY_COLUMNS = ("epoch", "train_loss", "valid_loss", "valid_accuracy")  # test_accuracy: optional


def read_run_files(run_dir: str | Path) -> RunFiles:
    """A run folder's files, each checked for what the figures read: a damaged file is refused
    in one line naming it, before anything is drawn."""
    path = Path(run_dir)
    if not is_run_dir(path):
        raise HapnetError(f"{path}: not a hapnet run folder (expected {CONFIG}, {VOCAB} and checkpoint.pt)")
    config = _read_config(path / CONFIG)
    metrics = read_metrics(path / METRICS) if (path / METRICS).is_file() else {}
    history = pd.DataFrame()
    if (path / HISTORY).is_file():
        history = _read_csv(path / HISTORY, "history", HISTORY_COLUMNS)
        numeric = [*HISTORY_COLUMNS, *(["test_accuracy"] if "test_accuracy" in history else [])]
        text = [c for c in numeric if not pd.api.types.is_numeric_dtype(history[c])]
        if text:
            raise InputError(path / HISTORY, f"not a hapnet history file (column {text[0]} is not numbers)")
    vocab = _read_csv(path / VOCAB, "vocabulary", ("code",), dtype={"code": str}, keep_default_na=False)
    return RunFiles(path, config, metrics, history, vocab)


def _read_config(path: Path) -> dict[str, Any]:
    def bad(reason: str) -> InputError:
        return InputError(path, f"not a hapnet run configuration ({reason})")

    config = read_json_object(path, "a hapnet run configuration")
    for key, types in CONFIG_TYPES.items():
        value = config.get(key)
        if key in config and (
            not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        ):
            raise bad(f"`{key}` is {value!r}")
    return config


def _read_csv(path: Path, what: str, columns: Sequence[str], **options: Any) -> pd.DataFrame:
    """A run's CSV file with (at least) `columns`; anything else is refused naming the file."""
    try:
        frame = pd.read_csv(path, **options)
    except ValueError as exc:  # pandas' parser errors, an empty file, undecodable text
        raise InputError(path, f"not a hapnet {what} file ({error_summary(exc)})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(path, f"not a hapnet {what} file (no column {', '.join(missing)})")
    return frame


# ----------------------------------------------------------------------------- writing
def save_figure(figure: Figure, stem: Path, *, force: bool = False) -> list[Path]:
    """Write `stem.png` and `stem.svg` atomically; closes the figure."""
    written = []
    try:
        for fmt in FIGURE_FORMATS:
            target = stem.with_name(f"{stem.name}.{fmt}")
            with atomic_path(target, overwrite=force) as tmp:
                figure.savefig(tmp, format=fmt, dpi=DPI, bbox_inches="tight")
            written.append(target)
    finally:
        plt.close(figure)
    return written


def _check_free(stems: Sequence[Path], force: bool) -> None:
    """Refuse before drawing anything, so that no half of a set of figures is replaced, and no
    figure is drawn that cannot be written (`check_output_location`)."""
    for stem in stems:
        for fmt in FIGURE_FORMATS:
            check_output_location(stem.with_name(f"{stem.name}.{fmt}"), force=force)


# ----------------------------------------------------------------------------- learning curves
def learning_curves_figure(run: RunFiles) -> Figure:
    """Loss (train, validation) and accuracy@k (validation, test) per epoch; best epoch marked."""
    history = run.history
    if history.empty or "epoch" not in history:
        raise HapnetError(f"{run.path}: history.csv is missing or empty (no finished epoch)")
    k = run.config.get("k", 20)
    best = run.metrics.get("best_epoch")
    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    epochs = history["epoch"]
    marker = "o" if len(history) <= 30 else None
    loss_ax.plot(epochs, history["train_loss"], marker=marker, label="train")
    loss_ax.plot(epochs, history["valid_loss"], marker=marker, label="validation")
    loss_ax.set(title="Loss", xlabel="epoch", ylabel="loss (mean per patient)")
    acc_ax.plot(epochs, history["valid_accuracy"], marker=marker, label="validation")
    if "test_accuracy" in history:
        acc_ax.plot(epochs, history["test_accuracy"], marker=marker, label="test")
    acc_ax.set(title=f"Accuracy@{k}", xlabel="epoch", ylabel=f"accuracy@{k}")
    for ax in (loss_ax, acc_ax):
        if best is not None:
            ax.axvline(best, color="grey", linestyle="--", linewidth=1, label=f"best epoch ({best})")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
    figure.suptitle(f"{run.label}: learning curves ({run.path.name})")
    return figure


# ----------------------------------------------------------------------------- accuracy by group
def group_accuracy_figure(runs: Sequence[RunFiles]) -> Figure:
    """Test accuracy@k per frequency group and overall, one bar per run, side by side."""
    labels = unique_labels(runs)
    k_values = {r.metrics.get("k", r.config.get("k")) for r in runs}
    k = k_values.pop() if len(k_values) == 1 else "k"
    rows = []
    for run in runs:
        test = run.metrics.get("test")
        if not test:
            raise HapnetError(f"{run.path}: metrics.json has no test results (the run did not finish?)")
        rows.append([*test["accuracy_by_group"], test["accuracy"]])
    values = np.array(rows, dtype=np.float64)  # [runs, groups + overall]
    names = [*GROUP_NAMES, "overall"]
    x = np.arange(len(names))
    width = 0.8 / len(runs)
    figure, ax = plt.subplots(figsize=(8.5 + 0.9 * max(0, len(runs) - 2), 4.8), layout="constrained")
    colors = plt.get_cmap("tab10")
    rotate = len(runs) > 3  # narrow bars: vertical value labels
    for i, (label, row) in enumerate(zip(labels, values, strict=True)):
        bars = ax.bar(
            x - 0.4 + width * (i + 0.5), np.nan_to_num(row), width, label=label, color=colors(i % 10)
        )
        if len(runs) <= 6:
            text = ["n/a" if math.isnan(v) else f"{v:.3f}" for v in row]
            ax.bar_label(bars, labels=text, fontsize=7, padding=2, rotation=90 if rotate else 0)
    ax.axvline(len(GROUP_NAMES) - 0.5, color="grey", linewidth=0.8)
    ax.set_xticks(x, names)
    top = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
    ax.set_ylim(0, top * (1.22 if rotate else 1.1) + 0.01)  # room for the value labels
    ax.set(xlabel="code frequency group (by training target count)", ylabel=f"test accuracy@{k}")
    ax.set_title(f"Test accuracy@{k} by code frequency group")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5), title="run")
    return figure


def unique_labels(runs: Sequence[RunFiles]) -> list[str]:
    """Model labels; where two runs share one, the folder name (and its parent's) tells them apart."""
    labels = [r.label for r in runs]
    names = [r.path.name for r in runs]
    result = []
    for label, name, run in zip(labels, names, runs, strict=True):
        if labels.count(label) > 1:
            clash = sum(1 for other, n in zip(labels, names, strict=True) if other == label and n == name) > 1
            label = f"{label} [{run.path.parent.name}/{name}]" if clash else f"{label} [{name}]"
        result.append(label)
    return result


# ----------------------------------------------------------------------------- embedding map
def top_categories(ontology: Ontology, nodes: np.ndarray) -> tuple[np.ndarray, int]:
    """The top-level category (level-1 ancestor) of each node and the level used.

    With several parents the category of the first one is used. When level 1 holds fewer than 3
    categories for these codes (e.g. only ICD9 and ICD10 in `icd9-icd10`), level 2 is used.
    """
    nodes = np.asarray(nodes, dtype=np.int64)
    for level in (1, 2):
        category = np.full(len(ontology), -1, dtype=np.int64)
        at_level = ontology.levels == level
        category[at_level] = np.flatnonzero(at_level)
        # Nodes are sorted by level: walking child levels upwards copies each parent's category down.
        child_level = ontology.levels[ontology.edge_child]
        for deeper in range(level + 1, ontology.depth + 1):
            mask = child_level == deeper
            parents, children = ontology.edge_parent[mask], ontology.edge_child[mask]
            known = category[parents] >= 0
            # The first parent wins: assign in reverse so earlier edges overwrite later ones.
            category[children[known][::-1]] = category[parents[known][::-1]]
        found = category[nodes]
        if len(np.unique(found[found >= 0])) >= 3 or level == 2 or ontology.depth < 3:
            return found, level
    raise AssertionError("unreachable")  # pragma: no cover


def project_2d(embeddings: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates: t-SNE (PCA to 50 dimensions first), or PCA alone for many codes."""
    from sklearn.decomposition import PCA  # scikit-learn (~1 s to import): only for the embedding map

    n = len(embeddings)
    if method not in ("auto", "tsne", "pca"):
        raise HapnetError(f"--map must be auto, tsne or pca, got {method!r}")
    if method == "auto":
        method = "pca" if n > TSNE_MAX_CODES or n < 10 else "tsne"
    x = np.asarray(embeddings, dtype=np.float64)
    if n < 3:
        raise HapnetError(f"only {n} codes: too few for a map")
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(x), "PCA"
    from sklearn.manifold import TSNE  # as above: loaded only when a t-SNE map is drawn
    from threadpoolctl import threadpool_limits

    if x.shape[1] > 50 and n > 50:
        x = PCA(n_components=50, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    # One OpenMP thread: on a busy machine the threads' busy-waiting made t-SNE 7x slower.
    with threadpool_limits(limits=1, user_api="openmp"):
        return tsne.fit_transform(x), "t-SNE"


def short(text: str, width: int) -> str:
    return textwrap.shorten(text, width=width, placeholder="…") if text else ""


def embedding_map_figure(run: RunFiles, ontology: Ontology, method: str = "auto") -> Figure:
    """The code embeddings in 2-D, coloured by top-level category (the largest 12, then "other")."""
    embeddings = run.embeddings()
    nodes = np.array([ontology.find(c) if ontology.find(c) is not None else -1 for c in run.vocab["code"]])
    if (nodes < 0).any():
        missing = run.vocab["code"][nodes < 0].iloc[0]
        raise HapnetError(f"{run.path}: code {missing!r} of vocab.csv is not in ontology {ontology.name}")
    xy, method_name = project_2d(embeddings, method, seed=int(run.config.get("seed", 0)))
    category, level = top_categories(ontology, nodes)
    counts = pd.Series(category[category >= 0]).value_counts()
    named = list(counts.index[:MAP_CATEGORIES])
    palette = [CATEGORY_COLORS[i % len(CATEGORY_COLORS)] for i in range(len(named))]
    color_of = {node: palette[i] for i, node in enumerate(named)}
    other = "#c8c8c8"
    point_colors = [color_of.get(c, other) for c in category]
    rest = ~np.isin(category, named)
    # Other codes underneath; the named categories on top in random order, so none hides another.
    order = np.concatenate(
        [np.flatnonzero(rest), np.random.default_rng(0).permutation(np.flatnonzero(~rest))]
    )
    figure, ax = plt.subplots(figsize=(11, 7.5), layout="constrained")
    size = float(np.clip(6000 / max(len(nodes), 1), 6, 40))
    ax.scatter(*xy[order].T, s=size, c=[point_colors[i] for i in order], alpha=0.85, linewidths=0)
    handles = [
        plt.Line2D([], [], marker="o", linestyle="", color=palette[i], markersize=7)
        for i in range(len(named))
    ]
    labels = [
        f"{short(ontology.descriptions[node] or ontology.ids[node], 42)} ({(category == node).sum():,})"
        for node in named
    ]
    if rest.any():
        handles.append(plt.Line2D([], [], marker="o", linestyle="", color=other, markersize=7))
        labels.append(f"other ({rest.sum():,})")
    ax.legend(
        handles,
        labels,
        title=f"level-{level} category (codes)",
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        frameon=False,
        fontsize=9,
    )
    ax.set(xlabel=f"{method_name} 1", ylabel=f"{method_name} 2", xticks=[], yticks=[])
    ax.set_title(f"{run.label}: {method_name} map of {len(nodes):,} code embeddings ({run.path.name})")
    return figure


# ----------------------------------------------------------------------------- explanation
def explanation_figure(explanation: Explanation, k: int = 15) -> Figure:
    """Horizontal bars: the k largest weights of the explained code's embedding, by relation."""
    rows = explanation.nodes.head(k).iloc[::-1]
    labels = [
        f"{c}  {short(d, 45)}" if d else c for c, d in zip(rows["code"], rows["description"], strict=True)
    ]
    height = 1.2 + 0.32 * len(rows)
    figure, ax = plt.subplots(figsize=(10, max(3.0, height)), layout="constrained")
    colors = [RELATION_COLORS.get(r, "#7f7f7f") for r in rows["relation"]]
    bars = ax.barh(np.arange(len(rows)), rows["weight"], color=colors)
    ax.bar_label(bars, labels=[f"{w:.3f}" for w in rows["weight"]], padding=3, fontsize=8)
    ax.set_yticks(np.arange(len(rows)), labels, fontsize=9)
    ax.set_xlim(0, min(1.0, float(rows["weight"].max()) * 1.18 + 1e-9))
    ax.set_xlabel("weight of the node's base embedding in the code's final embedding")
    # Every relation with weight, with its totals: the bars show only the top nodes.
    totals = explanation.by_relation()
    handles = [plt.Rectangle((0, 0), 1, 1, color=RELATION_COLORS.get(r, "#7f7f7f")) for r in totals]
    texts = [
        f"{r}: {t['nodes']:,} node{'s' if t['nodes'] != 1 else ''}, total {t['weight']:.3f}"
        for r, t in totals.items()
    ]
    figure.legend(
        handles,
        texts,
        title="relation to the code (all nodes)",
        loc="outside lower center",
        ncols=min(3, len(texts)),
        frameon=False,
        fontsize=9,
    )
    ax.grid(axis="x", alpha=0.3)
    title = f"{explanation.label}: where the embedding of {explanation.code} comes from"
    if explanation.description:
        title += "\n" + short(explanation.description, 80)
    ax.set_title(title)
    return figure


def plot_explanation(explanation: Explanation, path: str | Path, k: int = 15, *, force: bool = False) -> Path:
    """Write the explanation's bar chart to `path` (format from its suffix: .png, .svg, .pdf)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    if fmt not in ("png", "svg", "pdf"):
        raise HapnetError(f"{path}: use a .png, .svg or .pdf file name")
    check_output_location(path, force=force)
    figure = explanation_figure(explanation, k)
    try:
        with atomic_path(path, overwrite=force) as tmp:
            figure.savefig(tmp, format=fmt, dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path


# ----------------------------------------------------------------------------- all of a run
def plot_runs(
    run_dirs: Sequence[Run | str | Path],
    out: str | Path | None = None,
    *,
    map_method: str = "auto",
    force: bool = False,
) -> list[Path]:
    """Learning curves and embedding map of the first run, accuracy by group of all runs.

    Writes learning_curves, accuracy_by_group and embedding_map (.png and .svg) into `out`
    (default RUN_DIR/plots) and returns the paths written.
    """
    if not run_dirs:
        raise HapnetError("no run folder given")
    runs = [read_run_files(d.path if isinstance(d, Run) else d) for d in run_dirs]
    main = runs[0]
    folder = Path(out) if out is not None else main.path / "plots"
    stems = [folder / "learning_curves", folder / "accuracy_by_group", folder / "embedding_map"]
    _check_free(stems, force)
    figures = [learning_curves_figure(main), group_accuracy_figure(runs)]
    ontology = run_ontology(main.path, main.config)  # the one it trained on, not today's file
    figures.append(embedding_map_figure(main, ontology, map_method))
    written: list[Path] = []
    for figure, stem in zip(figures, stems, strict=True):
        written += save_figure(figure, stem, force=force)
    return written
