"""Several seeds of one configuration and the paper-style mean ± std table."""

from __future__ import annotations

import operator
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hapnet.data.fingerprint import data_fingerprint, fingerprint_matches
from hapnet.errors import HapnetError, InputError
from hapnet.training.config import TrainConfig, differing_settings
from hapnet.training.metrics import NUM_GROUPS, SCORE_LABELS
from hapnet.training.naming import GROUP_LABELS, run_label
from hapnet.training.runs import (
    CONFIG,
    DATA_FINGERPRINT,
    METRICS,
    RESUME,
    is_run_dir,
    partial_path,
    read_metrics,
    write_json,
)
from hapnet.training.setup import load_training_data
from hapnet.training.trainer import resume, train
from hapnet.utils.paths import check_output_location, first_missing
from hapnet.utils.textio import atomic_path, read_json_object

MAX_SEEDS = 10_000  # a sweep larger than this is a typo (0-10000000 would fill the memory first)


def parse_seeds(text: str) -> list[int]:
    """`0-4` -> [0, 1, 2, 3, 4]; `0,2,5` -> [0, 2, 5]."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                if high - low >= MAX_SEEDS:
                    raise HapnetError(f"--seeds {text!r}: {part} is more than {MAX_SEEDS:,} seeds")
                seeds.extend(range(low, high + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise HapnetError(f"--seeds {text!r}: expected a range like 0-4 or a list like 0,1,2") from None
    if not seeds:
        raise HapnetError(f"--seeds {text!r}: no seed given")
    return list(dict.fromkeys(seeds))


def as_seeds(seeds: str | Sequence[int]) -> list[int]:
    """The seeds of a sweep: a text as `parse_seeds` reads it ("0-4", "0,2,5"), or whole numbers
    of 0 or more (repeats dropped)."""
    if isinstance(seeds, str):
        return parse_seeds(seeds)
    if not isinstance(seeds, Sequence):
        raise HapnetError(f"seeds: expected a list of whole numbers or a text like 0-4, got {seeds!r}")
    values = []
    for seed in seeds:
        try:
            if isinstance(seed, bool):
                raise TypeError
            value = operator.index(seed)
        except TypeError:
            raise HapnetError(f"seeds: {seed!r} is not a whole number") from None
        if value < 0:
            raise HapnetError(f"seeds: {value} is negative; seeds are 0 or more")
        values.append(value)
    if not values:
        raise HapnetError("seeds: no seed given")
    return list(dict.fromkeys(values))


def mean_std(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0}


def summarize(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std (sample std, ddof=1) of test accuracy per frequency group and overall, of the
    per-visit recall@k, weighted F1 and AUCs, of the best epoch, and of every auxiliary task's
    scores. A score that some run lacks (a run from before it existed) is left out: a mean over
    some of the seeds would not compare with the others."""
    tasks_of = [
        {name: sorted(scores) for name, scores in m["test"].get("tasks", {}).items()} for m in metrics
    ]
    if any(tasks != tasks_of[0] for tasks in tasks_of):
        raise HapnetError("the runs have different auxiliary tasks: no common table")
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
        **{
            key: mean_std([m["test"][key] for m in metrics])
            for key in SCORE_LABELS
            if all(key in m["test"] for m in metrics)
        },
        "best_epoch": mean_std([m["best_epoch"] for m in metrics]),
        **({"tasks": tasks} if tasks else {}),
    }


def format_cell(stat: dict[str, float]) -> str:
    """`mean ± std` with 4 decimals; – for a score undefined in some run (its mean is NaN)."""
    if stat["mean"] != stat["mean"]:  # NaN is the only value unequal to itself
        return "–"
    return f"{stat['mean']:.4f} ± {stat['std']:.4f}"


def markdown_table(
    rows: list[tuple[str, dict[str, Any]]], published: dict[str, list[float]] | None = None
) -> str:
    """The paper's layout: one row per configuration, accuracy@k per group, then overall (and the
    published rows); then a second table of the other scores (`scores_table`)."""
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
    scores = scores_table(rows)
    if scores:
        lines += ["", *scores]
    return "\n".join(lines) + "\n"


def scores_table(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Per-visit recall@k, weighted F1 and the AUCs, mean ± std, one row per configuration: the
    lines of a markdown table (none when no summary has any of them); – where a row lacks one."""
    keys = [key for key in SCORE_LABELS if any(key in summary for _, summary in rows)]
    if not keys:
        return []
    lines = [
        "Test, mean ± std: recall@k per visit, weighted F1 of the top-|y| codes, PR-AUC and ROC-AUC "
        "(docs/algorithms.md):",
        "",
        f"| model | {' | '.join(SCORE_LABELS[key] for key in keys)} |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for name, summary in rows:
        cells = [format_cell(summary[key]) if key in summary else "–" for key in keys]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return lines


@dataclass
class SeedsResult:
    out: Path | None
    metrics: list[dict[str, Any]]
    summary: dict[str, Any]

    def markdown(self, name: str) -> str:
        return markdown_table([(name, self.summary)])


SWEEP_MANIFEST = "seeds.json"


def read_manifest(out: Path) -> dict[str, Any] | None:
    """OUT/seeds.json (None when absent), refused in one line when it is not a sweep manifest."""
    manifest = out / SWEEP_MANIFEST
    if not manifest.exists():
        return None
    what, hint = "a hapnet seed sweep manifest", "; use --force to start over"
    values = read_json_object(manifest, what, hint)
    if not isinstance(values.get("config", {}), dict):
        raise InputError(manifest, f"not {what} (no `config` object){hint}")
    return values


def check_sweep_settings(out: Path, config: TrainConfig) -> None:
    """Refuse to add runs of `config` to a sweep folder whose runs have other settings."""
    manifest = read_manifest(out)
    if manifest is None:
        return
    changed = differing_settings(manifest.get("config", {}), config)
    if changed:
        raise HapnetError(
            f"{out}: holds runs with other settings ({', '.join(changed)} differ, see {SWEEP_MANIFEST} "
            f"and */{CONFIG}); use another folder or --force"
        )


def train_seeds(
    config: TrainConfig,
    seeds: str | Sequence[int],
    out: str | Path,
    *,
    force: bool = False,
    callbacks: Any = None,
) -> SeedsResult:
    """One run per seed under OUT/seed-S, then OUT/summary.json and OUT/summary.md.

    `seeds`: whole numbers, or a text such as "0-4" or "0,2,5". Finished seeds (a complete run
    folder) are reused, so an interrupted sweep resumes; a sweep started with other settings or on
    other data is refused (unless `force`). A sweep that fails before any seed finished, with
    nothing to resume, leaves none of the folders it created.
    """
    seeds = as_seeds(seeds)
    out = check_output_location(out, force=True, kind="folder")  # an existing sweep is resumed
    manifest = out / SWEEP_MANIFEST
    if out.exists() and not force and not manifest.exists():
        raise HapnetError(f"{out}: already exists and is not a seed sweep (use --force to overwrite it)")
    if not force:
        check_sweep_settings(out, config)
    finished = {} if force else _finished_seeds(config, seeds, out)  # refused before writing
    created = first_missing(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        write_json(manifest, {"config": config.to_dict(), "seeds": seeds})
        all_metrics = [
            finished[seed] if seed in finished else _run_seed(config, seed, out, force, callbacks)
            for seed in seeds
        ]
    except BaseException:
        if created is not None and not _has_progress(out, seeds):
            shutil.rmtree(created, ignore_errors=True)  # only folders this call made
        raise
    summary = summarize(all_metrics)
    write_json(out / "summary.json", summary)
    with atomic_path(out / "summary.md", overwrite=True) as tmp:
        tmp.write_text(markdown_table([(run_label(config), summary)]))
    return SeedsResult(out, all_metrics, summary)


def _finished_seeds(config: TrainConfig, seeds: list[int], out: Path) -> dict[int, dict[str, Any]]:
    """The metrics of the seeds whose run is complete, checked: damaged, or trained on other data,
    they are refused (before the sweep writes anything)."""
    finished = {}
    data, now = None, ""  # read only if there are finished seeds to reuse
    for seed in seeds:
        run_dir = out / f"seed-{seed}"
        if not (is_run_dir(run_dir) and (run_dir / METRICS).exists()):
            continue
        try:
            metrics = read_metrics(run_dir / METRICS)
        except InputError as exc:
            raise HapnetError(f"{exc}; use --force to train the sweep again") from None
        recorded = metrics.get(DATA_FINGERPRINT)
        if recorded is not None and data is None:
            data = load_training_data(config)[1]
            now = data_fingerprint(data)
        if recorded is not None and not fingerprint_matches(recorded, data, now):  # type: ignore[arg-type]
            raise HapnetError(f"{run_dir}: trained on other data (use --force to start the sweep over)")
        finished[seed] = metrics
    return finished


def _run_seed(config: TrainConfig, seed: int, out: Path, force: bool, callbacks: Any) -> dict[str, Any]:
    """Train one seed's run, or resume it where it was interrupted; its metrics."""
    run_dir = out / f"seed-{seed}"
    if (partial_path(run_dir) / RESUME).exists() and not force:
        return resume(run_dir, callbacks=callbacks).metrics
    seed_config = TrainConfig.from_dict({**config.to_dict(), "seed": seed})
    return train(seed_config, out=run_dir, force=force, callbacks=callbacks).metrics


def _has_progress(out: Path, seeds: list[int]) -> bool:
    """A seed of the sweep is finished, or can be resumed: the folder is worth keeping."""
    runs = [out / f"seed-{seed}" for seed in seeds]
    return any(is_run_dir(run) or (partial_path(run) / RESUME).is_file() for run in runs)
