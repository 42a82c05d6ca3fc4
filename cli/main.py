"""The `hapnet` command: a thin layer over the library, one sub-app per area."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from hapnet.cli import data_stats, embed, inspect, models, ontology, perf, synth, train, tune
from hapnet.cli.common import err_console, one_line


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
            message = escape(one_line(error.format_message()) + where)
            err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            code = error.exit_code
        except typer.Abort:
            if not standalone_mode:
                raise
            err_console.print("[bold red]error:[/] aborted", highlight=False)
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
    app()
