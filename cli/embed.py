"""`hapnet embed` and `hapnet neighbors`: code embeddings as files, and nearest codes by cosine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

import hapnet
from hapnet.cli.common import FLAG, TRAIN_DEFAULTS, ConfigOpt, console, loss_progress, user_errors
from hapnet.embeddings.config import EmbedConfig
from hapnet.embeddings.formats import check_writable
from hapnet.utils.paths import check_output_location
from hapnet.utils.textio import atomic_path

if TYPE_CHECKING:  # torch and pandas load only when a command runs
    from hapnet.embeddings.structure import EmbedResult

DEFAULTS = EmbedConfig()  # the library's defaults, shown in the help
OUT_HELP = (
    "Output file; the format follows the suffix: .parquet/.csv (code, description, level, is_leaf, "
    "e0..e{D-1}), .npy (+ .codes.txt), .txt/.w2v (word2vec text), .tsv (TensorBoard projector + "
    ".metadata.tsv). Default: <ontology name>.embeddings.parquet"
)


@user_errors
def embed(
    source: Annotated[
        str, typer.Argument(help="Built-in ontology name (see `hapnet ontology list`) or a file.")
    ],
    out: Annotated[Path | None, typer.Option("-o", "--out", help=OUT_HELP)] = None,
    dim: Annotated[
        int | None,
        typer.Option(
            help=f"Embedding size d (default {DEFAULTS.dim}): structure-only embeddings, the size their "
            "reconstruction figures are measured at (docs/embeddings.md); `hapnet train` uses "
            f"{TRAIN_DEFAULTS.dim}, the paper's size for next-visit prediction."
        ),
    ] = None,
    levels: Annotated[
        int | None, typer.Option(help="HAP propagates over the lowest K levels only (default: all).")
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(help=f"Full-batch training steps, at least 1 (default {DEFAULTS.epochs})."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help=f"Random seed (default {DEFAULTS.seed}).")] = None,
    device: Annotated[
        str | None, typer.Option(help=f"auto, cpu or cuda (default {DEFAULTS.device}).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(help=f"Embedder from `hapnet models` (default {DEFAULTS.model}; rnn = no propagation)."),
    ] = None,
    from_run: Annotated[
        Path | None,
        typer.Option(
            "--from-run",
            help="Export a trained run's final embeddings instead of training (default: train here).",
        ),
    ] = None,
    metrics: Annotated[
        Path | None, typer.Option("--metrics", help="Also write the figures as JSON (default: none).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite existing output files.", metavar=FLAG)
    ] = False,
    config_file: ConfigOpt = None,
) -> None:
    """Embeddings of every code of an ontology, learned from its structure (HAP propagation) or
    exported from a trained run, with how well they recover the ontology (MAP, mean rank)."""

    settings = EmbedConfig.from_file(config_file) if config_file is not None else None  # options override it
    ontology = hapnet.load_ontology(source)
    out = out or Path(f"{ontology.name}.embeddings.parquet")
    check_writable(out, force)
    if metrics is not None:
        check_output_location(metrics, force=force)

    progress = loss_progress("training")
    task = None

    def on_epoch(epoch: int, total: int, loss: float) -> None:
        nonlocal task
        if task is None:
            progress.start()
            task = progress.add_task("train", total=total, loss=loss)
        progress.update(task, completed=epoch, loss=loss)

    try:
        result = hapnet.embed(
            ontology,
            dim=dim,
            levels=levels,
            epochs=epochs,
            seed=seed,
            device=device,
            model=model,
            from_run=from_run,
            callback=on_epoch,
            config=settings,
        )
    finally:
        progress.stop()
    written = result.save(out, force=force)
    if metrics is not None:
        with atomic_path(metrics, overwrite=force) as tmp:
            tmp.write_text(json.dumps(result.metrics, indent=2) + "\n")
        written.append(metrics)
    console.print(figures_table(result, ontology.name))
    for path in written:
        console.print(f"wrote [bold]{escape(str(path))}[/]")


def figures_table(result: EmbedResult, name: str) -> Table:
    table = Table(
        title=f"{escape(name)}: {len(result.table):,} codes x {result.table.dim}", show_header=False
    )
    rec = result.reconstruction
    if rec is not None:
        table.add_row("MAP (neighbours = parents + children, cosine)", f"{rec.map:.4f}")
        table.add_row("mean rank", f"{rec.mean_rank:.3f}")
        table.add_row("nodes / ranked pairs", f"{rec.nodes:,} / {rec.pairs:,}")
    source = "export" if "from_run" in result.settings else "training"
    table.add_row(
        f"seconds ({source} + evaluation)", f"{result.train_seconds:.1f} + {rec.seconds if rec else 0:.1f}"
    )
    return table


@user_errors
def neighbors(
    embeddings: Annotated[
        Path, typer.Argument(help="An embeddings file written by `hapnet embed`, any format.")
    ],
    code: Annotated[str, typer.Argument(help="A code or category id, dotted or not.")],
    k: Annotated[int, typer.Option("-k", "--k", help="How many neighbours (at least 1).")] = 10,
) -> None:
    """The codes nearest to CODE by cosine similarity, with their descriptions."""
    query, frame = hapnet.neighbors(embeddings, code, k=k)
    level = f" (level {query['level']})" if query["level"] >= 0 else ""
    table = Table(
        "rank",
        "code",
        "description",
        "level",
        "cosine",
        title=f"Nearest to {escape(str(query['code']))} {escape(str(query['description']))}{level}",
    )
    for row in frame.itertuples(index=False):
        table.add_row(
            str(row.rank),
            escape(str(row.code)),
            escape(str(row.description)),
            str(row.level) if row.level >= 0 else "",
            f"{row.similarity:.4f}",
        )
    console.print(table)
