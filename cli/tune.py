"""`hapnet tune`: options in, one library call (`hapnet.tune`), a table of the trials out."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from hapnet.cli.common import (
    FLAG,
    ColumnsOpt,
    ConfigOpt,
    DeviceOpt,
    LevelsOpt,
    ModelOpt,
    OntologyOpt,
    SynthPatientsOpt,
    ThreadsOpt,
    UnknownOpt,
    console,
    typed_options,
    user_errors,
)
from hapnet.cli.common import TRAIN_DEFAULTS as DEFAULTS
from hapnet.training.config import ONTOLOGY_SCOPES, make_config
from hapnet.training.progress import format_score
from hapnet.training.tune import (
    DEFAULT_OBJECTIVE,
    DEFAULT_SPACE,
    DEFAULT_TRIALS,
    OBJECTIVES,
    SPACES,
    TuneProgress,
    default_study_name,
)

if TYPE_CHECKING:
    import pandas as pd

    from hapnet.training.tune import TuneResult
    from hapnet.utils.threads import CoreShare


class RichTuneProgress(TuneProgress):
    """The library's line per trial on the CLI's console; with `--threads auto`, the threads
    adapted to the free cores before every epoch."""

    def __init__(self, share: CoreShare | None = None) -> None:
        super().__init__(console)
        self.share = share

    def on_epoch_start(self, number: int, epoch: int) -> None:
        from hapnet.utils.threads import adapt_threads  # torch: loaded once a study runs

        adapt_threads(self.share)


@user_errors
def tune(
    ctx: typer.Context,
    trials: Annotated[
        int | None,
        typer.Option(
            help="Trials this command runs; a continued study adds them to its own (default "
            f"{DEFAULT_TRIALS}; with --timeout: as many as start in time)."
        ),
    ] = None,
    timeout: Annotated[
        str | None,
        typer.Option(
            help="Start no trial after this long: seconds or 90s, 30m, 2h (default: no limit; the "
            "running trial finishes)."
        ),
    ] = None,
    objective: Annotated[
        str,
        typer.Option(help="; ".join(f"{name}: the {o.text}" for name, o in OBJECTIVES.items()) + "."),
    ] = DEFAULT_OBJECTIVE,
    space: Annotated[
        str,
        typer.Option(
            help=f"Search space: {' or '.join(SPACES)} (tiny: small sizes, to try it out in seconds; "
            "docs/tuning.md)."
        ),
    ] = DEFAULT_SPACE,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna storage URL, e.g. sqlite:///tune.db, or a PostgreSQL/MySQL URL that several "
            "machines share (default: OUT/study.db)."
        ),
    ] = None,
    study_name: Annotated[
        str | None,
        typer.Option(
            "--study-name",
            help="The study in the storage; an existing one is continued (default MODEL-OBJECTIVE, "
            "e.g. hap-valid-loss).",
        ),
    ] = None,
    sampler_seed: Annotated[
        int | None,
        typer.Option(
            "--sampler-seed",
            help="Seed of the TPE sampler; give each machine of a shared study its own (default: --seed).",
        ),
    ] = None,
    importance: Annotated[
        bool,
        typer.Option(
            "--importance", help="Also write OUT/importance.png, Optuna's parameter importance.", metavar=FLAG
        ),
    ] = False,
    data: Annotated[
        Path | None,
        typer.Option(
            help="The data every trial trains on, as `hapnet train --data` (default: built-in "
            "synthetic data)."
        ),
    ] = None,
    ontology: OntologyOpt = DEFAULTS.ontology,
    model: ModelOpt = DEFAULTS.model,
    levels: LevelsOpt = None,
    ontology_scope: Annotated[
        str | None,
        typer.Option(
            "--ontology-scope",
            help=f"{' or '.join(ONTOLOGY_SCOPES)}, as `hapnet train` (default {DEFAULTS.ontology_scope}).",
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(help=f"Epochs of each trial at most (default {DEFAULTS.epochs}; see --patience)."),
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(
            help="Stop a trial after this many epochs without a lower validation loss; 0: never "
            f"(default {DEFAULTS.patience})."
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Random seed of every trial (one split for all: scores compare).")
    ] = DEFAULTS.seed,
    k: Annotated[
        int, typer.Option("-k", "--k", help="k of accuracy@k (objective valid_accuracy; at least 1).")
    ] = DEFAULTS.k,
    device: DeviceOpt = DEFAULTS.device,
    threads: ThreadsOpt = "auto",
    unknown: UnknownOpt = DEFAULTS.unknown,
    columns: ColumnsOpt = None,
    synth_patients: SynthPatientsOpt = None,
    config_file: ConfigOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Folder for best_config.json, importance.png, study.db (default tune/STUDY)."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Use OUT even if it holds something else (its earlier tune files are replaced).",
            metavar=FLAG,
        ),
    ] = False,
) -> None:
    """Search training settings with Optuna (resumable; several machines can share a study)."""
    # torch and optuna load here, when the command runs, not at start-up of every `hapnet` command
    from hapnet.data.long_csv import parse_columns
    from hapnet.training.tune import tune as run_study
    from hapnet.utils.threads import torch_threads

    settings = dict(
        data=str(data) if data else None,
        ontology=ontology,
        model=model,
        levels=levels,
        ontology_scope=ontology_scope,
        epochs=epochs,
        patience=patience,
        seed=seed,
        k=k,
        device=device,
        unknown=unknown,
        columns=parse_columns(columns),
        synth_patients=synth_patients,
    )
    if config_file is not None:  # the file, then what was typed: a default never overrides it
        settings = typed_options(ctx, settings)
    config = make_config(config_file=config_file, **settings)
    study_name = study_name or default_study_name(config, objective)
    out = out or Path("tune") / study_name
    with torch_threads(threads) as share:
        result = run_study(
            config,
            trials=trials,
            timeout=timeout,
            objective=objective,
            storage=storage,
            study_name=study_name,
            out=out,
            force=force,
            space=space,
            sampler_seed=sampler_seed,
            importance=importance,
            callbacks=RichTuneProgress(share),
        )
    show_result(result)


META_COLUMNS = ("number", "state", "value", "best_epoch", "epochs_run", "seconds")


def trials_table(trials: pd.DataFrame, objective: str, best: int | None) -> Table:
    """Every trial of the study: number, state, score, its settings, best epoch, epochs, seconds."""
    settings = [c for c in trials.columns if c not in META_COLUMNS]
    table = Table("trial", "state", objective, *settings, "best epoch", "epochs", "seconds", title="Trials")
    for row in trials.itertuples(index=False):
        values = row._asdict()
        mark = " *" if values["number"] == best else ""
        table.add_row(
            f"{values['number']}{mark}",
            values["state"].lower(),
            format_score(values["value"]),
            *[_cell(values[c]) for c in settings],
            _cell(values["best_epoch"]),
            _cell(values["epochs_run"]),
            _cell(values["seconds"], "{:.1f}"),
        )
    return table


def _cell(value: Any, number: str = "{:.4g}") -> str:
    """A table cell: numbers to 4 significant digits (2.0 -> 2), – for none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return number.format(value) if isinstance(value, float) else str(value)


def show_result(result: TuneResult) -> None:
    console.print(trials_table(result.trials, result.objective, result.best_trial))
    if result.best_trial is None:
        console.print("no trial completed yet")
    else:
        console.print(
            f"best: trial {result.best_trial}, {result.objective} {format_score(result.best_value)}"
        )
    if "best_config" in result.files:
        path = result.files["best_config"]
        console.print(
            f"best config: [bold]{path}[/] (train it: hapnet train --config {path})", highlight=False
        )
    if "importance" in result.files:
        console.print(f"parameter importance: [bold]{result.files['importance']}[/]", highlight=False)
    console.print(f"tune folder: [bold]{result.out}[/]", highlight=False)
