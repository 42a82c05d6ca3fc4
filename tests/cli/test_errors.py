"""cli/common.py: every failure of a command is one line (HapnetError and OSError: exit 2; Ctrl-C:
130; a bug: exit 1 and a request to report it), and output to a file or pipe is not cut to 80
columns."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import pytest
import typer
from rich.table import Table
from tiny import write_tiny_data
from typer.testing import CliRunner

from hapnet.cli.common import FILE_WIDTH, RULE_WIDTH, console, user_errors
from hapnet.cli.main import app as hapnet_app
from hapnet.errors import HapnetError, InputError

runner = CliRunner()
LONG = "/data/" + "/".join(f"a_rather_long_folder_name_{i}" for i in range(10)) + "/visits.csv"


def app_raising(error: BaseException) -> typer.Typer:
    """A one-command app whose command raises `error`, as a hapnet command would."""
    app = typer.Typer()

    @app.command()
    @user_errors
    def fail() -> None:
        raise error

    return app


def error_lines(result) -> list[str]:  # noqa: ANN001 - click's Result
    assert "Traceback" not in result.output
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            PermissionError(errno.EACCES, "Permission denied", "/data/visits.csv"),
            "error: /data/visits.csv: permission denied",
        ),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "runs/hap"), "error: runs/hap: is a directory"),
        (
            FileNotFoundError(errno.ENOENT, "No such file", "gone.csv"),
            "error: gone.csv: no such file or directory",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device", "out.parquet"),
            "error: out.parquet: no space left on device",
        ),
        (OSError(errno.ELOOP, "loop", "a/link"), "error: a/link: too many levels of symbolic links"),
        (
            OSError(errno.EXDEV, "cross-device", "a.tmp", None, "b/a"),  # as os.replace raises it
            "error: a.tmp -> b/a: invalid cross-device link",
        ),
        (OSError("the disk went away"), "error: the disk went away"),
        (HapnetError("bad row\nsecond line"), "error: bad row second line"),
        (InputError("v.csv", "cell 'a\nb'", 3), "error: v.csv, line 3: cell 'a\\nb'"),  # data: escaped
    ],
    ids=[
        "permission",
        "is-a-folder",
        "not-found",
        "disk-full",
        "link-loop",
        "two-paths",
        "no-errno",
        "multi-line",
        "line-break-in-data",
    ],
)
def test_user_and_file_system_errors_are_one_line_exit_2(error: BaseException, line: str) -> None:
    result = runner.invoke(app_raising(error), [])
    assert result.exit_code == 2 and error_lines(result) == [line]


def test_a_real_os_error_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    target = tmp_path / "notes.txt" / "out.csv"

    app = typer.Typer()

    @app.command()
    @user_errors
    def write() -> None:
        target.write_text("never")

    result = runner.invoke(app, [])
    assert result.exit_code == 2 and error_lines(result) == [f"error: {target}: not a directory"]


def test_a_bug_is_one_line_asking_for_a_report_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAPNET_TRACEBACK", raising=False)
    result = runner.invoke(app_raising(TypeError("unsupported operand\nmore detail")), [])
    assert result.exit_code == 1
    assert error_lines(result) == [
        "error: internal error (TypeError: unsupported operand); please report it — "
        "set HAPNET_TRACEBACK=1 to see the traceback"
    ]


def test_hapnet_traceback_1_lets_the_exception_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAPNET_TRACEBACK", "1")
    result = runner.invoke(app_raising(KeyError("x")), [])
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)
    assert "internal error" not in result.output


def test_ctrl_c_is_one_line_exit_130() -> None:
    result = runner.invoke(app_raising(KeyboardInterrupt()), [])
    assert result.exit_code == 130 and error_lines(result) == ["interrupted"]


def test_exits_and_hapnet_errors_keep_their_codes() -> None:
    assert runner.invoke(app_raising(typer.Exit(3)), []).exit_code == 3
    result = runner.invoke(app_raising(HapnetError("--k must be at least 1")), [])
    assert result.exit_code == 2 and error_lines(result) == ["error: --k must be at least 1"]


# ----------------------------------------------------------------------------- the console
def print_table_app() -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @user_errors
    def show() -> None:
        table = Table("statistic", "file")
        table.add_row("visits", LONG)
        console.print(table)
        console.rule("next")

    return app


def test_tables_written_to_a_pipe_are_not_cut_to_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    assert not console.is_terminal  # pytest captures the output: not a terminal
    assert console.width == FILE_WIDTH
    result = runner.invoke(print_table_app(), [])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "visits" in line)
    assert LONG in row and "…" not in result.stdout
    rule = result.stdout.splitlines()[-1]
    assert "next" in rule and len(rule) == RULE_WIDTH  # a rule stays a terminal's width


def test_columns_is_obeyed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    result = runner.invoke(print_table_app(), [])
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 60
    assert LONG not in result.stdout  # cut to the width the user asked for


def test_a_long_path_in_a_command_table_is_printed_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hapnet data-stats --compare REFERENCE`: the reference's path heads a column, in full."""
    monkeypatch.delenv("COLUMNS", raising=False)
    folder = tmp_path.joinpath(*(f"a_rather_long_folder_name_{i}" for i in range(6)))
    ontology, data = write_tiny_data(folder)
    stats = runner.invoke(hapnet_app, ["data-stats", str(data), "--ontology", str(ontology), "--json"])
    assert stats.exit_code == 0, stats.output
    reference = folder / "stats.json"
    reference.write_text(stats.stdout)
    assert len(str(reference)) > 200
    args = ["data-stats", str(data), "--ontology", str(ontology), "--compare", str(reference)]
    result = runner.invoke(hapnet_app, args)
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "reference (" in line)
    assert f"reference ({reference})" in header and "…" not in result.stdout
    assert os.environ.get("COLUMNS") is None


def test_a_torchrun_rank_leaves_without_the_interpreters_teardown(
    monkeypatch: pytest.MonkeyPatch,
):
    """torchrun's ranks end with os._exit(code) (gloo may abort in the teardown); one process does not."""
    from hapnet.cli import main as cli_main

    exits: list[int] = []
    monkeypatch.setattr(cli_main.os, "_exit", exits.append)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for argv in (["hapnet", "models"], ["hapnet", "models", "--nope"]):
        monkeypatch.setattr(sys, "argv", argv)
        cli_main.main()
    assert exits == [0, 2]
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(SystemExit) as one_process:
        cli_main.main()  # the last argv: a usage error, exit 2 the usual way
    assert one_process.value.code == 2 and exits == [0, 2]
