"""What `train`, `evaluate` and `reproduce` print: the data report, metrics tables, and a progress
bar with one line per epoch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Group, RenderableType
from rich.table import Table

from hapnet.cli.common import console
from hapnet.training.naming import GROUP_LABELS
from hapnet.training.progress import EpochProgress, format_score

if TYPE_CHECKING:
    from hapnet.utils.threads import CoreShare


def data_report_table(rows: list) -> Table:
    table = Table(title="Data", show_header=False)
    for label, value in rows:
        table.add_row(label, f"{value:,}" if isinstance(value, int) else str(value))
    return table


def metrics_table(metrics: dict[str, Any], title: str) -> RenderableType:
    """Accuracy@k by frequency group, overall, and the loss per split; under it, the other scores
    (`scores_table`) when the metrics have them."""
    k = metrics["k"]
    table = Table("split", *[f"acc@{k} {g}%" for g in GROUP_LABELS], f"acc@{k}", "loss", title=title)
    for split in ("valid", "test"):
        if split in metrics:
            m = metrics[split]
            table.add_row(
                split,
                *[format_score(v) for v in m["accuracy_by_group"]],
                format_score(m["accuracy"]),
                format_score(m["loss"]),
            )
    scores = scores_table(metrics)
    return table if scores is None else Group(table, scores)


def scores_table(metrics: dict[str, Any]) -> Table | None:
    """Per-visit recall@k, weighted F1, micro and macro PR-AUC and ROC-AUC per split (– where
    undefined or missing); None for metrics without any of them (a run from before they existed)."""
    # torch comes with this module: this table is only drawn after a command trained or evaluated
    from hapnet.training.metrics import AUC_CODES, SCORE_LABELS

    splits = [
        split for split in ("valid", "test") if any(key in metrics.get(split, {}) for key in SCORE_LABELS)
    ]
    if not splits:
        return None
    codes = ", ".join(f"{metrics[s][AUC_CODES]:,} ({s})" for s in splits if AUC_CODES in metrics[s])
    # two-line headers keep the table narrow: "PR-AUC" over "micro"
    table = Table(
        "split",
        *[label.replace(" ", "\n") for label in SCORE_LABELS.values()],
        caption=f"macro AUCs: mean over {codes} codes" if codes else None,
    )
    for split in splits:
        m = metrics[split]
        table.add_row(split, *[format_score(m[key]) if key in m else "–" for key in SCORE_LABELS])
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
        table.add_row(split, name, *[format_score(scores[m]) for m in measures], format_score(scores["loss"]))
    return table


class RichCallbacks(EpochProgress):
    """The library's epoch progress on the CLI's console, after the data report and the split;
    with `--threads auto`, the threads adapted to the free cores before every epoch."""

    def __init__(self, share: CoreShare | None = None) -> None:
        super().__init__(console)
        self.share = share

    def on_epoch_start(self, epoch: int, num_batches: int) -> None:
        from hapnet.utils.threads import adapt_threads  # torch: loaded once a command trains

        changed = adapt_threads(self.share)
        if changed is not None:
            why = "other processes keep cores busy" if changed[1] < changed[0] else "cores are free again"
            console.print(f"[dim]threads {changed[0]} -> {changed[1]}: {why}[/]", highlight=False)
        super().on_epoch_start(epoch, num_batches)

    def on_data(self, data: Any, split: Any, vocab: Any) -> None:
        console.print(data_report_table(data.report.as_rows()))
        console.print(
            f"split: {len(split.train):,} train / {len(split.valid):,} valid / "
            f"{len(split.test):,} test patients; "
            f"{len(vocab):,} observable codes"
        )
