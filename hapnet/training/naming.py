"""Names, built in one place: of a run (`run_name` for folders, `run_label` for tables, plots and
explanations) and of the frequency groups of the evaluation (`GROUP_LABELS`, `group_names`)."""

from __future__ import annotations

from typing import Any

# Percentile ranges of the training frequency, rarest group first (docs/algorithms.md).
GROUP_LABELS = ("0-25", "25-50", "50-75", "75-100")


def group_names(separator: str = " ") -> list[str]:
    """'0-25% (rarest)', '25-50%', '50-75%', '75-100% (most frequent)' (`separator` before the
    parentheses: a newline for plot axes)."""
    names = [f"{label}%" for label in GROUP_LABELS]
    names[0] += f"{separator}(rarest)"
    names[-1] += f"{separator}(most frequent)"
    return names


def _get(config: Any) -> Any:
    """A getter over a TrainConfig or a saved config.json (a dict)."""
    return config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)


def _settings(config: Any) -> tuple[str, int | None, bool]:
    """(model, levels, glove) of a TrainConfig or of a saved config.json (a dict)."""
    get = _get(config)
    return str(get("model", "?")), get("levels"), get("pretrain") == "glove"


def _beyond_paper(config: Any) -> list[str]:
    """Short names of the inputs and tasks beyond the paper's: auxiliary levels, visit gaps. (The
    output layer, like the optimiser and the loss, is a training setting: config.json has it.)"""
    get = _get(config)
    parts = []
    if get("aux_levels"):
        parts.append("aux" + "".join(str(level) for level in get("aux_levels")))
    if get("time_input"):
        parts.append("time")
    return parts


def run_name(config: Any) -> str:
    """`hap`, `hap-lv3`, `gram-lv2-glove`, `hap-aux12-time`: what a run folder is called by default."""
    model, levels, glove = _settings(config)
    name = model + (f"-lv{levels}" if levels else "") + ("-glove" if glove else "")
    return "-".join([name, *_beyond_paper(config)])


def run_label(config: Any) -> str:
    """The paper's way: `HAP`, `GRAM (lv3)`, `RNN+` (RNN with GloVe), `HAP (lv2, GloVe)`."""
    # The registry imports torch; folder names and group names above stay torch-free for the CLI.
    from hapnet.models.registry import MODELS

    model, levels, glove = _settings(config)
    spec = MODELS.get(model)
    name = spec.label if spec else model
    # The paper's "+" marks the baselines whose GloVe covers their own rows only (RNN+, Rollup+);
    # HAP and GRAM with GloVe over every ancestor are its plain "HAP", "GRAM".
    plus = spec is not None and spec.glove_scope != "ancestors"
    if glove and plus:
        name += "+"
    extras = [f"lv{levels}"] if levels else []
    if glove and not plus:
        extras.append("GloVe")
    extras += _beyond_paper(config)
    return f"{name} ({', '.join(extras)})" if extras else name
