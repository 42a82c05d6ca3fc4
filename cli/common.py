"""What every command shares: one-line errors with exit code 2, warnings, the console."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from rich.progress import Progress
from rich.rule import Rule

from hapnet.data.table import UNKNOWN_POLICIES
from hapnet.errors import HapnetError, error_summary
from hapnet.training import progress
from hapnet.training.config import TrainConfig

FILE_WIDTH = 1000  # columns when writing to a file or a pipe: wide enough for any path
RULE_WIDTH = 80  # a rule written to a file or a pipe: a terminal's usual width


class HapnetConsole(Console):
    """rich's Console, except that output to a file or a pipe is not cut to 80 columns: a table
    takes the width it needs (paths in full), a line is never wrapped (a log stays greppable).
    A terminal, `COLUMNS` or an explicit width are obeyed as rich does."""

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)  # type: ignore[attr-defined]
        # `_width` is rich's own: set by width=, the `width` setter or COLUMNS at creation.
        if self.is_terminal or self._width is not None or os.environ.get("COLUMNS", "").isdigit():
            return size
        return ConsoleDimensions(FILE_WIDTH, size.height)

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]

    def rule(self, title: Any = "", **settings: Any) -> None:
        """As rich's, `RULE_WIDTH` wide when not a terminal (a rule fills the width it is given)."""
        width = self.width if self.is_terminal else min(self.width, RULE_WIDTH)
        self.print(Rule(title, **settings), width=width)


console = HapnetConsole()
err_console = HapnetConsole(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
TRACEBACK_VARIABLE = "HAPNET_TRACEBACK"
# The command-line framework's own exits and usage errors: typer reports them itself.
_FRAMEWORK_EXCEPTIONS = (typer.Exit, typer.Abort, typer.TyperException)
TRAIN_DEFAULTS = TrainConfig()  # the library's training defaults are the CLI's: one source

# Options several commands share, defined once.
OntologyOpt = Annotated[
    str, typer.Option(help="Built-in ontology name (`hapnet ontology list`) or ontology file.")
]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA if there is a GPU), cpu, cuda or cuda:N.")]
ModelOpt = Annotated[
    str, typer.Option("--model", help="A model of the registry (`hapnet models` lists them).")
]
LevelsOpt = Annotated[
    int | None, typer.Option(help="Use only the lowest K levels of the ontology (default: all).")
]
SynthPatientsOpt = Annotated[
    int | None,
    typer.Option(
        "--synth-patients",
        help=f"Size of the built-in synthetic data (default {TRAIN_DEFAULTS.synth_patients:,}).",
    ),
]
ColumnsOpt = Annotated[
    str | None,
    typer.Option(
        help="Long CSV column names: patient=…,visit=…,time=…,code=… (default: found by their usual names)."
    ),
]
UnknownOpt = Annotated[str, typer.Option(help=f"Codes not in the ontology: {', '.join(UNKNOWN_POLICIES)}.")]
ThreadsOpt = Annotated[
    str,
    typer.Option(
        help="torch CPU threads: a number, or auto: the cores other processes leave free, re-checked "
        "before every epoch (give a number for bit-identical reruns on a busy machine)."
    ),
]
BenchThreadsOpt = Annotated[
    str | None,
    typer.Option(help="torch CPU threads: a number or auto (default: torch's, one per core)."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="Settings file: TOML, YAML or JSON (a run's config.json works as it is); options given on "
        "the command line override it (default: none).",
    ),
]


def typed_options(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The options of `values` the user gave on the command line (not their defaults): with
    --config, only those override the file."""
    return {
        name: value for name, value in values.items() if ctx.get_parameter_source(name).name == "COMMANDLINE"
    }


# typer shows a <bool> type beside every boolean option; a blank metavar shows it as the flag it is.
FLAG = " "
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object.", metavar=FLAG)]


def one_line(text: str) -> str:
    """A message on one line: the lines of a multi-line one joined by spaces."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def os_error_message(exc: OSError) -> str:
    """`PATH: permission denied`, `SRC -> DST: no space left on device`, from the error's own fields."""
    reason = os.strerror(exc.errno) if exc.errno is not None else error_summary(exc)
    reason = reason[:1].lower() + reason[1:]
    names = [name for name in (exc.filename, exc.filename2) if name is not None]
    paths = [name.decode(errors="replace") if isinstance(name, bytes) else str(name) for name in names]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


def internal_error_message(exc: BaseException) -> str:
    return (
        f"internal error ({type(exc).__name__}: {error_summary(exc)}); please report it — "
        f"set {TRACEBACK_VARIABLE}=1 to see the traceback"
    )


def print_error(message: str) -> None:
    """A refusal as hapnet shows it: one red `error:` line on stderr."""
    err_console.print(f"[bold red]error:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)


def user_errors(command: F) -> F:
    """Every failure of a command as one red line on stderr, never a traceback: `HapnetError` and
    file-system errors (`OSError`: the path and the reason) exit with code 2, Ctrl-C with 130, any
    other exception is a bug: one line asking to report it, exit code 1 (`HAPNET_TRACEBACK=1`
    shows the traceback instead). Warnings are shown plainly."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        def show_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
            text = escape(one_line(str(message)))
            err_console.print(f"[yellow]warning:[/] {text}", highlight=False, soft_wrap=True)

        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            try:
                return command(*args, **kwargs)
            except _FRAMEWORK_EXCEPTIONS:
                raise
            except HapnetError as exc:
                print_error(str(exc))
                raise typer.Exit(EXIT_USER_ERROR) from None
            except KeyboardInterrupt:
                err_console.print("interrupted", highlight=False)
                raise typer.Exit(EXIT_INTERRUPTED) from None
            except OSError as exc:
                if os.environ.get(TRACEBACK_VARIABLE) == "1":
                    raise
                print_error(os_error_message(exc))
                raise typer.Exit(EXIT_USER_ERROR) from None
            except Exception as exc:
                if os.environ.get(TRACEBACK_VARIABLE) == "1":
                    raise
                print_error(internal_error_message(exc))
                raise typer.Exit(EXIT_INTERNAL_ERROR) from None

    return wrapper  # type: ignore[return-value]


def loss_progress(label: str) -> Progress:
    """The library's loss progress bar (training epochs, embedding training) on the CLI's console."""
    return progress.loss_progress(label, console)
