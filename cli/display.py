"""What `train`, `evaluate` and `reproduce` print: the data report, metrics tables, and a progress
bar with one line per epoch."""

from __future__ import annotations

from typing import Any

from rich.progress import Progress
from rich.table import Table

from hapnet.cli.common import console, loss_progress
from hapnet.training.naming import GROUP_LABELS


def data_report_table(rows: list) -> Table:
    table = Table(title="Data", show_header=False)
    for label, value in rows:
        table.add_row(label, f"{value:,}" if isinstance(value, int) else str(value))
    return table


def metrics_table(metrics: dict[str, Any], title: str) -> Table:
    k = metrics["k"]
    table = Table("split", *[f"acc@{k} {g}%" for g in GROUP_LABELS], f"acc@{k}", "loss", title=title)
    for split in ("valid", "test"):
        if split in metrics:
            m = metrics[split]
            table.add_row(
                split,
                *[f"{v:.4f}" for v in m["accuracy_by_group"]],
                f"{m['accuracy']:.4f}",
                f"{m['loss']:.4f}",
            )
    return table


def tasks_table(metrics: dict[str, Any]) -> Table | None:
    """The auxiliary tasks' loss and accuracy per split (None when the run has none)."""
    rows = [
        (split, name, scores)
        for split in ("valid", "test")
        for name, scores in metrics.get(split, {}).get("tasks", {}).items()
    ]
    if not rows:
        return None
    measures = [key for key in rows[0][2] if key != "loss"]
    table = Table("split", "task", *measures, "loss", title="Auxiliary tasks (next visit's categories)")
    for split, name, scores in rows:
        table.add_row(split, name, *[f"{scores[m]:.4f}" for m in measures], f"{scores['loss']:.4f}")
    return table


class RichCallbacks:
    """Progress bar per epoch and a table row per epoch."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.task = None
        self.header = True  # on the first epoch shown (a resumed run starts later than 1)

    def on_data(self, data: Any, split: Any, vocab: Any) -> None:
        console.print(data_report_table(data.report.as_rows()))
        console.print(
            f"split: {len(split.train):,} train / {len(split.valid):,} valid / "
            f"{len(split.test):,} test patients; "
            f"{len(vocab):,} observable codes"
        )

    def on_epoch_start(self, epoch: int, num_batches: int) -> None:
        self.progress = loss_progress(f"epoch {epoch}")
        self.progress.start()
        self.task = self.progress.add_task("train", total=num_batches, loss=float("nan"))

    def on_batch(self, epoch: int, batch_index: int, loss: float) -> None:
        self.progress.update(self.task, advance=1, loss=loss)

    def on_epoch_end(self, record: dict[str, Any], is_best: bool) -> None:
        self.progress.stop()
        # One aligned line per epoch (a rich Table per row would add blank lines).
        columns = ("epoch", "train loss", "valid loss", "valid acc", "test acc", "seconds")
        if self.header:
            console.print("".join(f"{c:>12}" for c in columns), style="bold")
            self.header = False
        values = (
            str(record["epoch"]),
            f"{record['train_loss']:.4f}",
            f"{record['valid_loss']:.4f}",
            f"{record['valid_accuracy']:.4f}",
            f"{record['test_accuracy']:.4f}",
            f"{record['seconds']:.1f}",
        )
        best = "  [green]best[/]" if is_best else ""
        console.print("".join(f"{v:>12}" for v in values) + best, highlight=False)
