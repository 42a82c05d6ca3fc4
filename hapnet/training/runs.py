"""The run folder: written under a temporary name, renamed into place when complete; read back by `load`.

Layout: config.json (every setting + versions), metrics.json, history.csv (one row per epoch),
vocab.csv (the observable codes: class, code, description, level, train_count, group),
checkpoint.pt (best model state_dict, tensors only), code_embeddings.npy (final g of every class),
ontology.npz (the ontology the run trained on, compiled: node order, ids, edges, levels) and
split.csv (patient_id, split: which patients trained, selected the epoch and tested it).

A run folder is self-contained: `load`, `evaluate`, `predict`, `explain`, `plot` and
`embed --from-run` read its own ontology and split, never the files it was trained from, which
may have changed since. config.json records the fingerprints of both the data and the ontology.

While a run trains, its `.NAME.partial` folder also holds resume.pt, rewritten atomically after every
epoch: everything `hapnet train --resume` needs to continue exactly where the run stopped (see
`save_resume_state`). It is removed once the run is complete and renamed into place.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hapnet import __version__
from hapnet.data.splits import Split
from hapnet.data.vocabulary import Vocabulary
from hapnet.errors import HapnetError, InputError, error_summary
from hapnet.models.predictor import NextVisitModel
from hapnet.ontology.builtins import DEFAULT_ONTOLOGY, load_ontology, read_cached_ontology, save_ontology
from hapnet.ontology.graph import Ontology
from hapnet.training.config import TrainConfig
from hapnet.training.metrics import AUC_CODES, NUM_GROUPS, SCORE_LABELS
from hapnet.training.setup import build_model
from hapnet.utils.paths import check_output_location, first_missing
from hapnet.utils.textio import atomic_path, read_json_object

CONFIG, METRICS, HISTORY, VOCAB, CHECKPOINT, EMBEDDINGS = (
    "config.json",
    "metrics.json",
    "history.csv",
    "vocab.csv",
    "checkpoint.pt",
    "code_embeddings.npy",
)
ONTOLOGY, SPLIT = "ontology.npz", "split.csv"
RESUME = "resume.pt"
DATA_FINGERPRINT = "data_fingerprint"  # key in config.json and metrics.json
ONTOLOGY_FINGERPRINT = "ontology_fingerprint"  # key in config.json
SPLIT_NAMES = ("train", "valid", "test")
PARTIAL_SUFFIX = ".partial"


def versions() -> dict[str, str]:
    return {
        "hapnet": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "python": platform.python_version(),
    }


def write_json(path: Path, value: Any) -> None:
    """`value` as JSON at `path`, replacing it only once completely written."""
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(value, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class RunWriter:
    """Writes a run into `.NAME.partial` beside the target, renamed to NAME by `finish()`."""

    def __init__(self, target: Path, work: Path, force: bool, created: Path | None = None):
        self.target, self.work, self.force = target, work, force
        self.created = created  # the outermost folder start() created for the run (removed on failure)

    @classmethod
    def start(cls, out: str | Path, config: TrainConfig, *, force: bool = False) -> RunWriter:
        target = Path(out)
        if target.exists() and not force:
            raise HapnetError(f"{target}: already exists (use --force to overwrite it)")
        check_output_location(target, force=force, kind="folder")  # before any data is read
        work = partial_path(target)
        if (work / RESUME).is_file() and not force:
            raise HapnetError(
                f"{target}: an interrupted run of it is in {work.name}; continue it with "
                f"`hapnet train --resume {target}`, or use --force to start over"
            )
        if work.exists():  # a run killed before its first checkpoint: nothing to keep
            shutil.rmtree(work)
        created = first_missing(target.absolute().parent)
        work.mkdir(parents=True)
        write_json(work / CONFIG, {**config.to_dict(), "versions": versions()})
        return cls(target, work, force, created)

    def save_vocabulary(self, ontology: Ontology, vocab: Any, counts: np.ndarray, groups: np.ndarray) -> None:
        frame = pd.DataFrame(
            {
                "class": np.arange(len(vocab.nodes)),
                "code": [ontology.ids[i] for i in vocab.nodes],
                "description": [ontology.descriptions[i] for i in vocab.nodes],
                "level": ontology.levels[vocab.nodes],
                "train_count": counts,
                "group": groups,
            }
        )
        frame.to_csv(self.work / VOCAB, index=False)

    def save_history(self, history: list[dict[str, Any]]) -> None:
        tmp = self.work / f".{HISTORY}.tmp"
        pd.DataFrame(history).to_csv(tmp, index=False)
        os.replace(tmp, self.work / HISTORY)

    def save_model(self, model: NextVisitModel, metrics: dict[str, Any]) -> None:
        torch.save(model.state_dict(), self.work / CHECKPOINT)
        with torch.no_grad():
            model.eval()
            np.save(self.work / EMBEDDINGS, model.code_embeddings().float().cpu().numpy())
        write_json(self.work / METRICS, metrics)

    @classmethod
    def reopen(cls, run_dir: str | Path, *, force: bool = False) -> RunWriter:
        """The writer of an interrupted run: `run_dir` is its final name or its `.NAME.partial` folder."""
        path = Path(run_dir)
        if path.name.startswith(".") and path.name.endswith(PARTIAL_SUFFIX):
            work, target = path, path.parent / path.name[1 : -len(PARTIAL_SUFFIX)]
        else:
            work, target = partial_path(path), path
        if not work.is_dir():
            if (target / METRICS).is_file():
                raise HapnetError(f"{target}: this run is finished; there is nothing to resume")
            raise HapnetError(f"{path}: no interrupted run to resume (no folder {work})")
        if not (work / RESUME).is_file():
            raise HapnetError(
                f"{work}: no checkpoint to resume from (the run stopped before its first epoch ended); "
                "train it again"
            )
        if target.exists() and not force:
            raise HapnetError(
                f"{target}: already exists; resuming {work.name} would replace it (use --force to allow it)"
            )
        return cls(target, work, force)

    def saved_config(self) -> TrainConfig:
        try:
            return TrainConfig.from_saved(json.loads((self.work / CONFIG).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise HapnetError(f"{self.work / CONFIG}: unreadable run configuration ({exc})") from None

    def save_data_fingerprint(self, fingerprint: str) -> None:
        """Record in config.json which data this run trains on (checked when it is resumed)."""
        path = self.work / CONFIG
        write_json(path, {**json.loads(path.read_text()), DATA_FINGERPRINT: fingerprint})

    def save_inputs(self, ontology: Ontology, patient_ids: np.ndarray, split: Split) -> None:
        """The ontology and the split this run trains on, so that the folder never depends on
        files that may change (see the module docstring)."""
        save_ontology(ontology, self.work / ONTOLOGY)
        path = self.work / CONFIG
        write_json(path, {**json.loads(path.read_text()), ONTOLOGY_FINGERPRINT: ontology.fingerprint()})
        parts = [(name, getattr(split, name)) for name in SPLIT_NAMES]
        frame = pd.DataFrame(
            {
                "patient_id": np.concatenate([patient_ids[rows] for _, rows in parts]),
                "split": np.repeat([name for name, _ in parts], [len(rows) for _, rows in parts]),
            }
        )
        frame.to_csv(self.work / SPLIT, index=False)

    def check_data_fingerprint(self, fingerprint: str, matches: Callable[[str], bool] | None = None) -> None:
        """A resumed run must see the data it started with: same split, vocabulary and batches.
        `matches(saved)` also accepts a fingerprint of an older version for the same data."""
        saved = json.loads((self.work / CONFIG).read_text()).get(DATA_FINGERPRINT)
        if saved is None:  # a run started before fingerprints
            return
        if saved != fingerprint and not (matches is not None and matches(saved)):
            raise HapnetError(
                f"{self.target}: the data changed since this run started (fingerprint {saved[:12]}, "
                f"now {fingerprint[:12]}); train again in a new folder"
            )

    def save_resume_state(self, state: dict[str, Any]) -> None:
        """Write resume.pt atomically: a kill at any moment leaves the previous epoch's or this one's."""
        tmp = self.work / f".{RESUME}.tmp"
        torch.save(state, tmp)
        os.replace(tmp, self.work / RESUME)

    def load_resume_state(self) -> dict[str, Any]:
        path = self.work / RESUME
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a pickle, garbage or a truncated file: never run it
            raise HapnetError(f"{path}: not a hapnet resume checkpoint ({error_summary(exc)})") from None

    def has_resume_state(self) -> bool:
        return (self.work / RESUME).is_file()

    def finish(self) -> Path:
        if self.target.exists():
            shutil.rmtree(self.target) if self.target.is_dir() else self.target.unlink()
        os.replace(self.work, self.target)
        # The run is complete: the resume state (several model copies) is no longer needed.
        (self.target / RESUME).unlink(missing_ok=True)
        return self.target

    def abandon(self) -> None:
        """Remove what this run wrote: its partial folder, and the folders created for it if
        nothing else has been put in them since."""
        shutil.rmtree(self.work, ignore_errors=True)
        if self.created is None:
            return
        for folder in [self.work.absolute().parent, *self.work.absolute().parent.parents]:
            if not folder.is_relative_to(self.created):
                break
            try:
                folder.rmdir()  # only an empty folder
            except OSError:
                break


def partial_path(target: Path) -> Path:
    """Where a run is written until it is complete: `.NAME.partial` beside NAME."""
    return target.parent / f".{target.name}{PARTIAL_SUFFIX}"


# ----------------------------------------------------------------------------- RNG states
def rng_states() -> dict[str, Any]:
    """Every random generator a training step may draw from, as tensors and plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


@dataclass
class Run:
    """A trained run read back from its folder: `hapnet.load(run_dir)`."""

    path: Path
    config: TrainConfig
    metrics: dict[str, Any]
    vocab: pd.DataFrame
    ontology: Ontology  # the one it trained on (ontology.npz), untruncated
    model: NextVisitModel
    data_fingerprint: str | None = None  # of the data it trained on (None: a run from before hapnet 0.2)

    @property
    def codes(self) -> list[str]:
        return self.vocab["code"].tolist()

    def vocabulary(self) -> Vocabulary:
        nodes = np.array([self.ontology.index(c) for c in self.codes], dtype=np.int64)
        return Vocabulary.from_nodes(nodes, len(self.ontology))

    def split_ids(self) -> dict[str, list[str]] | None:
        """The patient ids of each split (train, valid, test) as saved; None for a run from before
        split.csv existed."""
        path = self.path / SPLIT
        if not path.is_file():
            return None
        try:
            frame = pd.read_csv(path, dtype={"patient_id": str}, keep_default_na=False)
            return {name: frame.loc[frame["split"] == name, "patient_id"].tolist() for name in SPLIT_NAMES}
        except (OSError, ValueError, KeyError) as exc:
            raise HapnetError(f"{path}: not a hapnet split file ({exc})") from None


def is_run_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / CONFIG).is_file() and (path / CHECKPOINT).is_file() and (path / VOCAB).is_file()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _metrics_problem(metrics: Any) -> str | None:
    """What a finished run's metrics lack of what the sweep summary and the figures read."""
    if not isinstance(metrics, dict):
        return f"a JSON {type(metrics).__name__}, expected an object"
    test = metrics.get("test")
    if not isinstance(test, dict):
        return "no `test` results"
    for key in ("k", "seed", "best_epoch"):
        value = metrics.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            return f"`{key}` is not a whole number"
    groups = test.get("accuracy_by_group")
    if not isinstance(groups, list) or len(groups) != NUM_GROUPS or not all(map(_is_number, groups)):
        return f"`test.accuracy_by_group` is not {NUM_GROUPS} numbers"
    if not _is_number(test.get("accuracy")):
        return "`test.accuracy` is not a number"
    for key in (*SCORE_LABELS, AUC_CODES):  # optional: runs before issue #21 lack them
        if key in test and not _is_number(test[key]):
            return f"`test.{key}` is not a number"
    tasks = test.get("tasks", {})
    if not isinstance(tasks, dict) or not all(
        isinstance(scores, dict) and all(map(_is_number, scores.values())) for scores in tasks.values()
    ):
        return "`test.tasks` is not a score table per task"
    return None


def check_metrics(path: str | Path, metrics: Any) -> dict[str, Any]:
    """`metrics` as read from a finished run's `path` (metrics.json); `InputError` unless it holds
    what a sweep summary and the figures read (k, best epoch, test accuracy overall and by group)."""
    problem = _metrics_problem(metrics)
    if problem is not None:
        raise InputError(path, f"not a hapnet metrics file ({problem})")
    return metrics


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A finished run's metrics.json, read and checked (`check_metrics`)."""
    return check_metrics(path, read_json_object(Path(path), "a hapnet metrics file"))


def run_ontology(path: Path, saved: dict[str, Any]) -> Ontology:
    """The ontology the run in folder `path` trained on: its ontology.npz, else (a run from before
    hapnet 0.2) the one its config.json (`saved`) names, checked against the fingerprint it holds."""
    stored = path / ONTOLOGY
    if stored.is_file():
        try:
            ontology = read_cached_ontology(stored)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same one-line error
            raise HapnetError(f"{stored}: not a hapnet ontology file ({error_summary(exc)})") from None
        where = stored
    else:
        where = str(saved.get("ontology", DEFAULT_ONTOLOGY))
        ontology = load_ontology(where)
    expected = saved.get(ONTOLOGY_FINGERPRINT)
    if expected is not None and ontology.fingerprint() != expected:
        raise HapnetError(
            f"{where}: the ontology differs from the one run {path} trained on "
            f"(fingerprint {ontology.fingerprint()[:12]}, the run's {expected[:12]})"
        )
    return ontology


def _check_vocabulary(path: Path, vocab: pd.DataFrame, ontology: Ontology) -> None:
    if "code" not in vocab.columns or "group" not in vocab.columns:
        raise HapnetError(f"{path / VOCAB}: not a hapnet vocabulary (columns code and group expected)")
    missing = [code for code in vocab["code"] if ontology.find(code) is None]
    if missing:
        raise HapnetError(
            f"{path / VOCAB}: code {missing[0]} (and {len(missing) - 1} more) is not in ontology "
            f"{ontology.name}: the ontology differs from the one the run trained on"
        )


def load(run_dir: str | Path, device: str = "cpu") -> Run:
    """Read a run folder written by `hapnet train`; the checkpoint loads with weights_only=True
    (a file that is not a hapnet checkpoint is refused, and no code in it ever runs)."""
    path = Path(run_dir)
    if not is_run_dir(path):
        raise HapnetError(f"{path}: not a hapnet run folder (expected {CONFIG}, {VOCAB} and {CHECKPOINT})")
    saved = read_json_object(path / CONFIG, "a hapnet run configuration")
    try:
        config = TrainConfig.from_saved(saved).validate()
    except (HapnetError, ValueError, KeyError, TypeError) as exc:
        raise HapnetError(f"{path / CONFIG}: not a valid run configuration ({error_summary(exc)})") from None
    metrics = read_metrics(path / METRICS) if (path / METRICS).exists() else {}
    try:
        vocab_frame = pd.read_csv(path / VOCAB, dtype={"code": str}, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise HapnetError(f"{path / VOCAB}: unreadable ({error_summary(exc)})") from None
    ontology = run_ontology(path, saved)
    _check_vocabulary(path, vocab_frame, ontology)
    run = Run(path, config, metrics, vocab_frame, ontology, None, saved.get(DATA_FINGERPRINT))  # type: ignore[arg-type]
    model = build_model(config, ontology, run.vocabulary())
    try:
        state = torch.load(path / CHECKPOINT, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a pickle, garbage or a truncated file: never run it
        raise HapnetError(f"{path / CHECKPOINT}: not a hapnet checkpoint ({error_summary(exc)})") from None
    if not isinstance(state, dict):
        raise HapnetError(f"{path / CHECKPOINT}: not a hapnet checkpoint (no state dict)")
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise HapnetError(
            f"{path / CHECKPOINT}: does not match the run's model and ontology "
            f"({error_summary(exc)}); the run folder's files come from different runs"
        ) from None
    model.to(device).eval()
    run.model = model
    return run


def as_run(run: Run | str | Path, device: str = "cpu") -> Run:
    """A loaded run as it is, or the run folder `run` loaded (`load`)."""
    return run if isinstance(run, Run) else load(run, device=device)
