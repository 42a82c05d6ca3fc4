"""The scripts in benchmarks/ run end to end on small inputs and print their figures.

They are not timed here (figures on a shared machine are not tests); this keeps them working
as the library changes under them."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from testdata import BENCHMARKS


def run_script(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.slow
def test_bench_epoch_reports_the_floor_the_naive_port_the_phases_and_the_bound() -> None:
    out = run_script("bench_epoch.py", "--patients", "300", "--epochs", "2", "--naive", "--phases", "--bound")
    assert re.search(r"matmul 2048\^2 fp32 around each epoch: \d+, \d+ GFLOP/s", out)
    ratio = r"epoch FLOPs [\d.]+ GFLOP; floor [\d.]+ s .*; fastest epoch [\d.]+ s; .*: [\d.]+; ratio ([\d.]+)"
    assert float(re.search(ratio, out).group(1)) > 0  # a number (not nan), from epoch 2
    assert re.search(r"first epoch [\d.]+ s = [\d.]+x the fastest later one", out)
    assert re.search(r"ours [\d.]+ s, naive port [\d.]+ s, speed-up [\d.]+x", out)
    assert re.search(r"ms per step: embedder forward [\d.]+, .*optimiser [\d.]+", out)
    assert re.search(r"matrix products replayed at their shapes, at best: [\d.]+ = [\d.]+x the floor", out)
    assert re.search(r"optimiser update at memory bandwidth \(\d+ MB at \d+ GB/s\): [\d.]+", out)
    assert re.search(r"the same step with d 4, hidden 4, attention 1: [\d.]+", out)


@pytest.mark.slow
def test_bench_propagation_times_hap_and_gram() -> None:
    out = run_script("bench_propagation.py", "--only", "icd9-ccs", "--repeats", "1")
    assert re.search(r"hap +d=400 .*fwd\+bwd +\d+ ms +matmul floor", out)
    assert re.search(r"gram +d=400 .*fwd\+bwd +\d+ ms", out)


@pytest.mark.slow
def test_bench_embed_scores_hap_embeddings() -> None:
    args = "--ontologies icd9cm --epochs 1 --no-gensim --sample 50 --dim 16 --methods hap"
    out = run_script("bench_embed.py", *args.split())
    assert re.search(r"icd9cm +hap 1 ep +[\d.]+", out)


@pytest.mark.slow
def test_bench_threads_times_training_beside_a_busy_process() -> None:
    out = run_script("bench_threads.py", "--patients", "300", "--steps", "2", "--rounds", "1")
    assert re.search(r"idle, \d+ threads: [\d.]+ s/step", out)
    for name in ("default", "1 thread", "auto"):
        assert re.search(rf"busy, +{name}: [\d.]+ s/step = [\d.]+x idle", out), name
    assert re.search(r"threads auto chose beside the busy process: \[\d+\]", out)


@pytest.mark.slow
def test_bench_shards_loads_smaller_shards_for_more_ranks() -> None:
    out = run_script("bench_shards.py", "--patients", "2000", "--ranks", "1,4", "--format", "meds")
    kept = [int(n.replace(",", "")) for n in re.findall(r"R=\d+: ([\d,]+) patients", out)]
    assert kept[0] == 2000 and 0 < kept[1] < 1000  # rank 0 of 4 keeps about a quarter
    assert re.search(
        r"R=4: .*arrays [\d.]+ MB; peak above the start \d+ MB \([\d.]+x the whole\); [\d.]+ s", out
    )


@pytest.mark.slow
def test_bench_ddp_times_one_process_and_two_ranks() -> None:
    out = run_script("bench_ddp.py", "--patients", "600", "--steps", "2", "--warmup", "1", "--rounds", "1")
    assert re.search(r"1 process x \d+ threads: \d+ patients/s", out)
    assert re.search(r"2 processes x \d+ thread\(s\): \d+ patients/s \(\d+ ms/step\) = [\d.]+x", out)
    assert re.search(r"gradient all-reduce \([\d.]+ MB\): [\d.]+ ms/step in the step", out)
