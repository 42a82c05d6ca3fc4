"""The `hapnet` command: a thin layer over the library, one sub-app per area."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from hapnet.cli import data_stats, embed, inspect, models, ontology, perf, synth, train, tune
from hapnet.cli.common import print_error


class OneLineUsageErrors(TyperGroup):
    """The command group, with usage errors (an unknown option, a missing argument, a bad value)
    in one line like every other refusal, instead of typer's usage text and boxed panel."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as error:  # typer's (vendored click's) usage errors
            if not standalone_mode:
                raise
            if type(error).__name__ == "NoArgsIsHelpError":  # the help is shown: nothing to add
                sys.exit(error.exit_code)
            where = f" (see `{error.ctx.command_path} --help`)" if getattr(error, "ctx", None) else ""
            print_error(error.format_message() + where)
            code = error.exit_code
        except typer.Abort:
            if not standalone_mode:
                raise
            print_error("aborted")
            code = 1
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=OneLineUsageErrors,
    help="hapnet: HAP embeddings of medical ontologies and next-visit diagnosis prediction.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(ontology.app, name="ontology")
app.command()(train.train)
app.command()(train.evaluate)
app.command()(tune.tune)
app.command("models")(models.list_models)
app.command()(synth.synth)
app.command("data-stats")(data_stats.data_stats_command)
app.command()(inspect.predict)
app.command()(inspect.explain)
app.command()(inspect.plot)
app.command()(embed.embed)
app.command()(embed.neighbors)
app.command()(perf.bench)
app.command()(perf.reproduce)


def main() -> None:
    if not _is_rank_of_distributed_run():
        app()
        return
    # A rank of `torchrun -m hapnet ...` / `--nproc`: once its process group is destroyed, it leaves
    # without the interpreter's teardown. torch 2.13's gloo sometimes aborts there ("terminate
    # called without an active exception", SIGABRT) after a clean destroy_process_group (about 1
    # launch in 10-30, also in a plain torch script), and torchrun would then report a finished
    # run as failed. Everything is written and flushed by then (docs/scaling.md).
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _is_rank_of_distributed_run() -> bool:
    """WORLD_SIZE > 1, as torchrun sets it (without importing torch: the CLI starts without it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False  # the run refuses it, in one line
