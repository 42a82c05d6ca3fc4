"""`hapnet train` and `hapnet evaluate`: options in, one library call, rich output."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from hapnet.cli.common import (
    FLAG,
    AsJson,
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
    print_error,
    typed_options,
    user_errors,
)
from hapnet.cli.common import TRAIN_DEFAULTS as DEFAULTS
from hapnet.cli.display import RichCallbacks, data_report_table, metrics_table, tasks_table
from hapnet.data.long_csv import parse_columns
from hapnet.embeddings.config import EmbedConfig
from hapnet.errors import HapnetError
from hapnet.training.config import (
    LOSSES,
    OPTIMIZERS,
    OUTPUTS,
    PRESETS,
    PRETRAINS,
    SPLITS,
    TASK_WEIGHTS,
    make_config,
    parse_levels,
)
from hapnet.training.naming import run_name


def preset_help(setting: str, text: str) -> str:
    """`text` with the setting's default and, where the paper preset differs, the paper's value."""
    default = getattr(DEFAULTS, setting)
    paper = PRESETS["paper"].get(setting, default)
    # parentheses, not brackets: rich would read [..] in a help text as markup and drop it
    return f"{text} (default {default}" + (f"; --preset paper: {paper})" if paper != default else ")")


def _setting_text(value: Any) -> str:
    """A preset's value as help text: lists as 1,2,3 or none (rich would read [..] as markup)."""
    if isinstance(value, list | tuple):
        return ",".join(map(str, value)) or "none"
    return str(value)


def presets_help() -> str:
    """What each preset of PRESETS sets, generated from it (never written by hand)."""
    described = [
        f"{name}: "
        + (", ".join(f"{key} {_setting_text(v)}" for key, v in settings.items()) or "hapnet's defaults")
        for name, settings in PRESETS.items()
    ]
    return (
        "Start from a preset; options given override it. "
        + "; ".join(described)
        + ". (default: none, the defaults shown with each option)"
    )


@user_errors
def train(
    ctx: typer.Context,
    data: Annotated[
        Path | None,
        typer.Option(
            help="MIMIC-III/IV folder, long CSV, or `hapnet synth` folder. Default: built-in synthetic data."
        ),
    ] = None,
    ontology: OntologyOpt = DEFAULTS.ontology,
    model: ModelOpt = DEFAULTS.model,
    levels: LevelsOpt = None,
    ontology_scope: Annotated[
        str | None,
        typer.Option(
            "--ontology-scope",
            help=preset_help(
                "ontology_scope",
                "observed: the codes seen in the data and their ancestors (the papers'); "
                "full: every node of the ontology.",
            ),
        ),
    ] = None,
    pretrain: Annotated[
        str | None,
        typer.Option(
            help=preset_help(
                "pretrain",
                f"{' or '.join(PRETRAINS)}: GloVe initialisation (rnn/rollup: RNN+/Rollup+).",
            )
        ),
    ] = None,
    preset: Annotated[str | None, typer.Option(help=presets_help())] = None,
    epochs: Annotated[
        int | None, typer.Option(help=preset_help("epochs", "Training epochs at most (see --patience)."))
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(
            help=preset_help(
                "patience", "Stop after this many epochs without a lower validation loss; 0: never."
            )
        ),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help=preset_help("batch_size", "Patients per step."))
    ] = None,
    dim: Annotated[
        int | None,
        typer.Option(
            help=preset_help(
                "dim",
                "Code embedding size d: the paper's setting for next-visit prediction (d 128 scored far "
                f"worse there, docs/training.md; `hapnet embed` uses {EmbedConfig().dim} for "
                "structure-only embeddings).",
            )
        ),
    ] = None,
    hidden: Annotated[int | None, typer.Option(help=preset_help("hidden", "GRU hidden size."))] = None,
    attention_dim: Annotated[
        int | None, typer.Option("--attention-dim", help=preset_help("attention_dim", "Attention size a."))
    ] = None,
    dropout: Annotated[
        float | None, typer.Option(help=preset_help("dropout", "Dropout on GRU states."))
    ] = None,
    lr: Annotated[float | None, typer.Option(help=preset_help("lr", "Learning rate."))] = None,
    optimizer: Annotated[
        str | None, typer.Option(help=preset_help("optimizer", f"One of {', '.join(OPTIMIZERS)}."))
    ] = None,
    loss: Annotated[
        str | None, typer.Option(help=preset_help("loss", f"One of {', '.join(LOSSES)}."))
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            help=preset_help(
                "output", f"One of {', '.join(OUTPUTS)}: tied = code c's output row is W g_c + u_c."
            )
        ),
    ] = None,
    aux_levels: Annotated[
        str | None,
        typer.Option(
            "--aux-levels",
            help="Also predict the next visit's categories at these ontology levels, "
            "e.g. 1,2,3 (default none).",
        ),
    ] = None,
    task_weights: Annotated[
        str | None,
        typer.Option(
            "--task-weights",
            help=preset_help(
                "task_weights", f"Weights of the --aux-levels tasks: {', '.join(TASK_WEIGHTS)}."
            ),
        ),
    ] = None,
    time_input: Annotated[
        bool | None,
        typer.Option(
            "--time-input/--no-time-input",
            help="The GRU also reads log(1 + days since the previous visit) "
            "(data with visit times; default off).",
            metavar=FLAG,
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (split, weights, batches).")] = DEFAULTS.seed,
    seeds: Annotated[
        str | None,
        typer.Option(help="Several seeds, e.g. 0-4: one run each + mean ± std table (default: --seed only)."),
    ] = None,
    k: Annotated[int, typer.Option("-k", "--k", help="k of accuracy@k (at least 1).")] = DEFAULTS.k,
    device: DeviceOpt = DEFAULTS.device,
    compile: Annotated[
        bool,
        typer.Option(
            "--compile/--no-compile",
            help="torch.compile the training step (CPU or CUDA; falls back to eager with a warning).",
            metavar=FLAG,
        ),
    ] = DEFAULTS.compile,
    threads: ThreadsOpt = "auto",
    unknown: UnknownOpt = DEFAULTS.unknown,
    columns: ColumnsOpt = None,
    code_pattern: Annotated[
        str | None,
        typer.Option(
            "--code-pattern",
            help="MEDS: a regular expression whose first group is the diagnosis code in the `code` "
            "column (default: ICD9CM//…, ICD10CM//…, DIAGNOSIS//ICD//9//… and alike).",
        ),
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            help=f"Patient split: {' or '.join(SPLITS)} (random: 70/10/20 by --seed; meds: the MEDS "
            "dataset's metadata/subject_splits.parquet)."
        ),
    ] = DEFAULTS.split,
    synth_patients: SynthPatientsOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run folder (default runs/MODEL-TIME).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing run folder.", metavar=FLAG)
    ] = False,
    config_file: ConfigOpt = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue an interrupted run (its folder or .NAME.partial) from its last epoch, "
            "with its saved settings (other options are ignored). Default: a new run."
        ),
    ] = None,
    nproc: Annotated[
        int | None,
        typer.Option(
            "--nproc",
            help="Train data-parallel on N processes of this machine (one GPU each, or CPU processes), "
            "launched through torch.distributed.run; several machines: torchrun (docs/scaling.md). "
            "Default: one process.",
        ),
    ] = None,
) -> None:
    """Train a next-visit diagnosis model of the registry and evaluate it as the paper does."""
    # torch loads here, when the command runs, not at start-up of every `hapnet` command
    from hapnet.training.distributed import environment, labelled
    from hapnet.training.seeds import parse_seeds, train_seeds
    from hapnet.training.trainer import train as train_model
    from hapnet.utils.threads import torch_threads

    process = environment()  # a rank of a distributed run under torchrun, else the one process
    launching = check_nproc(nproc, process.distributed, seeds)
    with torch_threads(threads) as share, labelled(process):
        if resume is not None:
            if seeds:
                raise HapnetError("--resume continues one run: give it one seed's folder (OUT/seed-S)")
            if launching:
                return launch_ranks(ctx, nproc, resume)  # type: ignore[arg-type]
            result = train_model(resume=resume, force=force, callbacks=RichCallbacks(share))
            if process.is_main:
                show_result(result)
            return
        settings = dict(
            preset=preset,
            data=str(data) if data else None,
            ontology=ontology,
            model=model,
            levels=levels,
            ontology_scope=ontology_scope,
            pretrain=pretrain,
            epochs=epochs,
            patience=patience,
            output=output,
            aux_levels=parse_levels(aux_levels),
            task_weights=task_weights,
            time_input=time_input,
            batch_size=batch_size,
            dim=dim,
            hidden=hidden,
            attention_dim=attention_dim,
            dropout=dropout,
            lr=lr,
            optimizer=optimizer,
            loss=loss,
            seed=seed,
            k=k,
            device=device,
            compile=compile,
            unknown=unknown,
            columns=parse_columns(columns),
            code_pattern=code_pattern,
            split=split,
            synth_patients=synth_patients,
        )
        if config_file is not None:  # the file, then what was typed: a default never overrides it
            settings = typed_options(ctx, settings)
        config = make_config(config_file=config_file, **settings)
        name = run_name(config)
        out = out or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if seeds:
            if process.distributed:
                raise HapnetError(DISTRIBUTED_SEEDS)
            result = train_seeds(config, parse_seeds(seeds), out, force=force, callbacks=RichCallbacks(share))
            console.print(result.markdown(name))
            console.print(f"runs and summary.md / summary.json in [bold]{result.out}[/]")
            return
        if launching:
            return launch_ranks(ctx, nproc, out)  # type: ignore[arg-type]
        result = train_model(config, out=out, force=force, callbacks=RichCallbacks(share))
        if process.is_main:  # rank 0 alone prints
            show_result(result)


DISTRIBUTED_SEEDS = (
    "--seeds trains its seeds one after another in one process: with --nproc or under torchrun, "
    "train one --seed at a time"
)


def check_nproc(nproc: int | None, distributed: bool, seeds: str | None) -> bool:
    """Whether this command launches ranks (--nproc 2 or more); refuses what cannot be launched."""
    if nproc is None:
        return False
    if nproc < 1:
        raise HapnetError(f"--nproc must be at least 1, got {nproc}")
    if distributed:
        raise HapnetError("--nproc launches torch.distributed.run itself: under torchrun, leave it out")
    if nproc > 1 and seeds:
        raise HapnetError(DISTRIBUTED_SEEDS)
    return nproc > 1


def forwarded_arguments(ctx: typer.Context, *, skip: tuple[str, ...] = ("nproc",)) -> list[str]:
    """The options typed on this command line (but `skip`), as the ranks' `hapnet train` reads them."""
    arguments: list[str] = []
    for param in ctx.command.params:
        name = param.name or ""
        if name in skip or ctx.get_parameter_source(name).name != "COMMANDLINE":
            continue
        value = ctx.params[name]
        if getattr(param, "is_flag", False):
            secondary = getattr(param, "secondary_opts", [])
            if value or secondary:
                arguments.append(param.opts[0] if value else secondary[0])
        else:
            arguments += [param.opts[0], str(value)]
    return arguments


def launch_ranks(ctx: typer.Context, nproc: int, run: Path) -> None:
    """`hapnet train` with these options on `nproc` ranks (torch.distributed.run), writing `run`
    (or resuming it); a failure the ranks did not explain is one line here."""
    from hapnet.training.distributed import launch  # torch: loaded once a command trains
    from hapnet.training.runs import RunWriter

    resuming = ctx.get_parameter_source("resume").name == "COMMANDLINE"
    arguments = forwarded_arguments(ctx, skip=("nproc", "out"))
    code, message = launch([*arguments, *([] if resuming else ["--out", str(run)])], nproc)
    if message is not None:
        try:  # an epoch checkpoint to resume from?
            writer = RunWriter.reopen(run, force=True)
            message += (
                f"; {writer.work} keeps the last epoch: continue with "
                f"`hapnet train --resume {writer.target} --nproc {nproc}`"
            )
        except HapnetError:
            pass
        print_error(message)
    if code:
        raise typer.Exit(code)


def show_result(result: Any) -> None:
    name = run_name(result.config)
    console.print(
        metrics_table(
            result.metrics, f"{name}: best epoch {result.metrics['best_epoch']} (lowest valid loss)"
        )
    )
    tasks = tasks_table(result.metrics)
    if tasks is not None:
        console.print(tasks)
    if result.metrics.get("stopped_early"):
        console.print(
            f"stopped early after epoch {result.metrics['epochs_run']}: "
            f"{result.config.patience} epochs without a lower validation loss"
        )
    console.print(f"run folder: [bold]{result.run_dir}[/]")


@user_errors
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `hapnet train`.")],
    data: Annotated[
        Path | None,
        typer.Option(help="Other data to evaluate on, all its patients (default: the run's test split)."),
    ] = None,
    k: Annotated[
        int | None, typer.Option("-k", "--k", help="k of accuracy@k, at least 1 (default: the run's).")
    ] = None,
    device: DeviceOpt = DEFAULTS.device,
    as_json: AsJson = False,
) -> None:
    """Evaluate a saved run: its test split, or all patients of other data."""
    from hapnet.training.evaluation import evaluate as evaluate_run  # torch: when the command runs

    result = evaluate_run(run_dir, data=data, k=k, device=device)
    if as_json:
        print(json.dumps(result))
        return
    console.print(data_report_table(result["data"]))
    if result["codes_outside_vocabulary"]:
        console.print(
            f"[yellow]{result['codes_outside_vocabulary']:,} code occurrences are not in the run's "
            "vocabulary (dropped)[/]"
        )
    console.print(metrics_table(result, f"{run_dir}: {result['scope']}"))
    tasks = tasks_table(result)
    if tasks is not None:
        console.print(tasks)
