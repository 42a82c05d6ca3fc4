"""`hapnet synth`: write a synthetic EHR data set (long CSV + synth.json) to a new folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from hapnet.cli.common import console, user_errors
from hapnet.data import synth as generator


@user_errors
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to create (must not exist).")],
    ontology: Annotated[
        str, typer.Option("--ontology", help="Built-in ontology name or ontology file the codes come from.")
    ] = generator.DEFAULT_ONTOLOGY,
    patients: Annotated[int, typer.Option("--patients", min=1, help="Number of patients.")] = (
        generator.DEFAULT_PATIENTS
    ),
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives the same data.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace the folder if it exists.")] = False,
) -> None:
    """Generate synthetic patients (visits of ontology codes) shaped like MIMIC-III."""
    folder = generator.write_synth(out, ontology, patients, seed, force=force)
    manifest = json.loads((folder / generator.MANIFEST).read_text(encoding="utf-8"))
    table = Table(title="Synthetic data", show_header=False)
    table.add_row("ontology", escape(manifest["ontology"]))
    table.add_row("patients", f"{manifest['patients']:,}")
    table.add_row("visits", f"{manifest['visits']:,}")
    table.add_row("rows (codes)", f"{manifest['rows']:,}")
    table.add_row("distinct codes", f"{manifest['distinct_codes']:,}")
    table.add_row("codes per visit", f"{manifest['codes_per_visit']:.2f}")
    table.add_row("seed", str(manifest["seed"]))
    console.print(table)
    console.print(f"wrote {escape(str(folder / manifest['file']))} and {generator.MANIFEST}", soft_wrap=True)
