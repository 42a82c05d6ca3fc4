"""Several seeds of one configuration and the paper-style mean ± std table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hapnet.errors import HapnetError
from hapnet.training.config import TrainConfig, differing_settings
from hapnet.training.metrics import NUM_GROUPS
from hapnet.training.naming import GROUP_LABELS, run_label
from hapnet.training.runs import (
    CONFIG,
    DATA_FINGERPRINT,
    METRICS,
    RESUME,
    data_fingerprint,
    is_run_dir,
    partial_path,
    write_json,
)
from hapnet.training.setup import load_training_data
from hapnet.training.trainer import resume, train


def parse_seeds(text: str) -> list[int]:
    """`0-4` -> [0, 1, 2, 3, 4]; `0,2,5` -> [0, 2, 5]."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                seeds.extend(range(low, high + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise HapnetError(f"--seeds {text!r}: expected a range like 0-4 or a list like 0,1,2") from None
    if not seeds:
        raise HapnetError(f"--seeds {text!r}: no seed given")
    return list(dict.fromkeys(seeds))


def mean_std(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0}


def summarize(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std (sample std, ddof=1) of test accuracy per frequency group and overall, of the
    best epoch, and of every auxiliary task's scores."""
    by_group = [mean_std([m["test"]["accuracy_by_group"][g] for m in metrics]) for g in range(NUM_GROUPS)]
    tasks = {
        name: {measure: mean_std([m["test"]["tasks"][name][measure] for m in metrics]) for measure in scores}
        for name, scores in metrics[0]["test"].get("tasks", {}).items()
    }
    return {
        "seeds": [m["seed"] for m in metrics],
        "k": metrics[0]["k"],
        "accuracy_by_group": by_group,
        "accuracy": mean_std([m["test"]["accuracy"] for m in metrics]),
        "best_epoch": mean_std([m["best_epoch"] for m in metrics]),
        **({"tasks": tasks} if tasks else {}),
    }


def format_cell(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def markdown_table(
    rows: list[tuple[str, dict[str, Any]]], published: dict[str, list[float]] | None = None
) -> str:
    """The paper's layout: one row per configuration, accuracy@k per group, then overall."""
    k = rows[0][1]["k"] if rows else 20
    header = f"| model | {' | '.join(GROUP_LABELS)} | accuracy@{k} |"
    lines = [header, "|---" * (NUM_GROUPS + 2) + "|"]
    for name, summary in rows:
        cells = [format_cell(s) for s in summary["accuracy_by_group"]] + [format_cell(summary["accuracy"])]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    if published:
        lines.append("")
        lines.append("Published (HAP paper, Table 3, MIMIC-III, accuracy@20):")
        lines.append("")
        lines.append(header.replace(f"@{k}", "@20"))
        lines.append("|---" * (NUM_GROUPS + 2) + "|")
        for name, values in published.items():
            lines.append(f"| {name} | {' | '.join(f'{v:.4f}' for v in values)} |")
    return "\n".join(lines) + "\n"


@dataclass
class SeedsResult:
    out: Path | None
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]

    def markdown(self, name: str) -> str:
        return markdown_table([(name, self.summary)])


SWEEP_MANIFEST = "seeds.json"


def check_sweep_settings(out: Path, config: TrainConfig) -> None:
    """Refuse to add runs of `config` to a sweep folder whose runs have other settings."""
    manifest = out / SWEEP_MANIFEST
    if not manifest.exists():
        return
    changed = differing_settings(json.loads(manifest.read_text()).get("config", {}), config)
    if changed:
        raise HapnetError(
            f"{out}: holds runs with other settings ({', '.join(changed)} differ, see {SWEEP_MANIFEST} "
            f"and */{CONFIG}); use another folder or --force"
        )


def train_seeds(
    config: TrainConfig, seeds: list[int], out: str | Path, *, force: bool = False, callbacks: Any = None
) -> SeedsResult:
    """One run per seed under OUT/seed-S, then OUT/summary.json and OUT/summary.md.

    Finished seeds (a complete run folder) are reused, so an interrupted sweep resumes; a sweep
    started with other settings or on other data is refused (unless `force`).
    """
    out = Path(out)
    manifest = out / SWEEP_MANIFEST
    if out.exists() and not force and not manifest.exists():
        raise HapnetError(f"{out}: already exists and is not a seed sweep (use --force to overwrite it)")
    if not force:
        check_sweep_settings(out, config)
    out.mkdir(parents=True, exist_ok=True)
    write_json(manifest, {"config": config.to_dict(), "seeds": seeds})
    fingerprint = None  # of the data, computed only if there are finished seeds to reuse
    all_metrics = []
    for seed in seeds:
        run_dir = out / f"seed-{seed}"
        if is_run_dir(run_dir) and (run_dir / METRICS).exists() and not force:
            metrics = json.loads((run_dir / METRICS).read_text())
            if fingerprint is None:
                fingerprint = data_fingerprint(load_training_data(config)[1])
            if metrics.get(DATA_FINGERPRINT, fingerprint) != fingerprint:
                raise HapnetError(f"{run_dir}: trained on other data (use --force to start the sweep over)")
            all_metrics.append(metrics)
            continue
        if (partial_path(run_dir) / RESUME).exists() and not force:
            result = resume(run_dir, callbacks=callbacks)  # a seed that was interrupted
        else:
            seed_config = TrainConfig.from_dict({**config.to_dict(), "seed": seed})
            result = train(seed_config, out=run_dir, force=force, callbacks=callbacks)
        all_metrics.append(result.metrics)
    summary = summarize(all_metrics)
    write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(markdown_table([(run_label(config), summary)]))
    return SeedsResult(out, all_metrics, summary)
