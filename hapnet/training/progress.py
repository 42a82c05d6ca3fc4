"""What a training run reports while it trains: the `TrainCallbacks` hooks, and `EpochProgress`,
the progress `hapnet.train` shows unless `quiet=True` (a bar per epoch on a terminal, one line per
epoch everywhere). The CLI adds its data report on top (cli/display.py)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class TrainCallbacks:
    """Hooks for progress display; the training loop itself prints nothing."""

    def on_data(self, data: Any, split: Any, vocab: Any) -> None:
        """The run's data (`RunData`: `.report` describes the whole data), split and vocabulary."""

    def on_epoch_start(self, epoch: int, num_batches: int) -> None: ...

    def on_batch(self, epoch: int, batch_index: int, loss: float) -> None: ...

    def on_epoch_end(self, record: dict[str, Any], is_best: bool) -> None: ...


def format_score(value: float) -> str:
    """A score with 4 decimals; – where it is undefined (no target of that group in the split)."""
    return "–" if value != value else f"{value:.4f}"  # NaN is the only value unequal to itself


def loss_progress(label: str, console: Console) -> Progress:
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


EPOCH_COLUMNS = ("epoch", "train loss", "valid loss", "valid acc", "test acc", "seconds")


class EpochProgress(TrainCallbacks):
    """A progress bar per epoch and one aligned line per epoch (best epochs marked)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task = None
        self.header = True  # on the first epoch shown (a resumed run starts later than 1)

    def on_epoch_start(self, epoch: int, num_batches: int) -> None:
        self.progress = loss_progress(f"epoch {epoch}", self.console)
        self.progress.start()
        self.task = self.progress.add_task("train", total=num_batches, loss=float("nan"))

    def on_batch(self, epoch: int, batch_index: int, loss: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, loss=loss)

    def on_epoch_end(self, record: dict[str, Any], is_best: bool) -> None:
        if self.progress is not None:
            self.progress.stop()
        # One aligned line per epoch (a rich Table per row would add blank lines).
        if self.header:
            self.console.print("".join(f"{c:>12}" for c in EPOCH_COLUMNS), style="bold")
            self.header = False
        values = (
            str(record["epoch"]),
            format_score(record["train_loss"]),
            format_score(record["valid_loss"]),
            format_score(record["valid_accuracy"]),
            format_score(record["test_accuracy"]),
            f"{record['seconds']:.1f}",
        )
        best = "  [green]best[/]" if is_best else ""
        self.console.print("".join(f"{v:>12}" for v in values) + best, highlight=False)
