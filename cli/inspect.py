"""`hapnet predict`, `hapnet explain` and `hapnet plot`: look inside a trained run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Column, Table
from rich.text import Text

from hapnet.cli.common import FLAG, TRAIN_DEFAULTS, AsJson, DeviceOpt, console, user_errors
from hapnet.errors import HapnetError
from hapnet.training.naming import group_names

GROUP_NAMES = group_names()
RELATION_STYLES = {
    "self": "bold red",
    "ancestor": "blue",
    "descendant": "green",
    "sibling": "yellow",
    "cousin": "magenta",
    "other": "dim",
}

RunDir = Annotated[Path, typer.Argument(help="A run folder written by `hapnet train`.")]
EXPLAIN_K = 15  # rows of the explain table: the largest weights; the rest are summed by relation


def _bar(fraction: float, width: int = 20) -> str:
    """A text bar for a share in [0, 1] (eighth blocks)."""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    return "█" * (eighths // 8) + ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")[eighths % 8]


@user_errors
def predict(
    run_dir: RunDir,
    history: Annotated[
        str | None,
        typer.Option(
            help='Visits oldest first, separated by ";", codes by ",": "4280,5849;4019,42731". '
            "No default: give --history or --patient."
        ),
    ] = None,
    patient: Annotated[
        str | None,
        typer.Option(help="A patient id of --data: use all their visits. No default: give it or --history."),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Visit data holding --patient: MIMIC folder, long CSV, synth folder. No default."),
    ] = None,
    k: Annotated[
        int | None,
        typer.Option(
            "-k", "--k", help="How many codes to list, at least 1 (default: the run's k of accuracy@k)."
        ),
    ] = None,
    device: DeviceOpt = TRAIN_DEFAULTS.device,
    as_json: AsJson = False,
) -> None:
    """The codes expected at a patient's next visit, most probable first."""
    # torch loads here, when the command runs
    from hapnet.errors import check_k
    from hapnet.inspect.predict import parse_history, patient_history, predict_next_visit
    from hapnet.training.runs import load
    from hapnet.utils.device import resolve_device

    if (history is None) == (patient is None):
        raise HapnetError("give either --history or --patient (with --data)")
    if patient is not None and data is None:
        raise HapnetError("--patient needs --data: the visit data the patient is in")
    if k is not None:
        check_k(k)  # before the run and the data load
    run = load(run_dir, device=str(resolve_device(device)))
    visits = parse_history(history) if history is not None else patient_history(run, data, patient)
    result = predict_next_visit(run, visits, k=k)
    if as_json:
        print(json.dumps(result.as_dict()))
        return
    who = f"patient {patient} of {data}" if patient is not None else "the given history"
    console.print(
        f"[bold]{run.config.model.upper()}[/] run [bold]{run_dir}[/]: next visit after {who} "
        f"({result.visits_used} visit{'s' if result.visits_used != 1 else ''}, "
        f"{sum(r.used for r in result.resolved)} codes used)",
        highlight=False,
    )
    for r in result.mapped():
        console.print(
            f"[dim]mapped:[/] {r.raw} -> {r.code} (nearest ancestor in the ontology)", highlight=False
        )
    for r in result.skipped():
        why = f"{r.code}: not in the run's vocabulary" if r.code else "not in the ontology"
        console.print(f"[yellow]skipped:[/] {r.raw} (visit {r.visit + 1}; {why})", highlight=False)
    table = Table(
        Column("rank", justify="right"),
        "code",
        "description",
        Column("probability", justify="right"),
        "frequency group",
        Column("train count", justify="right"),
    )
    for row in result.top.itertuples():
        table.add_row(
            str(row.rank),
            row.code,
            row.description,
            f"{row.probability:.4f}",
            GROUP_NAMES[row.group] if 0 <= row.group < len(GROUP_NAMES) else str(row.group),
            f"{row.train_count:,}",
        )
    console.print(table)


@user_errors
def explain(
    run_dir: RunDir,
    code: Annotated[str, typer.Argument(help="An ontology code, e.g. 4280 or CCS:7.2.11.")],
    k: Annotated[
        int, typer.Option("-k", "--k", help="How many nodes to list, largest weights first (at least 1).")
    ] = EXPLAIN_K,
    png: Annotated[
        Path | None,
        typer.Option(
            "--png", help="Also draw the top --k nodes as a bar chart, .png/.svg/.pdf (default: none)."
        ),
    ] = None,
    device: DeviceOpt = TRAIN_DEFAULTS.device,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing --png file.", metavar=FLAG)
    ] = False,
    as_json: AsJson = False,
) -> None:
    """Where a code's final embedding comes from: the weight of every node's base embedding."""
    from hapnet.errors import check_k
    from hapnet.inspect.explain import RELATION_HELP, explain_code  # torch: when the command runs
    from hapnet.training.runs import load
    from hapnet.utils.device import resolve_device
    from hapnet.utils.paths import check_output_location

    check_k(k)  # before the run loads
    if png is not None:
        check_output_location(png, force=force)
    result = explain_code(load(run_dir, device=str(resolve_device(device))), code)
    if png is not None:
        from hapnet.inspect.plots import plot_explanation  # matplotlib: only when a figure is asked for

        plot_explanation(result, png, k, force=force)
    if as_json:
        print(json.dumps({**result.as_dict(k), **({"png": str(png)} if png else {})}))
        return
    title = f"[bold]{result.code}[/] {result.description} (level {result.level})"
    if not result.in_vocabulary:
        title += " [yellow]- not in the run's vocabulary: the run never predicts it[/]"
    console.print(title, highlight=False)
    console.print(result.summary, highlight=False)
    if len(result.nodes) > 1:  # one node: the summary says it all
        totals = Table(
            "relation",
            Column("nodes", justify="right"),
            Column("total weight", justify="right"),
            "",
            "meaning",
            title="Weight by relation",
        )
        for relation, figures in result.by_relation().items():
            totals.add_row(
                Text(relation, style=RELATION_STYLES[relation]),
                f"{figures['nodes']:,}",
                f"{figures['weight']:.4f}",
                _bar(figures["weight"]),
                RELATION_HELP[relation],
            )
        console.print(totals)
    largest = float(result.nodes["weight"].iloc[0])
    shown = min(k, len(result.nodes))
    table = Table(
        Column("weight", justify="right"),
        "",
        "relation",
        Column("level", justify="right"),
        "code",
        "description",
        title=f"Top {shown} node{'s' if shown != 1 else ''}",
    )
    for row in result.nodes.head(k).itertuples():
        table.add_row(
            f"{row.weight:.4f}",
            _bar(row.weight / largest),
            Text(row.relation, style=RELATION_STYLES[row.relation]),
            str(row.level),
            row.code,
            row.description,
        )
    console.print(table)
    if png is not None:
        console.print(f"bar chart: [bold]{png}[/]")


@user_errors
def plot(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(help="Run folders: the first is plotted; all are compared in accuracy_by_group."),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for the figures (default RUN_DIR/plots).")
    ] = None,
    map_method: Annotated[
        str,
        typer.Option("--map", help="Embedding map: auto (t-SNE up to 5,000 codes, else PCA), tsne or pca."),
    ] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing figures.", metavar=FLAG)] = False,
) -> None:
    """Learning curves, accuracy by frequency group (several runs side by side) and an embedding map."""
    from hapnet.inspect.plots import plot_runs  # matplotlib and torch: when the command runs

    for path in plot_runs(run_dirs, out, map_method=map_method, force=force):
        console.print(f"wrote [bold]{path}[/]", highlight=False)
