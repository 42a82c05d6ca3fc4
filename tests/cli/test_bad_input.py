"""Bad input to every command: each case builds its files, runs the command in-process and checks
the project's rule: the expected exit code (2), no traceback, one `error:` line on stderr that
names the problem (warnings aside), and nothing new or changed in its folder or in the shared
tiny run. Cases waiting for a fix are strict xfails: they fail loudly once the fix lands."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import typer.main
from testdata import MIMIC3
from tiny import LEAVES, build_tiny_run
from typer.testing import CliRunner

from hapnet.cli.main import app
from hapnet.embeddings.formats import EmbeddingTable, write_embeddings
from hapnet.training.config import make_config

runner = CliRunner()
GARBAGE = bytes(range(256)) * 4  # NUL and control bytes: binary by any measure
MARKER = "UNPICKLED"  # a folder the booby-trapped pickles create if anything ever loads them


@dataclass(frozen=True)
class Shared:
    """Built once per module: the tiny ontology and visits, a 2-epoch HAP run, an embeddings file."""

    root: Path
    ontology: Path
    data: Path
    run: Path
    embeddings: Path


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Shared:
    root = tmp_path_factory.mktemp("shared")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tiny validation split is too small: said, known
        run = build_tiny_run(root, "hap", name="run", pretrain="none", quiet=True)
    ontology, data = root / "tiny_ontology.csv", root / "visits.csv"
    embeddings = root / "tiny.parquet"
    vectors = np.random.default_rng(0).normal(size=(len(LEAVES), 8))
    write_embeddings(EmbeddingTable(LEAVES, vectors), embeddings)
    return Shared(root, ontology, data, run, embeddings)


# ----------------------------------------------------------------------------- building bad files
class _Trap:
    """Unpickling this runs os.mkdir(MARKER): a loader that unpickles leaves a folder behind."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __reduce__(self):  # noqa: ANN204
        return (os.mkdir, (str(self.folder / MARKER),))


def put(path: Path, content: bytes | str = GARBAGE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def trap(path: Path, folder: Path) -> Path:
    return put(path, pickle.dumps(_Trap(folder)))


def folder(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def a_file(t: Path) -> Path:
    """A plain file where a folder is expected (`-o notes.txt/out`)."""
    return put(t / "notes.txt", "my notes\n")


def run_copy(t: Path, s: Shared, files: dict[str, bytes | str] | None = None) -> Path:
    """A copy of the tiny run, with some of its files replaced."""
    run = t / "run"
    shutil.copytree(s.run, run)
    for name, content in (files or {}).items():
        put(run / name, content)
    return run


def trapped_run(t: Path, s: Shared, name: str) -> Path:
    """A copy of the tiny run whose file `name` is a booby-trapped pickle."""
    return run_copy(t, s, {name: pickle.dumps(_Trap(t))})


def mimic_duplicate_admission(t: Path) -> Path:
    """The MIMIC-III demo with one admission id given to a second patient."""
    out = folder(t / "mimic")
    for table in ("ADMISSIONS", "DIAGNOSES_ICD"):
        put(out / f"{table}.csv", gzip.decompress((MIMIC3 / f"{table}.csv.gz").read_bytes()))
    lines = (out / "ADMISSIONS.csv").read_text().splitlines()
    first, other = lines[1].split(","), lines[5].split(",")
    first[1], first[3] = other[1], "2150-01-01 10:00:00"  # another subject, another time
    put(out / "ADMISSIONS.csv", "\n".join([*lines, ",".join(first)]) + "\n")
    return out


def meds_data(t: Path, data: bytes | dict | None) -> Path:
    """A MEDS folder whose data/0.parquet holds `data` (columns), bytes as they are, or nothing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = folder(t / "meds")
    folder(out / "data")
    folder(out / "metadata")
    if isinstance(data, bytes):
        put(out / "data" / "0.parquet", data)
    elif data is not None:
        pq.write_table(pa.table(data), out / "data" / "0.parquet")
    return out


MEDS_EVENTS = {
    "subject_id": [1, 1],
    "time": [np.datetime64("2100-01-01", "us")] * 2,
    "code": ["LAB//1", "LAB//2"],
}


def omop_data(t: Path, conditions: str) -> Path:
    out = folder(t / "omop")
    put(out / "condition_occurrence.csv", conditions)
    return out


def sweep_with_corrupt_metrics(t: Path, s: Shared) -> Path:
    """A finished one-seed sweep of the TINY settings whose seed-0/metrics.json is damaged."""
    out = folder(t / "sweep")
    config = make_config(data=str(s.data), ontology=str(s.ontology), **TINY_SETTINGS)
    put(out / "seeds.json", json.dumps({"config": config.to_dict(), "seeds": [0]}))
    shutil.copytree(s.run, out / "seed-0")
    put(out / "seed-0" / "metrics.json", "{not json")
    return out


def partial_run(t: Path, s: Shared, resume: bytes | None) -> Path:
    """An interrupted run `t/run`: its .run.partial folder, with `resume` as resume.pt if given."""
    partial = folder(t / ".run.partial")
    shutil.copy(s.run / "config.json", partial / "config.json")
    if resume is not None:
        put(partial / "resume.pt", resume)
    return t / "run"


TINY_SETTINGS = dict(
    model="rnn", pretrain="none", epochs=1, dim=8, hidden=8, attention_dim=4, batch_size=16, device="cpu"
)
TINY = [arg for key, value in TINY_SETTINGS.items() for arg in (f"--{key.replace('_', '-')}", str(value))]
EMBED = ["--dim", "8", "--epochs", "2", "--device", "cpu"]
REPRODUCE = ["--epochs", "1", "--dim", "8", "--hidden", "8", "--attention-dim", "4", "--device", "cpu"]


def train_on(s: Shared, data: Path | None = None, *more: object) -> list:
    """`hapnet train` with the tiny settings on `data` (default: the tiny visits) and `more`."""
    return ["train", "--data", data or s.data, "--ontology", s.ontology, *TINY, *more]


TUNE = ["--epochs", "1", "--space", "tiny", "--trials", "1", "--device", "cpu"]


def tune_on(s: Shared, *more: object) -> list:
    """`hapnet tune` with one tiny trial on the tiny data and `more`."""
    return ["tune", "--data", s.data, "--ontology", s.ontology, *TUNE, *more]


# ----------------------------------------------------------------------------- the cases
Args = Callable[[Path, Shared], list]  # builds a case's files in its folder; returns the command line


def case(name: str, args: Args, message: str, exit_code: int = 2, xfail: str | None = None):  # noqa: ANN201
    marks = [pytest.mark.xfail(reason=xfail, strict=True)] if xfail else []
    return pytest.param(args, message, exit_code, id=name, marks=marks)


CASES = [
    # ---- ontology info / show / list
    case(
        "ontology-info-missing", lambda t, s: ["ontology", "info", t / "nope.csv"], "nope.csv: no such file"
    ),
    case("ontology-info-folder", lambda t, s: ["ontology", "info", folder(t / "onto.csv")], "is a folder"),
    case("ontology-info-binary", lambda t, s: ["ontology", "info", put(t / "o.csv")], "binary data"),
    case("ontology-info-empty", lambda t, s: ["ontology", "info", put(t / "o.csv", "")], "empty file"),
    case("ontology-info-pickle", lambda t, s: ["ontology", "info", trap(t / "o.csv", t)], "binary"),
    case("ontology-info-unknown", lambda t, s: ["ontology", "info", "icd-99"], "icd-99"),
    case(
        "ontology-info-levels-0",
        lambda t, s: ["ontology", "info", s.ontology, "--levels", "0"],
        "--levels must be at least 1, got 0",
    ),
    case(
        "ontology-show-unknown-code",
        lambda t, s: ["ontology", "show", s.ontology, "ZZZ99"],
        "unknown code 'ZZZ99'",
    ),
    case(
        "ontology-show-cycle",
        lambda t, s: ["ontology", "show", put(t / "c.csv", "code,parent\nA,B\nB,A\n"), "A"],
        "cycle",
    ),
    case("ontology-list-extra-argument", lambda t, s: ["ontology", "list", "x"], "x"),
    # ---- train
    case(
        "train-data-missing",
        lambda t, s: train_on(s, t / "nope.csv", "-o", t / "r"),
        "nope.csv",
    ),
    case(
        "train-data-empty-folder",
        lambda t, s: train_on(s, folder(t / "d"), "-o", t / "r"),
        "not a visit data folder",
    ),
    case(
        "train-data-binary",
        lambda t, s: train_on(s, put(t / "v.csv"), "-o", t / "r"),
        "binary data",
    ),
    case(
        "train-data-empty",
        lambda t, s: train_on(s, put(t / "v.csv", ""), "-o", t / "r"),
        "v.csv",
    ),
    case(
        "train-data-pickle",
        lambda t, s: train_on(s, trap(t / "v.csv", t), "-o", t / "r"),
        "v.csv",
    ),
    case(
        "train-data-mimic-duplicate-hadm-id",
        lambda t, s: ["train", "--data", mimic_duplicate_admission(t), *TINY, "-o", t / "r"],
        "hadm_id 142345 also on line 2 with another subject_id",
    ),
    case(
        "train-data-meds-missing-column",
        lambda t, s: train_on(
            s, meds_data(t, {k: v for k, v in MEDS_EVENTS.items() if k != "code"}), "-o", t / "r"
        ),
        "0.parquet: not a MEDS data file: no column 'code'",
    ),
    case(
        "train-data-meds-wrong-type",
        lambda t, s: train_on(s, meds_data(t, {**MEDS_EVENTS, "subject_id": ["a", "b"]}), "-o", t / "r"),
        "column 'subject_id' is string, MEDS needs int64",
    ),
    case(
        "train-data-meds-no-diagnosis",
        lambda t, s: train_on(s, meds_data(t, MEDS_EVENTS), "-o", t / "r"),
        "no diagnosis event among its 2 events",
    ),
    case(
        "train-data-meds-empty-folder",
        lambda t, s: train_on(s, meds_data(t, None), "-o", t / "r"),
        "no .parquet files: an empty MEDS dataset",
    ),
    case(
        "train-data-meds-garbage-parquet",
        lambda t, s: train_on(s, meds_data(t, GARBAGE), "-o", t / "r"),
        "0.parquet: not a parquet file",
    ),
    case(
        "train-data-omop-no-source-value",
        lambda t, s: train_on(
            s, omop_data(t, "person_id,condition_start_date\n1,2100-01-01\n"), "-o", t / "r"
        ),
        "no code column",
    ),
    case(
        "train-code-pattern-not-a-regex",
        lambda t, s: train_on(s, None, "--code-pattern", "DX//(", "-o", t / "r"),
        "--code-pattern 'DX//(': not a regular expression",
    ),
    case(
        "train-code-pattern-not-meds",
        lambda t, s: train_on(s, None, "--code-pattern", "DX//(.+)", "-o", t / "r"),
        "--code-pattern applies to MEDS datasets",
    ),
    case(
        "train-ontology-meds-without-codes",
        lambda t, s: [
            "train",
            "--data",
            s.data,
            "--ontology",
            f"meds:{folder(t / 'm')}",
            *TINY,
            "-o",
            t / "r",
        ],
        "metadata/codes.parquet: file not found",
    ),
    case(
        "train-split-meds-without-labels",
        lambda t, s: train_on(s, None, "--split", "meds", "-o", t / "r"),
        "has no split labels",
    ),
    case(
        "train-out-under-a-file",
        lambda t, s: train_on(s, None, "-o", a_file(t) / "r"),
        "notes.txt is a file, not a folder",
    ),
    case(
        "train-out-exists",
        lambda t, s: train_on(s, None, "-o", folder(t / "r")),
        "already exists",
    ),
    case(
        "train-k-0",
        lambda t, s: train_on(s, None, "--k", "0", "-o", t / "r"),
        "--k must be at least 1",
    ),
    case(
        "train-unknown-ontology",
        lambda t, s: ["train", "--data", s.data, "--ontology", "icd-99", *TINY, "-o", t / "r"],
        "icd-99",
    ),
    case(
        "train-bad-columns",
        lambda t, s: [
            *train_on(s),
            *("--columns", "patient=nope", "-o", t / "r"),
        ],
        "nope",
    ),
    case(
        "train-unknown-model",
        lambda t, s: train_on(s, None, "--model", "lstm"),
        "lstm",
    ),
    case(
        "train-threads-0",
        lambda t, s: train_on(s, None, "--threads", "0"),
        "--threads must be at least 1",
    ),
    case(
        "train-patience-negative",
        lambda t, s: train_on(s, None, "--patience", "-1"),
        "--patience must be 0",
    ),
    case(
        "train-levels-99",
        lambda t, s: train_on(s, None, "--levels", "99", "-o", t / "r"),
        "--levels 99",
    ),
    case(
        "train-default-out-refused",
        lambda t, s: train_on(s, None, "--levels", "99"),
        "--levels 99",
    ),
    case(
        "train-time-input-without-times",
        lambda t, s: train_on(s, None, "--time-input", "-o", t / "r"),
        "no visit times",
    ),
    case(
        "train-seed-negative",
        lambda t, s: train_on(s, None, "--seed", "-1", "-o", t / "r"),
        "seed",
    ),
    case(
        "train-seeds-garbage",
        lambda t, s: train_on(s, None, "--seeds", "a-b"),
        "--seeds 'a-b'",
    ),
    case("train-nproc-0", lambda t, s: train_on(s, None, "--nproc", "0", "-o", t / "r"), "--nproc must be"),
    case(
        "train-nproc-with-seeds",
        lambda t, s: train_on(s, None, "--nproc", "2", "--seeds", "0-1", "-o", t / "r"),
        "one --seed at a time",
    ),
    case(
        "train-seeds-out-under-a-file",
        lambda t, s: [
            *train_on(s),
            *("--seeds", "0-1", "-o", a_file(t) / "sweep"),
        ],
        "notes.txt is a file, not a folder",
    ),
    case(
        "train-seeds-corrupt-metrics",
        lambda t, s: [
            *train_on(s),
            *("--seeds", "0", "-o", sweep_with_corrupt_metrics(t, s)),
        ],
        "seed-0/metrics.json: not a hapnet metrics file",
    ),
    case(
        "train-resume-pickle",
        lambda t, s: ["train", "--resume", partial_run(t, s, pickle.dumps(_Trap(t)))],
        "resume.pt",
    ),
    case(
        "train-resume-garbage",
        lambda t, s: ["train", "--resume", partial_run(t, s, GARBAGE)],
        "resume.pt",
    ),
    case(
        "train-resume-no-checkpoint",
        lambda t, s: ["train", "--resume", partial_run(t, s, None)],
        "no checkpoint",
    ),
    case("train-resume-finished", lambda t, s: ["train", "--resume", s.run], "finished"),
    # ---- evaluate
    case("evaluate-missing-run", lambda t, s: ["evaluate", t / "nope"], "not a hapnet run folder"),
    case("evaluate-not-a-run", lambda t, s: ["evaluate", folder(t / "r")], "not a hapnet run folder"),
    case(
        "evaluate-checkpoint-pickle",
        lambda t, s: ["evaluate", trapped_run(t, s, "checkpoint.pt")],
        "checkpoint.pt",
    ),
    case(
        "evaluate-checkpoint-garbage",
        lambda t, s: ["evaluate", run_copy(t, s, {"checkpoint.pt": GARBAGE})],
        "checkpoint.pt",
    ),
    case(
        "evaluate-config-garbage",
        lambda t, s: ["evaluate", run_copy(t, s, {"config.json": "{oops"})],
        "config.json",
    ),
    case(
        "evaluate-vocab-garbage",
        lambda t, s: ["evaluate", run_copy(t, s, {"vocab.csv": GARBAGE})],
        "vocab.csv",
    ),
    case("evaluate-k-0", lambda t, s: ["evaluate", s.run, "--k", "0"], "--k must be at least 1"),
    case("evaluate-bad-device", lambda t, s: ["evaluate", s.run, "--device", "gpu0"], "--device 'gpu0'"),
    case("evaluate-data-binary", lambda t, s: ["evaluate", s.run, "--data", put(t / "v.csv")], "binary data"),
    # ---- tune
    case("tune-timeout-garbage", lambda t, s: tune_on(s, "--timeout", "5x", "-o", t / "o"), "--timeout '5x'"),
    case(
        "tune-objective-unknown",
        lambda t, s: tune_on(s, "--objective", "test_loss", "-o", t / "tune"),
        "--objective 'test_loss'",
    ),
    case("tune-space-unknown", lambda t, s: tune_on(s, "--space", "huge", "-o", t / "o"), "--space 'huge'"),
    case("tune-trials-zero", lambda t, s: tune_on(s, "--trials", "0", "-o", t / "tune"), "--trials"),
    case("tune-out-under-a-file", lambda t, s: tune_on(s, "-o", a_file(t) / "tune"), "notes.txt/tune"),
    case("tune-not-its-folder", lambda t, s: tune_on(s, "-o", a_file(t).parent), "not a hapnet tune folder"),
    case(
        "tune-storage-garbage",
        lambda t, s: tune_on(s, "--storage", "nonsense", "-o", t / "tune"),
        "--storage nonsense",
    ),
    case(
        "tune-storage-no-folder",
        lambda t, s: tune_on(s, "--storage", f"sqlite:///{t}/nowhere/s.db", "-o", t / "tune"),
        "no such folder",
    ),
    case(
        "tune-data-missing",
        lambda t, s: ["tune", "--data", t / "nope.csv", "--ontology", s.ontology, *TUNE, "-o", t / "tune"],
        "nope.csv",
    ),
    case("tune-config-typo", lambda t, s: tune_on(s, "--config", put(t / "c.toml", "epoch = 1")), "'epoch'"),
    # ---- models
    case("models-unknown-option", lambda t, s: ["models", "--bogus"], "--bogus"),
    # ---- synth
    case(
        "synth-out-under-a-file",
        lambda t, s: ["synth", "-o", a_file(t) / "syn", "--patients", "5"],
        "notes.txt",
    ),
    case(
        "synth-out-exists",
        lambda t, s: ["synth", "-o", folder(t / "syn"), "--patients", "5"],
        "already exists",
    ),
    case("synth-unknown-ontology", lambda t, s: ["synth", "-o", t / "syn", "--ontology", "icd-99"], "icd-99"),
    case("synth-like-missing", lambda t, s: ["synth", "-o", t / "syn", "--like", t / "nope.csv"], "nope.csv"),
    case("synth-like-binary", lambda t, s: ["synth", "-o", t / "syn", "--like", put(t / "v.csv")], "binary"),
    # ---- data-stats
    case("data-stats-missing", lambda t, s: ["data-stats", t / "nope.csv"], "nope.csv"),
    case("data-stats-empty-folder", lambda t, s: ["data-stats", folder(t / "d")], "not a visit data folder"),
    case("data-stats-binary", lambda t, s: ["data-stats", put(t / "v.csv")], "binary data"),
    case("data-stats-empty", lambda t, s: ["data-stats", put(t / "v.csv", "")], "v.csv"),
    case(
        "data-stats-gzip-of-garbage", lambda t, s: ["data-stats", put(t / "v.csv.gz", b"\x1f\x8bxx")], "gzip"
    ),
    case(
        "data-stats-bad-columns",
        lambda t, s: ["data-stats", s.data, "--ontology", s.ontology, "--columns", "nonsense"],
        "nonsense",
    ),
    case(
        "data-stats-unknown-ontology", lambda t, s: ["data-stats", s.data, "--ontology", "icd-99"], "icd-99"
    ),
    case(
        "data-stats-compare-missing",
        lambda t, s: ["data-stats", s.data, "--ontology", s.ontology, "--compare", t / "nope.json"],
        "nope.json",
    ),
    case(
        "data-stats-compare-garbage",
        lambda t, s: ["data-stats", s.data, "--ontology", s.ontology, "--compare", put(t / "r.json")],
        "r.json",
    ),
    case(
        "data-stats-compare-wrong-shape",
        lambda t, s: [
            "data-stats",
            s.data,
            "--ontology",
            s.ontology,
            "--compare",
            put(t / "r.json", "[1, 2]"),
        ],
        "r.json",
    ),
    case(
        "data-stats-utf16-truncated",
        lambda t, s: [
            "data-stats",
            put(t / "v.csv", "patient,visit,code\np1,v1,A11\n".encode("utf-16") + b"x"),
        ],
        "not valid UTF-16",
    ),
    case(
        "data-stats-omop-tab-separated",
        lambda t, s: ["data-stats", omop_data(t, "person_id\tcondition_source_value\n1\t4019\n")],
        "tab-separated",
    ),
    case(
        "data-stats-meds-garbage-parquet",
        lambda t, s: ["data-stats", meds_data(t, GARBAGE)],
        "0.parquet: not a parquet file",
    ),
    case(
        "data-stats-mimic-duplicate-hadm-id",
        lambda t, s: ["data-stats", mimic_duplicate_admission(t)],
        "hadm_id 142345 also on line 2 with another subject_id",
    ),
    # ---- predict
    case("predict-missing-run", lambda t, s: ["predict", t / "nope", "--history", "A11"], "not a hapnet run"),
    case(
        "predict-k-0",
        lambda t, s: ["predict", s.run, "--history", "A11", "--k", "0"],
        "--k must be at least 1",
    ),
    case(
        "predict-checkpoint-pickle",
        lambda t, s: ["predict", trapped_run(t, s, "checkpoint.pt"), "--history", "A11"],
        "checkpoint.pt",
    ),
    case(
        "predict-patient-without-data", lambda t, s: ["predict", s.run, "--patient", "p1"], "--patient needs"
    ),
    case(
        "predict-patient-data-binary",
        lambda t, s: ["predict", s.run, "--patient", "p1", "--data", put(t / "v.csv")],
        "binary data",
    ),
    case(
        "predict-unknown-patient",
        lambda t, s: ["predict", s.run, "--patient", "nobody", "--data", s.data],
        "nobody",
    ),
    # ---- explain
    case("explain-unknown-code", lambda t, s: ["explain", s.run, "ZZZ99"], "'ZZZ99': not a node"),
    case("explain-missing-run", lambda t, s: ["explain", t / "nope", "A11"], "not a hapnet run"),
    case("explain-k-0", lambda t, s: ["explain", s.run, "A11", "--k", "0"], "--k must be at least 1"),
    case(
        "explain-png-under-a-file",
        lambda t, s: ["explain", s.run, "B12", "--png", a_file(t) / "b12.png"],
        "notes.txt is a file, not a folder",
    ),
    case("explain-png-bad-suffix", lambda t, s: ["explain", s.run, "B12", "--png", t / "b12.txt"], "b12.txt"),
    case(
        "explain-checkpoint-pickle",
        lambda t, s: ["explain", trapped_run(t, s, "checkpoint.pt"), "A11"],
        "checkpoint.pt",
    ),
    # ---- plot
    case("plot-not-a-run", lambda t, s: ["plot", folder(t / "r"), "-o", t / "f"], "not a hapnet run folder"),
    case(
        "plot-metrics-invalid-json",
        lambda t, s: ["plot", run_copy(t, s, {"metrics.json": "{oops"}), "-o", t / "f"],
        "run/metrics.json: not a hapnet metrics file",
    ),
    case(
        "plot-metrics-a-list",
        lambda t, s: ["plot", run_copy(t, s, {"metrics.json": "[1, 2]"}), "-o", t / "f"],
        "run/metrics.json: not a hapnet metrics file (a JSON list",
    ),
    case(
        "plot-metrics-wrong-shape",
        lambda t, s: ["plot", run_copy(t, s, {"metrics.json": '{"test": 3}'}), "-o", t / "f"],
        "run/metrics.json: not a hapnet metrics file (no `test` results)",
    ),
    case(
        "plot-history-missing-columns",
        lambda t, s: ["plot", run_copy(t, s, {"history.csv": "epoch,loss\n1,2\n"}), "-o", t / "f"],
        "run/history.csv: not a hapnet history file (no column train_loss",
    ),
    case(
        "plot-vocab-missing-code-column",
        lambda t, s: ["plot", run_copy(t, s, {"vocab.csv": "class,name\n0,x\n"}), "-o", t / "f"],
        "run/vocab.csv: not a hapnet vocabulary file (no column code)",
    ),
    case(
        "plot-embeddings-pickle",
        lambda t, s: ["plot", trapped_run(t, s, "code_embeddings.npy"), "-o", t / "f"],
        "code_embeddings.npy: not a hapnet embeddings file",
    ),
    case(
        "plot-config-wrong-shape",
        lambda t, s: ["plot", run_copy(t, s, {"config.json": '{"seed": "x"}'}), "-o", t / "f"],
        "run/config.json: not a hapnet run configuration",
    ),
    case(
        "plot-out-under-a-file",
        lambda t, s: ["plot", s.run, "-o", a_file(t) / "f"],
        "notes.txt is a file, not a folder",
    ),
    case(
        "plot-existing-figure",
        lambda t, s: ["plot", s.run, "-o", put(t / "f" / "learning_curves.png").parent],
        "learning_curves.png: already exists",
    ),
    case("plot-bad-map", lambda t, s: ["plot", s.run, "-o", t / "f", "--map", "umap"], "--map must be"),
    # ---- embed
    case("embed-unknown-ontology", lambda t, s: ["embed", "icd-99", "-o", t / "e.parquet", *EMBED], "icd-99"),
    case("embed-ontology-binary", lambda t, s: ["embed", put(t / "o.csv"), "-o", t / "e.parquet"], "binary"),
    case(
        "embed-ontology-empty", lambda t, s: ["embed", put(t / "o.csv", ""), "-o", t / "e.parquet"], "empty"
    ),
    case(
        "embed-ontology-wrong-columns",
        lambda t, s: ["embed", put(t / "o.csv", "foo,bar\n1,2\n"), "-o", t / "e.parquet"],
        "wrong columns",
    ),
    case(
        "embed-out-under-a-file",
        lambda t, s: ["embed", s.ontology, "-o", a_file(t) / "e.parquet", *EMBED],
        "notes.txt is a file, not a folder",
    ),
    case(
        "embed-out-unknown-format",
        lambda t, s: ["embed", s.ontology, "-o", t / "e.json", *EMBED],
        "unknown embedding format '.json'",
    ),
    case(
        "embed-out-exists",
        lambda t, s: ["embed", s.ontology, "-o", put(t / "e.parquet"), *EMBED],
        "e.parquet: already exists",
    ),
    case(
        "embed-out-is-a-folder",
        lambda t, s: ["embed", s.ontology, "-o", folder(t / "e.parquet"), *EMBED, "--force"],
        "e.parquet: is a folder",
    ),
    case(
        "embed-from-run-not-a-run",
        lambda t, s: ["embed", s.ontology, "--from-run", folder(t / "r"), "-o", t / "e.csv"],
        "not a hapnet run folder",
    ),
    case(
        "embed-from-run-with-dim",
        lambda t, s: ["embed", s.ontology, "--from-run", s.run, "--dim", "8", "-o", t / "e.csv"],
        "--dim: not used with --from-run",
    ),
    case(
        "embed-metrics-under-a-file",
        lambda t, s: [
            *("embed", s.ontology, "-o", t / "e.parquet", *EMBED),
            *("--metrics", a_file(t) / "m.json"),
        ],
        "notes.txt",
    ),
    # ---- neighbors
    case("neighbors-missing", lambda t, s: ["neighbors", t / "e.parquet", "A11"], "file not found"),
    case("neighbors-folder", lambda t, s: ["neighbors", folder(t / "e.parquet"), "A11"], "is a folder"),
    case(
        "neighbors-npy-pickle",
        lambda t, s: ["neighbors", trap(t / "e.npy", t), "A11"],
        "e.npy: not a hapnet embeddings file (a Python pickle, never loaded)",
    ),
    case(
        "neighbors-npy-garbage",
        lambda t, s: ["neighbors", put(t / "e.npy"), "A11"],
        "e.npy: not a hapnet embeddings file",
    ),
    case(
        "neighbors-npy-empty",
        lambda t, s: ["neighbors", put(t / "e.npy", b""), "A11"],
        "e.npy: not a hapnet embeddings file (an empty file)",
    ),
    case(
        "neighbors-parquet-garbage",
        lambda t, s: ["neighbors", put(t / "e.parquet"), "A11"],
        "e.parquet: not a hapnet embeddings file",
    ),
    case(
        "neighbors-csv-empty",
        lambda t, s: ["neighbors", put(t / "e.csv", ""), "A11"],
        "e.csv: not a hapnet embeddings file",
    ),
    case(
        "neighbors-csv-pickle",
        lambda t, s: ["neighbors", trap(t / "e.csv", t), "A11"],
        "e.csv: not a hapnet embeddings file",
    ),
    case(
        "neighbors-w2v-binary",
        lambda t, s: ["neighbors", put(t / "e.w2v"), "A11"],
        "e.w2v: binary data",
    ),
    case(
        "neighbors-duplicate-code",
        lambda t, s: ["neighbors", put(t / "e.csv", "code,e0,e1\nA11,1,0\nA11,0,1\nB11,1,1\n"), "A11"],
        "code 'A11' has two vectors",
    ),
    case(
        "neighbors-nan-vector",
        lambda t, s: ["neighbors", put(t / "e.csv", "code,e0,e1\nA11,1,0\nB11,nan,1\n"), "A11"],
        "code 'B11' holds NaN",
    ),
    case("neighbors-unknown-code", lambda t, s: ["neighbors", s.embeddings, "ZZZ99"], "unknown code 'ZZZ99'"),
    case("neighbors-k-0", lambda t, s: ["neighbors", s.embeddings, "A11", "--k", "0"], "must be at least 1"),
    # ---- bench
    case("bench-unknown-model", lambda t, s: ["bench", "--model", "lstm"], "choose hap, gram or both"),
    case("bench-dim-0", lambda t, s: ["bench", "--dim", "0"], "sizes must be at least 1"),
    case("bench-bad-device", lambda t, s: ["bench", "--device", "tpu"], "--device 'tpu'"),
    case("bench-unknown-ontology", lambda t, s: ["bench", "--ontology", "icd-99"], "icd-99"),
    # ---- reproduce
    case(
        "reproduce-data-missing",
        lambda t, s: ["reproduce", "--data", t / "nope", "-o", t / "rep", "--configs", "rnn", *REPRODUCE],
        "no such file",
    ),
    case(
        "reproduce-out-under-a-file",
        lambda t, s: ["reproduce", "--data", s.data, "-o", a_file(t) / "rep", "--configs", "rnn"],
        "notes.txt/rep",
    ),
    case(
        "reproduce-unknown-config",
        lambda t, s: ["reproduce", "--data", s.data, "-o", t / "rep", "--configs", "transformer"],
        "transformer",
    ),
    case(
        "reproduce-seeds-garbage",
        lambda t, s: ["reproduce", "--data", s.data, "-o", t / "rep", "--seeds", "x"],
        "--seeds 'x'",
    ),
    case(
        "reproduce-not-its-folder",
        lambda t, s: ["reproduce", "--data", s.data, "-o", a_file(t).parent, "--configs", "rnn"],
        "is not a reproduce folder",
    ),
]


def tree(*roots: Path) -> dict[Path, tuple[int, int]]:
    """Every path under `roots` (hidden ones too) with its size and modification time."""
    state = {}
    for root in roots:
        for path in root.rglob("*"):
            info = path.lstat()
            state[path] = (info.st_size if path.is_file() else -1, info.st_mtime_ns)
    return state


@pytest.mark.parametrize(("args", "message", "exit_code"), CASES)
def test_bad_input_is_one_line_and_leaves_nothing(
    args: Args, message: str, exit_code: int, shared: Shared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # default output names land here, where they are seen
    command = [str(arg) for arg in args(work, shared)]
    before = tree(work, shared.root)
    result = runner.invoke(app, command)
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == exit_code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]
    assert not (work / MARKER).exists(), "a pickle was loaded"
    assert tree(work, shared.root) == before, "the command left or changed files"


def test_every_command_has_bad_input_cases() -> None:
    """A new command gets its cases here: the harness covers what `hapnet --help` lists."""
    group = typer.main.get_command(app)
    names = [name for name in group.commands if name != "ontology"]
    names += [f"ontology-{name}" for name in group.commands["ontology"].commands]
    assert len(names) >= 15  # train ... reproduce, ontology info/show/list
    ids = [param.id for param in CASES]
    assert [name for name in names if not any(i.startswith(f"{name}-") for i in ids)] == []
