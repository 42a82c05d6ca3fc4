"""Benchmark: data-parallel training on the CPU, 1 process x 2 threads against 2 processes x 1 thread.

    python benchmarks/bench_ddp.py [--model hap] [--output tied|free] [--patients 7500] [--steps 20]
                                   [--warmup 3] [--rounds 2] [--nproc 2] [--threads 2]

Times training steps at hapnet's default settings (global batch 100, no GloVe: it is not part of
a step) on the MIMIC-III-sized synthetic data (`hapnet.data.synth.default_data_path`), through
the trainer's own step (`trainer._step`: one process, or a rank's slice with the gradient
all-reduce). The two layouts alternate round by round, each in fresh processes: one process with
`--threads` threads, then `--nproc` ranks under torch.distributed.run (gloo) with
`--threads / --nproc` threads each. Prints the patients per second of each (medians over the
rounds) and their ratio; for the ranks, the time per step spent in the gradient all-reduce
(waiting for the slower rank included), the same all-reduce alone after a barrier (the
communication itself), and every process's peak memory. Not a test: run it by hand on an
otherwise idle machine and record the figures (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

MARK = "BENCH_DDP "  # a worker's result line


def worker(args: argparse.Namespace) -> None:
    """One process of a layout: time `args.steps` steps after `args.warmup`, print a JSON line."""
    import torch.distributed as dist

    from hapnet.training import trainer
    from hapnet.training.config import make_config
    from hapnet.training.distributed import joined
    from hapnet.training.progress import TrainCallbacks

    torch.set_num_threads(args.threads)
    config = make_config(
        model=args.model, output=args.output, synth_patients=args.patients, pretrain="none", device="cpu"
    )
    with joined() as process:
        session = trainer._prepare(config, None, True, TrainCallbacks(), process)
        order = np.random.default_rng([config.seed, 1]).permutation(session.split.train)
        batches = [order[s : s + config.batch_size] for s in range(0, len(order), config.batch_size)]
        batches = [b for b in batches if len(b) == config.batch_size][: args.warmup + args.steps]
        session.model.train()
        seconds = []
        for index, patients in enumerate(batches):
            if index == args.warmup and process.distributed:
                session.step.reduce_seconds = 0.0  # type: ignore[attr-defined]
            started = time.perf_counter()
            trainer._step(session, patients).item()
            seconds.append(time.perf_counter() - started)
        timed = seconds[args.warmup :]
        result = {
            "processes": process.world_size,
            "threads": args.threads,
            "rank": process.rank,
            "steps": len(timed),
            "patients_per_s": config.batch_size * len(timed) / sum(timed),
            "step_ms": 1000 * statistics.median(timed),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        if process.distributed:
            step = session.step
            result["reduce_ms"] = 1000 * step.reduce_seconds / len(timed)  # type: ignore[attr-defined]
            bucket = torch.zeros(step.numel + len(step.params) + 2)  # type: ignore[attr-defined]
            result["bucket_mb"] = bucket.numel() * 4 / 2**20
            alone = []
            for _ in range(10):
                dist.barrier()
                started = time.perf_counter()
                dist.all_reduce(bucket)
                alone.append(time.perf_counter() - started)
            result["allreduce_ms"] = 1000 * statistics.median(alone)
    sys.stdout.write(MARK + json.dumps(result) + "\n")  # one write: the ranks share stdout
    sys.stdout.flush()
    if process.distributed:  # skip the interpreter's teardown, where gloo may abort (cli/main.py)
        sys.stderr.flush()
        os._exit(0)


def run_layout(args: argparse.Namespace, nproc: int) -> list[dict]:
    """One layout in fresh processes: every process's result."""
    threads = max(1, args.threads // nproc)
    own = [
        *("--worker", "--model", args.model, "--output", args.output, "--patients", str(args.patients)),
        *("--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(threads)),
    ]
    script = os.path.abspath(__file__)
    if nproc == 1:
        command = [sys.executable, script, *own]
    else:
        command = [
            *(sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--standalone"),
            *(script, *own),
        ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    child = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    if child.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{child.stdout[-2000:]}\n{child.stderr[-3000:]}")
    return [json.loads(line[len(MARK) :]) for line in child.stdout.splitlines() if line.startswith(MARK)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="hap")
    parser.add_argument("--output", default="tied", help="the diagnosis head: tied (the default) or free")
    parser.add_argument("--patients", type=int, default=7500, help="size of the synthetic data set")
    parser.add_argument("--steps", type=int, default=20, help="timed steps (of full global batches)")
    parser.add_argument("--warmup", type=int, default=3, help="steps before timing")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the two layouts, alternated")
    parser.add_argument("--nproc", type=int, default=2, help="ranks of the data-parallel layout")
    parser.add_argument(
        "--threads", type=int, default=2, help="threads of the one process (split among ranks)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from hapnet.data.synth import default_data_path
    from hapnet.training.config import make_config

    config = make_config(synth_patients=args.patients)
    default_data_path(config.ontology, config.synth_patients)  # generated once, before the ranks read it
    one, many = [], []
    for round_ in range(args.rounds):
        one.append(run_layout(args, 1)[0])
        many.append(run_layout(args, args.nproc))
        main_rank = next(r for r in many[-1] if r["rank"] == 0)
        print(
            f"round {round_ + 1}: 1 process x {one[-1]['threads']} threads {one[-1]['patients_per_s']:.0f} "
            f"patients/s; {args.nproc} processes x {main_rank['threads']} thread(s) "
            f"{main_rank['patients_per_s']:.0f} patients/s",
            flush=True,
        )
    single = statistics.median(r["patients_per_s"] for r in one)
    ranks = [next(r for r in results if r["rank"] == 0) for results in many]
    parallel = statistics.median(r["patients_per_s"] for r in ranks)
    print(
        f"{args.model} (--output {args.output}), {args.patients} patients, global batch 100, "
        f"{args.steps} steps, median of {args.rounds} rounds:"
    )
    print(
        f"  1 process x {one[0]['threads']} threads: {single:.0f} patients/s "
        f"({statistics.median(r['step_ms'] for r in one):.0f} ms/step)"
    )
    print(
        f"  {args.nproc} processes x {ranks[0]['threads']} thread(s): {parallel:.0f} patients/s "
        f"({statistics.median(r['step_ms'] for r in ranks):.0f} ms/step) = {parallel / single:.2f}x"
    )
    print(
        f"  gradient all-reduce ({ranks[0]['bucket_mb']:.1f} MB): "
        f"{statistics.median(r['reduce_ms'] for r in ranks):.1f} ms/step in the step (waiting included), "
        f"{statistics.median(r['allreduce_ms'] for r in ranks):.1f} ms alone"
    )
    peak = [r["peak_rss_mb"] for results in many for r in results]
    print(
        f"  peak memory: 1 process {max(r['peak_rss_mb'] for r in one):.0f} MB; "
        f"each rank {min(peak):.0f}-{max(peak):.0f} MB"
    )


if __name__ == "__main__":
    main()
