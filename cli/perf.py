"""`hapnet bench` and `hapnet reproduce`: options in, one library call, rich output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from hapnet.cli.common import (
    FLAG,
    AsJson,
    BenchThreadsOpt,
    ConfigOpt,
    DeviceOpt,
    OntologyOpt,
    ThreadsOpt,
    console,
    err_console,
    typed_options,
    user_errors,
)
from hapnet.cli.common import TRAIN_DEFAULTS as DEFAULTS
from hapnet.cli.display import RichCallbacks
from hapnet.errors import HapnetError
from hapnet.perf.settings import BENCH_DEFAULTS
from hapnet.training.config import ONTOLOGY_SCOPES, PRESETS

PAPER = PRESETS["paper"]


def bench_default(name: str) -> str:
    return f" (default {BENCH_DEFAULTS[name]})"


NOISY_SPREAD = 1.5  # slowest / fastest repeat above this: warn that the figures are unsteady
PART_LABELS = {"propagation": "propagation", "train_step": "train step"}


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:,.0f}"


def bench_table(result: dict[str, Any]) -> Table:
    machine, data, settings = result["machine"], result["data"], result["settings"]
    caption = (
        f"{data['ontology']} ({data['nodes']:,} nodes, {data['codes']:,} codes), d={settings['dim']} "
        f"a={settings['attention_dim']} hidden={settings['hidden']}, batch {data['batch_patients']} patients "
        f"({data['batch_steps']} steps); {machine['device']}, {machine['threads']} threads, "
        f"matmul {machine['matmul_gflops']:.0f} GFLOP/s; median of {settings['repeats']} after warm-up "
        f"({settings['clock']} clock). "
        "propagation = embedder forward + backward; train step = embedder + GRU + output layer + "
        f"{settings['loss']} loss + {settings['optimizer']} step; "
        "GFLOP = the FLOP floor (fwd + bwd); % peak = GFLOP/s / matmul GFLOP/s."
    )
    table = Table(caption=caption, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("model", no_wrap=True)
    table.add_column("part", no_wrap=True)
    for column in ("ours ms", "naive ms", "speed-up", "GFLOP", "GFLOP/s", "% peak"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in result["rows"]:
        table.add_row(
            row["model"],
            PART_LABELS[row["part"]],
            _ms(row["ours_s"]),
            _ms(row["naive_s"]),
            "—" if row["speedup"] is None else f"{row['speedup']:.1f}×",
            f"{row['gflop']:.2f}",
            f"{row['ours_gflops']:.1f}",
            f"{100 * row['peak_fraction']:.1f}%",
        )
    return table


@user_errors
def bench(
    ontology: Annotated[
        str | None,
        typer.Option(help=f"{OntologyOpt.__metadata__[0].help}" + bench_default("ontology")),
    ] = None,
    model: Annotated[str | None, typer.Option(help="hap, gram or both." + bench_default("model"))] = None,
    dim: Annotated[
        int | None, typer.Option(help=f"Code embedding size d (default {PAPER['dim']}, the paper's).")
    ] = None,
    attention_dim: Annotated[
        int | None,
        typer.Option(
            "--attention-dim", help=f"Attention size a (default {PAPER['attention_dim']}, the paper's)."
        ),
    ] = None,
    hidden: Annotated[
        int | None, typer.Option(help=f"GRU hidden size (default {PAPER['hidden']}, the paper's).")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size", help=f"Patients per training step (default {PAPER['batch_size']}, the paper's)."
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help=f"{DeviceOpt.__metadata__[0].help}" + bench_default("device"))
    ] = None,
    repeats: Annotated[
        int | None, typer.Option(help="Timed runs (median) after one warm-up run." + bench_default("repeats"))
    ] = None,
    patients: Annotated[
        int | None,
        typer.Option(
            help="Synthetic patients, which set the code vocabulary"
            f" (default {BENCH_DEFAULTS['patients']:,}).",
        ),
    ] = None,
    matmul_size: Annotated[
        int | None,
        typer.Option(
            "--matmul-size",
            help="n of the n x n matmul that measures peak GFLOP/s." + bench_default("matmul_size"),
        ),
    ] = None,
    threads: BenchThreadsOpt = None,
    clock: Annotated[
        str | None,
        typer.Option(
            help="wall, or cpu: process CPU time (steadier on a shared machine)." + bench_default("clock")
        ),
    ] = None,
    naive: Annotated[
        bool, typer.Option("--naive/--no-naive", help="Also time the naive reference.", metavar=FLAG)
    ] = BENCH_DEFAULTS["naive"],
    as_json: AsJson = False,
) -> None:
    """Time propagation and one training step of HAP / GRAM against the naive reference port
    (defaults: the paper's sizes on MIMIC-III-sized synthetic data, `hapnet.bench`'s)."""
    from hapnet.perf.bench import bench as run_bench  # torch: when the command runs

    given = {
        "ontology": ontology,
        "model": model,
        "dim": dim,
        "attention_dim": attention_dim,
        "hidden": hidden,
        "batch_size": batch_size,
        "device": device,
        "repeats": repeats,
        "patients": patients,
        "threads": threads,
        "clock": clock,
        "matmul_size": matmul_size,
    }
    result = run_bench(naive=naive, **{name: value for name, value in given.items() if value is not None})
    if as_json:
        print(json.dumps(result))
        return
    console.print(bench_table(result))
    spread = max(row["spread"] for row in result["rows"])
    if spread > NOISY_SPREAD:
        err_console.print(
            f"[yellow]warning:[/] repeats differ up to {spread:.1f}x (a busy machine?); "
            "`--threads 1 --clock cpu` gives steadier figures",
            highlight=False,
        )


@user_errors
def reproduce(
    ctx: typer.Context,
    data: Annotated[
        Path | None,
        typer.Option(
            help="MIMIC-III folder or any data `hapnet train` reads (default: the `data` of --config)."
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the runs and the table.")] = Path(
        "reproduce"
    ),
    seeds: Annotated[str, typer.Option(help="Seeds, e.g. 0-4 or 0,1.")] = "0-4",
    configs: Annotated[
        str | None,
        typer.Option(help="Subset, e.g. hap,gram,rnn+ (default: all ten, keys above)."),
    ] = None,
    ontology: OntologyOpt = DEFAULTS.ontology,
    preset: Annotated[
        str, typer.Option(help="paper: the paper's settings; default: hapnet train's defaults.")
    ] = "paper",
    epochs: Annotated[
        int | None,
        typer.Option(help=f"Override the preset's epochs (default: the preset's; paper: {PAPER['epochs']})."),
    ] = None,
    dim: Annotated[
        int | None, typer.Option(help=f"Override d (default: the preset's; paper: {PAPER['dim']}).")
    ] = None,
    hidden: Annotated[
        int | None,
        typer.Option(help=f"Override GRU hidden (default: the preset's; paper: {PAPER['hidden']})."),
    ] = None,
    attention_dim: Annotated[
        int | None,
        typer.Option(
            "--attention-dim", help=f"Override a (default: the preset's; paper: {PAPER['attention_dim']})."
        ),
    ] = None,
    glove_epochs: Annotated[
        int | None,
        typer.Option("--glove-epochs", help=f"Override GloVe's epochs (default {DEFAULTS.glove_epochs})."),
    ] = None,
    ontology_scope: Annotated[
        str | None,
        typer.Option(
            "--ontology-scope",
            help=f"Override: {' or '.join(ONTOLOGY_SCOPES)} (default {PAPER['ontology_scope']}).",
        ),
    ] = None,
    device: DeviceOpt = DEFAULTS.device,
    threads: ThreadsOpt = "auto",
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Retrain finished runs / reuse a folder of other settings.", metavar=FLAG
        ),
    ] = False,
    config_file: ConfigOpt = None,
) -> None:
    """The paper's ten configurations (HAP, HAP lv3/lv2, GRAM, GRAM lv3/lv2, RNN+, RNN, Rollup+, Rollup)
    over several seeds: reproduce.md / reproduce.json beside the published numbers. Resumable.

    --configs keys: hap, hap-lv3, hap-lv2, gram, gram-lv3, gram-lv2, rnn+, rnn, rollup+, rollup.
    """
    # torch loads here, when the command runs
    from hapnet.training.reproduction import TABLE_JSON, TABLE_MD, reproduce_settings_from_file
    from hapnet.training.reproduction import reproduce as run_reproduce
    from hapnet.utils.threads import torch_threads

    def announce(paper: Any, index: int, count: int, done: list[int]) -> None:
        resumed = f", seeds {', '.join(map(str, done))} already done" if done else ""
        console.rule(f"[bold]{paper.name}[/] ({index + 1}/{count}{resumed})")

    settings = dict(
        data=data,
        seeds=seeds,
        configs=configs,
        ontology=ontology,
        preset=preset,
        epochs=epochs,
        dim=dim,
        hidden=hidden,
        attention_dim=attention_dim,
        glove_epochs=glove_epochs,
        ontology_scope=ontology_scope,
        device=device,
    )
    if config_file is not None:  # the file, then what was typed: a default never overrides it
        settings = {**reproduce_settings_from_file(config_file), **typed_options(ctx, settings)}
    if settings.get("data") is None:
        raise HapnetError("reproduce: give the data with --data (or `data` in the --config file)")
    with torch_threads(threads) as share:
        result = run_reproduce(
            out=out,
            force=force,
            **settings,
            callbacks=RichCallbacks(share),
            on_config=announce,
        )
    console.print(result["markdown"], markup=False, highlight=False, soft_wrap=True)
    console.print(f"table in [bold]{out / TABLE_MD}[/] and [bold]{out / TABLE_JSON}[/]")
