"""`hapnet synth`: write a synthetic EHR data set (long CSV + synth.json) to a new folder, shaped
like MIMIC-III or, with `--like DATA`, fitted to the aggregate figures of the user's data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from hapnet.cli.common import FLAG, ColumnsOpt, UnknownOpt, console, user_errors
from hapnet.data import synth as generator
from hapnet.data.long_csv import parse_columns
from hapnet.data.synth_fit import write_synth_like
from hapnet.data.table import DEFAULT_UNKNOWN


@user_errors
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to create (must not exist).")],
    ontology: Annotated[
        str, typer.Option("--ontology", help="Built-in ontology name or ontology file the codes come from.")
    ] = generator.DEFAULT_ONTOLOGY,
    patients: Annotated[
        int | None,
        typer.Option(
            "--patients",
            min=1,
            help=f"Number of patients (default {generator.DEFAULT_PATIENTS:,}; with --like, the source's).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same data.")] = 0,
    like: Annotated[
        Path | None,
        typer.Option(
            "--like",
            help="Fit the generator to this data's aggregate figures (`hapnet data-stats`); "
            "no record of it is copied (default: MIMIC-III's figures).",
        ),
    ] = None,
    columns: ColumnsOpt = None,
    unknown: UnknownOpt = DEFAULT_UNKNOWN,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the folder if it exists.", metavar=FLAG)
    ] = False,
) -> None:
    """Generate synthetic patients (visits of ontology codes) shaped like MIMIC-III, or like DATA."""
    if like is None:
        folder = generator.write_synth(
            out, ontology, patients or generator.DEFAULT_PATIENTS, seed, force=force
        )
    else:
        with console.status("fitting the generator to the source's figures"):
            folder, fit = write_synth_like(
                like,
                out,
                ontology,
                patients=patients,
                seed=seed,
                columns=parse_columns(columns),
                unknown=unknown,
                force=force,
            )
        name, diff = fit.worst
        console.print(f"fitted in {fit.evaluations} runs; furthest figure: {name} {diff:+.1%}")
    manifest = json.loads((folder / generator.MANIFEST).read_text(encoding="utf-8"))
    table = Table(title="Synthetic data", show_header=False)
    table.add_row("ontology", escape(manifest["ontology"]))
    table.add_row("patients", f"{manifest['patients']:,}")
    table.add_row("visits", f"{manifest['visits']:,}")
    table.add_row("rows (codes)", f"{manifest['rows']:,}")
    table.add_row("distinct codes", f"{manifest['distinct_codes']:,}")
    table.add_row("codes per visit", f"{manifest['codes_per_visit']:.2f}")
    table.add_row("seed", str(manifest["seed"]))
    if like is not None:
        table.add_row("like", escape(str(like)))
    console.print(table)
    console.print(f"wrote {escape(str(folder / manifest['file']))} and {generator.MANIFEST}", soft_wrap=True)
