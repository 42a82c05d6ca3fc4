"""`reproduce(...)`: the HAP paper's ten configurations over several seeds, in the paper's table.

Each configuration is one seed sweep (`hapnet.training.seeds.train_seeds`) in OUT/<key>/, so finished
seeds are never trained again and an interrupted run resumes where it stopped. The table (mean ±
std per frequency group and overall) goes to OUT/reproduce.md and OUT/reproduce.json, beside the
published numbers (docs/algorithms.md, HAP paper Table 3); a second table holds the scores the HAP
paper does not report (per-visit recall@10/20, weighted F1, PR-AUC and ROC-AUC; `seeds.scores_table`),
and each configuration's `summary` in reproduce.json carries them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hapnet.errors import HapnetError
from hapnet.ontology.builtins import DEFAULT_ONTOLOGY
from hapnet.training.config import make_config
from hapnet.training.runs import METRICS, is_run_dir, write_json
from hapnet.training.seeds import as_seeds, check_sweep_settings, markdown_table, train_seeds
from hapnet.utils.paths import check_output_location
from hapnet.utils.settings_files import check_known, read_settings
from hapnet.utils.textio import atomic_path

SETTINGS_FILE = "reproduce-settings.json"
TABLE_MD, TABLE_JSON = "reproduce.md", "reproduce.json"


@dataclass(frozen=True)
class PaperConfig:
    key: str  # what --configs takes, and the sub-folder
    name: str  # the paper's row label
    model: str
    levels: int | None
    pretrain: str  # "glove" or "none"


# docs/algorithms.md: HAP and GRAM with GloVe of every node (the paper's setting); "+" = GloVe.
PAPER_CONFIGS: list[PaperConfig] = [
    PaperConfig("hap", "HAP", "hap", None, "glove"),
    PaperConfig("hap-lv3", "HAP (lv3)", "hap", 3, "glove"),
    PaperConfig("hap-lv2", "HAP (lv2)", "hap", 2, "glove"),
    PaperConfig("gram", "GRAM", "gram", None, "glove"),
    PaperConfig("gram-lv3", "GRAM (lv3)", "gram", 3, "glove"),
    PaperConfig("gram-lv2", "GRAM (lv2)", "gram", 2, "glove"),
    PaperConfig("rnn+", "RNN+", "rnn", None, "glove"),
    PaperConfig("rnn", "RNN", "rnn", None, "none"),
    PaperConfig("rollup+", "Rollup+", "rollup", None, "glove"),
    PaperConfig("rollup", "Rollup", "rollup", None, "none"),
]

# HAP paper, Table 3, MIMIC-III, accuracy@20: groups 0-25, 25-50, 50-75, 75-100, then overall.
# Only the rows docs/algorithms.md quotes; the others have no published figure here.
PUBLISHED: dict[str, list[float]] = {
    "HAP": [0.0414, 0.2179, 0.3813, 0.7983, 0.3619],
    "HAP (lv3)": [0.0434, 0.2119, 0.3884, 0.8006, 0.3633],
    "GRAM": [0.0426, 0.2042, 0.3733, 0.8084, 0.3591],
    "RNN+": [0.0399, 0.2167, 0.3806, 0.8044, 0.3625],
    "RNN": [0.0298, 0.1983, 0.3847, 0.8104, 0.3580],
    "Rollup": [0.0314, 0.1795, 0.3674, 0.8056, 0.3480],
}


def select_configs(keys: str | list[str] | None) -> list[PaperConfig]:
    """`hap,gram,rnn` -> those configurations, in the paper's order; None: all ten."""
    if keys is None:
        return list(PAPER_CONFIGS)
    wanted = [k.strip().lower() for k in (keys.split(",") if isinstance(keys, str) else keys) if k.strip()]
    known = {c.key for c in PAPER_CONFIGS}
    unknown = [k for k in wanted if k not in known]
    if unknown or not wanted:
        raise HapnetError(
            f"--configs: unknown configuration {', '.join(unknown) or '(none given)'}; "
            f"valid: {', '.join(c.key for c in PAPER_CONFIGS)}"
        )
    return [c for c in PAPER_CONFIGS if c.key in wanted]


def finished_seeds(folder: Path, seeds: list[int]) -> list[int]:
    """Seeds of a sweep folder whose run is complete (what `train_seeds` will not repeat)."""
    return [
        s for s in seeds if is_run_dir(folder / f"seed-{s}") and (folder / f"seed-{s}" / METRICS).exists()
    ]


# The settings of `reproduce` a settings file may hold (`hapnet reproduce --config FILE`).
REPRODUCE_SETTINGS = (
    "data", "seeds", "configs", "ontology", "preset", "epochs", "dim", "hidden", "attention_dim",
    "glove_epochs", "ontology_scope", "device",
)  # fmt: skip


def reproduce_settings_from_file(path: str | Path) -> dict[str, Any]:
    """The `reproduce` settings of a TOML, YAML or JSON file; unknown names refused."""
    return check_known(path, read_settings(path), REPRODUCE_SETTINGS)


def reproduce(
    data: str | Path,
    out: str | Path,
    *,
    seeds: str | list[int] | None = None,
    configs: str | list[str] | None = None,
    ontology: str = DEFAULT_ONTOLOGY,
    preset: str = "paper",
    epochs: int | None = None,
    dim: int | None = None,
    hidden: int | None = None,
    attention_dim: int | None = None,
    glove_epochs: int | None = None,
    ontology_scope: str | None = None,
    device: str = "auto",
    force: bool = False,
    callbacks: Any = None,
    on_config: Any = None,
) -> dict[str, Any]:
    """Train the paper's configurations (`make_config(preset=preset)` + overrides) over the seeds
    and write OUT/reproduce.md and OUT/reproduce.json. Returns the JSON's content.

    `on_config(paper_config, index, count, done)` is called before each configuration (progress;
    `done`: its seeds already finished, which are not trained again).
    """
    seeds = [0, 1, 2, 3, 4] if seeds is None else as_seeds(seeds)
    chosen = select_configs(configs)
    data_path = Path(data)
    if not data_path.exists():
        raise HapnetError(f"{data_path}: no such file or folder")
    out = check_output_location(out, force=True, kind="folder")  # an existing folder is checked below
    settings = {
        "data": str(data_path.resolve()),
        "ontology": ontology,
        "preset": preset,
        "epochs": epochs,
        "dim": dim,
        "hidden": hidden,
        "attention_dim": attention_dim,
        "glove_epochs": glove_epochs,
        "ontology_scope": ontology_scope,
        "device": device,
    }
    if out.exists() and any(out.iterdir()) and not (out / SETTINGS_FILE).exists() and not force:
        raise HapnetError(f"{out}: already exists and is not a reproduce folder (use another -o or --force)")
    sweep_configs = []
    for paper in chosen:
        config = make_config(
            model=paper.model,
            levels=paper.levels,
            pretrain=paper.pretrain,
            **settings,
        )
        if not force:  # before any training: a clash in the last configuration stops the first
            check_sweep_settings(out / paper.key, config)
        sweep_configs.append((paper, config))
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / SETTINGS_FILE, {"settings": settings, "seeds": seeds, "configs": [c.key for c in chosen]}
    )

    rows, results = [], {}
    for index, (paper, config) in enumerate(sweep_configs):
        if on_config is not None:
            done = [] if force else finished_seeds(out / paper.key, seeds)
            on_config(paper, index, len(sweep_configs), done)
        sweep = train_seeds(config, seeds, out / paper.key, force=force, callbacks=callbacks)
        rows.append((paper.name, sweep.summary))
        results[paper.key] = {
            "name": paper.name,
            "model": paper.model,
            "levels": paper.levels,
            "pretrain": paper.pretrain,
            "summary": sweep.summary,
            "published": PUBLISHED.get(paper.name),
        }
    published = {paper.name: PUBLISHED[paper.name] for paper in chosen if paper.name in PUBLISHED}
    table = markdown_table(rows, published)
    report = {
        "settings": settings,
        "seeds": seeds,
        "configs": results,
        "published_source": "HAP paper (Zhang et al., KDD 2020), Table 3, MIMIC-III, accuracy@20",
    }
    with atomic_path(out / TABLE_MD, overwrite=True) as tmp:
        tmp.write_text(table)
    write_json(out / TABLE_JSON, report)  # atomic too
    report["markdown"] = table
    return report
