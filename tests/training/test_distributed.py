"""Data-parallel training (hapnet/training/distributed.py, docs/scaling.md).

The same results: 2 ranks (gloo, 1 thread each) at a global batch of B patients take the steps of
one process at batch B, so with dropout 0 the loss after every step, and every epoch's
validation and test figures, equal a one-process run's to float32 rounding. `hapnet train
--nproc 2` writes one run folder, like a one-process run; a rank killed after an epoch ends the
run with one line, and resuming gives the metrics of the same run left alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tiny import hapnet as run_cli
from tiny import write_tiny_data

import hapnet
from hapnet.data.sharding import PatientShard
from hapnet.errors import HapnetError
from hapnet.training import distributed
from hapnet.training.config import TrainConfig
from hapnet.training.distributed import SINGLE, LaunchOutput, Process, environment, epoch_seed
from hapnet.training.progress import TrainCallbacks
from hapnet.training.run_data import load_run_data, run_split

TWO_RANKS = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]
pytestmark = pytest.mark.filterwarnings("ignore:the validation split")  # the tiny data's: known


def child_env(**more: str) -> dict[str, str]:
    """One thread per process (the machine has 2 cores for 2 ranks), the session's cache."""
    return {**os.environ, "OMP_NUM_THREADS": "1", **more}


def train_on_two_ranks(*args: str, **env: str) -> subprocess.CompletedProcess:
    """`hapnet train --nproc 2 ARGS` in a fresh process, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "hapnet", "train", "--nproc", "2", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env(**env),
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    ontology, data = write_tiny_data(tmp_path_factory.mktemp("tiny"))
    return dict(
        model="hap",
        ontology=str(ontology),
        data=str(data),
        epochs=2,
        dim=16,
        hidden=16,
        attention_dim=8,
        dropout=0.0,  # the same function on every rank: losses comparable step by step
        pretrain="glove",  # rank 0's GloVe, broadcast
        glove_epochs=3,
        k=5,
        device="cpu",
    )


@pytest.fixture(scope="module")
def tiny_meds(tiny: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny data as a MEDS dataset (a diagnosis event per row, a day per visit), with split
    labels: train, tuning, held_out, and a few patients in none."""
    frame = pd.read_csv(tiny["data"])
    patient = frame["patient"].str[1:].astype(np.int64)
    visit = frame["visit"].str[1:].astype(np.int64)
    events = pd.DataFrame(
        {
            "subject_id": patient,
            "time": pd.Timestamp("2130-01-01") + pd.to_timedelta(visit, unit="D"),
            "code": "ICD9CM//" + frame["code"],
        }
    )
    root = tmp_path_factory.mktemp("meds")
    (root / "data").mkdir()
    (root / "metadata").mkdir()
    events.to_parquet(root / "data" / "0.parquet", index=False)
    ids = np.unique(patient)
    labels = np.array(["train", "train", "train", "tuning", "held_out"] * 20)[: len(ids)]
    labels[-3:] = "other"
    pd.DataFrame({"subject_id": ids, "split": labels}).to_parquet(
        root / "metadata" / "subject_splits.parquet"
    )
    return root


class StepLosses(TrainCallbacks):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_batch(self, epoch: int, batch_index: int, loss: float) -> None:
        self.losses.append(loss)


# ----------------------------------------------------------------------------- the same results
SAME_RESULTS_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import numpy as np
    import torch.distributed as dist
    import hapnet
    from hapnet.data.splits import split_patients
    from hapnet.training.distributed import SINGLE, joined
    from hapnet.training.evaluation import evaluate_patients
    from hapnet.training.progress import TrainCallbacks
    from hapnet.training.setup import batch_builder
    from hapnet.training.run_data import load_run_data, run_split
    from hapnet.data.fingerprint import data_fingerprint

    warnings.simplefilter("ignore")  # the tiny validation split is small: known
    settings, folder = json.loads(sys.argv[1]), sys.argv[2]

    class StepLosses(TrainCallbacks):
        def __init__(self):
            self.losses = []

        def on_batch(self, epoch, index, loss):
            self.losses.append(loss)

    with joined() as process:  # train() uses this group rather than its own
        report = {}
        for batch in (9, 41):  # slices of 5 and 4 patients; a last batch of 1 (rank 1: none)
            losses = StepLosses()
            out = f"{folder}/run-{batch}"
            hapnet.train(out=out, callbacks=losses, batch_size=batch, **settings)
            report[batch] = losses.losses
        dist.barrier()  # rank 0 has written the run folders
        run = hapnet.load(f"{folder}/run-9")
        _, mine = load_run_data(run.config, process)  # this rank's shard of the patients
        whole = hapnet.load_visits(settings["data"], run.ontology)
        test = split_patients(len(whole.patient_ids), settings["seed"]).test
        groups = run.vocab["group"].to_numpy()
        merged, alone = (
            evaluate_patients(
                run.model, batch_builder(run.config, data, run.vocabulary()), patients, groups,
                run.config, "cpu", full=True, process=p,
            )
            for data, patients, p in ((mine.data, mine.local(test), process), (whole, test, SINGLE))
        )
        report["evaluation"] = {"merged": merged.as_dict(), "alone": alone.as_dict()}
        report["shard"] = {
            "patients": len(mine.data.patient_ids),
            "ids": [str(i) for i in mine.data.patient_ids],
            "index": mine.index.tolist(),
            "fingerprint": mine.fingerprint,
            "report": mine.report.as_dict(),
        }
        # a MEDS dataset with its own split labels (--split meds): each rank reads its shard
        meds = run.config.__class__.from_dict({**run.config.to_dict(), "data": sys.argv[3], "split": "meds"})
        _, sharded = load_run_data(meds, process)
        split = run_split(sharded, meds)
        report["meds"] = {
            "split": {name: getattr(split, name).tolist() for name in ("train", "valid", "test")},
            "fingerprint": sharded.fingerprint,
            "report": sharded.report.as_dict(),
            "patients": len(sharded.data.patient_ids),
        }
        report["whole"] = {
            "ids": [str(i) for i in whole.patient_ids],
            "fingerprint": data_fingerprint(whole),
            "report": whole.report.as_dict(),
        }
        with open(f"{folder}/rank-{process.rank}.json", "w") as handle:
            json.dump(report, handle)
    """
)


@pytest.fixture(scope="module")
def two_ranks(tiny: dict, tiny_meds: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two runs (global batch 9 and 41) trained by 2 ranks under torchrun, and a sharded evaluation."""
    folder = tmp_path_factory.mktemp("two-ranks")
    script = folder / "ranks.py"
    script.write_text(SAME_RESULTS_SCRIPT)
    child = subprocess.run(
        [*TWO_RANKS, str(script), json.dumps({**tiny, "seed": 0}), str(folder), str(tiny_meds)],
        capture_output=True,
        text=True,
        timeout=300,
        env=child_env(),
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return folder


@pytest.mark.parametrize("batch", [9, 41])
def test_two_ranks_take_the_steps_of_one_process(batch: int, tiny: dict, two_ranks: Path, tmp_path: Path):
    losses = StepLosses()
    with hapnet.torch_threads(1):
        one = hapnet.train(out=tmp_path / "one", callbacks=losses, batch_size=batch, seed=0, **tiny)
    two = json.loads((two_ranks / "rank-0.json").read_text())[str(batch)]
    steps = -(-one.metrics["split"]["train"] // batch)  # the last batch is smaller
    assert len(two) == len(losses.losses) == tiny["epochs"] * steps
    assert torch.allclose(torch.tensor(two), torch.tensor(losses.losses), rtol=1e-5, atol=0)
    # every epoch's figures (summed across ranks: counts exact, losses to rounding)
    mine, theirs = (
        pd.read_csv(run / "history.csv") for run in (tmp_path / "one", two_ranks / f"run-{batch}")
    )
    for column in ("train_loss", "valid_loss", "test_loss"):
        np.testing.assert_allclose(theirs[column], mine[column], rtol=1e-5)
    for column in ("valid_accuracy", "test_accuracy"):
        assert theirs[column].tolist() == mine[column].tolist()
    got, want = (
        json.loads((run / "metrics.json").read_text()) for run in (two_ranks / f"run-{batch}", one.run_dir)
    )
    assert got["best_epoch"] == want["best_epoch"]
    for split in ("valid", "test"):
        assert got[split]["accuracy_by_group"] == want[split]["accuracy_by_group"]


def test_rank_1_reports_nothing_and_writes_nothing(two_ranks: Path):
    assert json.loads((two_ranks / "rank-1.json").read_text())["9"] == []  # no progress on rank 1
    assert sorted(p.name for p in two_ranks.iterdir() if p.is_dir()) == ["run-41", "run-9"]


def test_sharded_evaluation_sums_to_the_one_process_figures(two_ranks: Path):
    for rank in (0, 1):  # every rank gets the whole figures (they decide the best epoch)
        report = json.loads((two_ranks / f"rank-{rank}.json").read_text())["evaluation"]
        merged, alone = report["merged"], report["alone"]
        assert set(merged) == set(alone)
        for key, value in alone.items():
            if isinstance(value, float):  # the loss: float32 batch means of other batches
                assert merged[key] == pytest.approx(value, rel=1e-6, nan_ok=True), key
            else:
                assert merged[key] == value, key  # counts, per-group accuracies: exact


def test_each_rank_holds_its_shard_and_knows_the_whole_data(two_ranks: Path):
    reports = [json.loads((two_ranks / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    whole = reports[0]["whole"]
    shards = [report["shard"] for report in reports]
    # no rank holds every patient; together they hold each once, at its one-process position
    assert all(0 < shard["patients"] < len(whole["ids"]) for shard in shards)
    assert sum(shard["patients"] for shard in shards) == len(whole["ids"])
    placed = [None] * len(whole["ids"])
    for shard in shards:
        for position, patient in zip(shard["index"], shard["ids"], strict=True):
            assert placed[position] is None
            placed[position] = patient
    assert placed == whole["ids"]
    # the whole data's fingerprint and report, from the shards' sums
    for shard in shards:
        assert shard["fingerprint"] == whole["fingerprint"]
        assert shard["report"] == whole["report"]


def test_meds_split_and_report_of_two_shards_are_the_one_process_ones(
    tiny: dict, tiny_meds: Path, two_ranks: Path
):
    config = TrainConfig.from_dict({**tiny, "data": str(tiny_meds), "split": "meds"})
    with pytest.warns(UserWarning, match="3 patients .* are in no split"):
        _, whole = load_run_data(config)
        split = run_split(whole, config)
    reports = [json.loads((two_ranks / f"rank-{rank}.json").read_text())["meds"] for rank in (0, 1)]
    assert sum(report["patients"] for report in reports) == whole.num_patients
    for report in reports:
        assert report["split"] == {name: getattr(split, name).tolist() for name in ("train", "valid", "test")}
        assert report["fingerprint"] == whole.fingerprint
        assert report["report"] == whole.report.as_dict()


# ----------------------------------------------------------------------------- hapnet train --nproc
@pytest.fixture(scope="module")
def launched(tiny: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`hapnet train --nproc 2` on the tiny data, with dropout (seeded per rank and epoch)."""
    folder = tmp_path_factory.mktemp("launched")
    args = [
        *("--data", tiny["data"], "--ontology", tiny["ontology"], "--model", "hap", "--epochs", "3"),
        *("--dim", "8", "--hidden", "8", "--attention-dim", "4", "--pretrain", "none", "--dropout", "0.4"),
        *("--batch-size", "16", "--device", "cpu", "--threads", "1"),
    ]
    child = train_on_two_ranks(*args, "-o", str(folder / "run"))
    return {"args": args, "folder": folder, "child": child}


def test_nproc_writes_one_run_folder_like_one_process(launched: dict, tmp_path: Path):
    child, folder = launched["child"], launched["folder"]
    assert child.returncode == 0, child.stderr
    assert child.stdout.count("run folder:") == 1  # rank 0 alone prints
    assert "Traceback" not in child.stderr and "torch.distributed" not in child.stderr
    result = run_cli("train", *launched["args"], "-o", tmp_path / "one")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (folder / "run").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )
    assert [p.name for p in folder.iterdir()] == ["run"]  # no partial folder left, nothing else
    run = hapnet.load(folder / "run")
    assert run.metrics["split"] == json.loads((tmp_path / "one" / "metrics.json").read_text())["split"]
    # the same split, vocabulary and data fingerprint as one process, from the ranks' shards
    for name in ("split.csv", "vocab.csv"):
        assert (folder / "run" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name
    configs = [json.loads((path / "config.json").read_text()) for path in (folder / "run", tmp_path / "one")]
    assert configs[0]["data_fingerprint"] == configs[1]["data_fingerprint"]


def test_a_bad_row_of_one_ranks_patients_is_one_line_with_its_file_line(tmp_path: Path):
    """Rank 1 alone holds the patient of the bad row; its message names the file's line, as one
    process does (the rank reads the whole file again for it)."""
    rows = ["patient,visit,time,code"]
    rows += [f"p{i},v{i}{j},2130-01-0{j + 1},A1" for i in range(30) for j in range(2)]
    bad = next(i for i in range(10, 30) if PatientShard(1, 2).owns_ids(np.array([f"p{i}"]))[0])
    rows[1 + 2 * bad] = rows[1 + 2 * bad].replace("2130-01-01", "someday")
    (tmp_path / "visits.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "ontology.csv").write_text("parent,child\nA,A1\n")
    args = ["--data", str(tmp_path / "visits.csv"), "--ontology", str(tmp_path / "ontology.csv")]
    child = train_on_two_ranks(*args, "-o", str(tmp_path / "run"))
    errors = [line for line in child.stderr.splitlines() if line.startswith("error:")]
    assert child.returncode == 2 and len(errors) == 1, child.stderr
    assert f"visits.csv, line {2 + 2 * bad}: unparsable date 'someday'" in errors[0]
    assert "Traceback" not in child.stderr and not (tmp_path / "run").exists()


KILLER = textwrap.dedent(
    """
    # Loaded by every Python process started with this folder on PYTHONPATH: rank 1 kills itself
    # (SIGKILL) when its epoch HAPNET_TEST_KILL_EPOCH starts.
    import os

    if os.environ.get("RANK") == "1" and os.environ.get("HAPNET_TEST_KILL_EPOCH"):
        import signal

        from hapnet.training import trainer

        real = trainer._train_epoch

        def killing(session, epoch, *args):
            if epoch == int(os.environ["HAPNET_TEST_KILL_EPOCH"]):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(session, epoch, *args)

        trainer._train_epoch = killing
    """
)


@pytest.mark.slow
def test_a_killed_rank_is_one_line_and_the_run_resumes_to_the_same_metrics(launched: dict, tmp_path: Path):
    assert launched["child"].returncode == 0, launched["child"].stderr
    (tmp_path / "killer").mkdir()
    (tmp_path / "killer" / "sitecustomize.py").write_text(KILLER)
    path = os.pathsep.join(filter(None, [str(tmp_path / "killer"), os.environ.get("PYTHONPATH")]))
    out = tmp_path / "run"
    killed = train_on_two_ranks(
        *launched["args"], "-o", str(out), PYTHONPATH=path, HAPNET_TEST_KILL_EPOCH="2"
    )
    errors = [line for line in killed.stderr.splitlines() if line.startswith("error:")]
    assert killed.returncode == 1 and len(errors) == 1, killed.stderr
    assert "rank 1 was killed by SIGKILL" in errors[0] and f"--resume {out} --nproc 2" in errors[0]
    assert "Traceback" not in killed.stderr and not out.exists()
    resumed = train_on_two_ranks("--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    reference = launched["folder"] / "run"
    got, want = (json.loads((run / "metrics.json").read_text()) for run in (out, reference))
    for key in ("best_epoch", "valid", "test"):
        assert json.dumps(got[key]) == json.dumps(want[key]), key
    history = [pd.read_csv(run / "history.csv").drop(columns="seconds") for run in (out, reference)]
    pd.testing.assert_frame_equal(*history)


# ----------------------------------------------------------------------------- the pieces
def test_dropout_seeds_differ_by_rank_and_epoch_and_repeat():
    seeds = {epoch_seed(0, rank, epoch) for rank in range(4) for epoch in range(1, 50)}
    assert len(seeds) == 4 * 49 and epoch_seed(3, 1, 2) == epoch_seed(3, 1, 2)


def test_environment_is_one_process_unless_torchrun_says_otherwise(monkeypatch: pytest.MonkeyPatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert environment() is SINGLE
    monkeypatch.setenv("WORLD_SIZE", "1")  # torchrun --nproc-per-node 1
    assert environment() is SINGLE
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert environment() == Process(3, 4, 1) and environment().distributed and not environment().is_main
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(HapnetError, match="not a rank of WORLD_SIZE 4"):
        environment()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(HapnetError, match="whole numbers"):
        environment()
    monkeypatch.setenv("HAPNET_DIST_TIMEOUT", "soon")
    with pytest.raises(HapnetError, match="HAPNET_DIST_TIMEOUT"):
        distributed.timeout_seconds()


def test_one_process_never_touches_torch_distributed(
    tiny: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """hapnet.train in a notebook: no process group, the one-process step."""

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("a process group in a one-process run")

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.distributed, "init_process_group", refuse)
    monkeypatch.setattr(torch.distributed, "all_reduce", refuse)
    result = hapnet.train(quiet=True, **{**tiny, "epochs": 1, "pretrain": "none"})
    assert result.metrics["best_epoch"] == 1 and not torch.distributed.is_initialized()


# torch.distributed.run's stderr when rank 1 stops with a user error and when it is killed (2.13)
TORCHRUN_FAILURE = """\
warning: the validation split has 6 patients (of 60): too few
error: tiny/nope.csv: not found
error: rank 1: tiny/nope.csv: not found
W1202 07:04:56.805000 20756 torch/distributed/elastic/multiprocessing/api.py:1028] Sending SIGTERM
E1202 07:04:56.824000 20756 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 2)
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
Failures:
[1]:
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 20810)
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  rank      : 1 (local_rank: 1)
  exitcode  : {code} (pid: 20811)
============================================================
"""


def test_launcher_output_is_the_ranks_lines_once_and_one_line_for_a_kill():
    output = LaunchOutput()
    shown = [output.feed(line + "\n") for line in TORCHRUN_FAILURE.format(code=2).splitlines()]
    assert [line.strip() for line in shown if line] == [
        "warning: the validation split has 6 patients (of 60): too few",
        "error: tiny/nope.csv: not found",
    ]
    assert output.failure_line(1) is None and output.exit_code(1) == 2

    killed = LaunchOutput()
    lines = TORCHRUN_FAILURE.format(code=-9).splitlines()
    lost = f"error: {distributed.PEER_LOST} while summing gradients (Connection closed by peer)"
    for line in [lost, *lines[3:]]:  # rank 0 lost its peer; rank 1 said nothing
        assert killed.feed(line + "\n") is None
    assert killed.failure_line(1) == "rank 1 was killed by SIGKILL; torchrun stopped the other ranks"
    assert killed.exit_code(1) == 1

    # torchrun saw rank 0 abort (gloo, on losing its peer) before rank 1's kill: the kill is the cause
    aborted = LaunchOutput()
    report = TORCHRUN_FAILURE.replace("exitcode  : -15", "exitcode  : -9").replace("{code}", "-6")
    report = report.replace("rank      : 0", "rank      : X").replace("rank      : 1", "rank      : 0")
    for line in report.replace("rank      : X", "rank      : 1").splitlines()[5:]:
        aborted.feed(line + "\n")
    assert aborted.root_cause() == (1, -9)
    assert aborted.failure_line(1) == "rank 1 was killed by SIGKILL; torchrun stopped the other ranks"

    # ... or rank 0 stopped on losing its peer (exit 2) before torchrun saw rank 1's kill
    lost_first = LaunchOutput()
    report = TORCHRUN_FAILURE.replace("exitcode  : -15", "exitcode  : -9").replace("{code}", "2")
    report = report.replace("rank      : 0", "rank      : X").replace("rank      : 1", "rank      : 0")
    for line in [lost, *report.replace("rank      : X", "rank      : 1").splitlines()[5:]]:
        lost_first.feed(line + "\n")
    assert lost_first.root_cause() == (1, -9) and lost_first.exit_code(1) == 1
    assert lost_first.failure_line(1) == "rank 1 was killed by SIGKILL; torchrun stopped the other ranks"


def test_nproc_launches_the_same_options_with_one_run_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    calls = []
    monkeypatch.setattr(distributed, "launch", lambda args, n: (calls.append((args, n)), (0, None))[1])
    result = run_cli("train", "--nproc", "2", "--dim", "8", "--compile", "-k", "5", "-o", tmp_path / "r")
    assert result.exit_code == 0, result.output
    assert calls == [(["--dim", "8", "-k", "5", "--compile", "--out", str(tmp_path / "r")], 2)]
    monkeypatch.setattr(distributed, "launch", lambda args, n: (2, None))
    assert run_cli("train", "--nproc", "2", "-o", tmp_path / "r").exit_code == 2  # the ranks' exit code


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--nproc", "0"], {}, "--nproc must be at least 1"),
        (["--nproc", "2", "--seeds", "0-1"], {}, "one --seed at a time"),
        (["--nproc", "2"], {"WORLD_SIZE": "2", "RANK": "0"}, "under torchrun, leave it out"),
        (["--seeds", "0-1"], {"WORLD_SIZE": "2", "RANK": "1"}, "rank 1: --seeds"),
    ],
)
def test_what_cannot_be_launched_is_one_line(
    args: list, env: dict, message: str, monkeypatch, tmp_path: Path
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = run_cli("train", *args, "-o", tmp_path / "r")
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "r").exists()
