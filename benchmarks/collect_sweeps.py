"""Collect seed sweeps (`hapnet train --seeds ... --out DIR`) into one markdown table.

    python benchmarks/collect_sweeps.py OUT.md "label=DIR" "label=DIR" ...

Each row: mean ± std over the sweep's seeds of test accuracy@k per frequency group and overall
(the paper's layout, `hapnet.training.seeds.markdown_table`), then the mean best epoch, the mean
epochs run and the mean seconds per epoch, read from the runs' metrics.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from hapnet.training.seeds import markdown_table, summarize


def sweep_row(folder: Path) -> tuple[dict, str]:
    metrics = [json.loads(p.read_text()) for p in sorted(folder.glob("seed-*/metrics.json"))]
    if not metrics:
        raise SystemExit(f"{folder}: no finished seed (seed-*/metrics.json)")
    summary = summarize(metrics)
    epochs = np.mean([m.get("epochs_run", len(m["train_seconds_per_epoch"])) for m in metrics])
    seconds = np.mean([np.mean(m["train_seconds_per_epoch"]) for m in metrics])
    extra = f"{summary['best_epoch']['mean']:.1f} | {epochs:.1f} | {seconds:.1f}"
    return summary, extra


def main(argv: list[str]) -> None:
    out, pairs = Path(argv[0]), [a.rsplit("=", 1) for a in argv[1:]]
    rows, extras = [], []
    for label, folder in pairs:
        summary, extra = sweep_row(Path(folder))
        rows.append((f"{label} ({len(summary['seeds'])} seeds)", summary))
        extras.append(extra)
    lines = markdown_table(rows).splitlines()
    lines[0] += " best epoch | epochs run | s/epoch |"
    lines[1] += "---|---|---|"
    lines[2:] = [f"{line} {extra} |" for line, extra in zip(lines[2:], extras, strict=True)]
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
