"""What every command shares: one-line errors with exit code 2, warnings, the console."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hapnet.data.table import UNKNOWN_POLICIES
from hapnet.errors import HapnetError
from hapnet.training.config import TrainConfig

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2
TRAIN_DEFAULTS = TrainConfig()  # the library's training defaults are the CLI's: one source

# Options several commands share, defined once.
OntologyOpt = Annotated[
    str, typer.Option(help="Built-in ontology name (`hapnet ontology list`) or ontology file.")
]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA if there is a GPU), cpu, cuda or cuda:N.")]
ColumnsOpt = Annotated[
    str | None, typer.Option(help="Long CSV column names: patient=…,visit=…,time=…,code=…")
]
UnknownOpt = Annotated[str, typer.Option(help=f"Codes not in the ontology: {', '.join(UNKNOWN_POLICIES)}.")]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        help="torch CPU threads (default: torch's, one per core; give 1 to each of several processes)."
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def user_errors(command: F) -> F:
    """Turn `HapnetError` into one red line on stderr and exit code 2; show warnings plainly."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        def show_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
            err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)

        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            try:
                return command(*args, **kwargs)
            except HapnetError as exc:
                err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
                raise typer.Exit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]


def loss_progress(label: str) -> Progress:
    """A transient progress bar showing the running loss (training epochs, embedding training).
    Off when the output is not a terminal: a log file gets the epoch rows only."""
    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
