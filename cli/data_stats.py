"""`hapnet data-stats DATA`: the aggregate figures of a data set, optionally against a reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from hapnet.cli.common import AsJson, ColumnsOpt, OntologyOpt, UnknownOpt, console, user_errors
from hapnet.data.long_csv import parse_columns
from hapnet.data.stats import REFERENCES, data_stats, load_stats, relative_differences
from hapnet.data.table import DEFAULT_UNKNOWN
from hapnet.ontology.builtins import DEFAULT_ONTOLOGY


@user_errors
def data_stats_command(
    data: Annotated[
        Path,
        typer.Argument(metavar="DATA", help="MIMIC-III/IV folder, long CSV or `hapnet synth` folder."),
    ],
    ontology: OntologyOpt = DEFAULT_ONTOLOGY,
    columns: ColumnsOpt = None,
    unknown: UnknownOpt = DEFAULT_UNKNOWN,
    compare: Annotated[
        str | None,
        typer.Option(
            help="Reference figures: a `data-stats --json` file or a bundled name "
            f"({', '.join(REFERENCES)}); default: none."
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Aggregate figures of a data set: visits per patient, codes per visit, code frequencies,
    how much of each next visit the patient had before (no record is printed)."""
    stats = data_stats(data, ontology, columns=parse_columns(columns), unknown=unknown)
    reference = load_stats(compare) if compare else None
    if as_json:
        out = stats.to_dict()
        if reference is not None:
            out = {
                "stats": out,
                "reference": reference.to_dict(),
                "relative_difference": _rounded(stats, reference),
            }
        console.print_json(json.dumps(out))
        return
    table = Table(title=f"Data statistics: {escape(str(data))}")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    if reference is not None:
        table.add_column(f"reference ({escape(str(compare))})", justify="right")
        table.add_column("rel. diff", justify="right")
    ref = reference.flat() if reference is not None else {}
    diffs = relative_differences(stats, reference) if reference is not None else {}
    for key, value in stats.flat().items():
        row = [key, _format(value)]
        if reference is not None:
            diff = diffs[key]
            text = "n/a" if diff is None else f"{diff:+.1%}"
            row += [_format(ref[key]), f"[red]{text}[/]" if diff is not None and abs(diff) > 0.1 else text]
        table.add_row(*row)
    console.print(table)


def _format(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:.4g}"


def _rounded(stats, reference) -> dict:  # noqa: ANN001 - DataStats, kept local to the command
    return {k: None if d is None else round(d, 4) for k, d in relative_differences(stats, reference).items()}
