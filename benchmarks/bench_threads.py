"""Benchmark: training beside a busy process (oversubscription), and what `--threads auto` does.

    python benchmarks/bench_threads.py [--model hap] [--patients 7500] [--steps 20] [--rounds 3]
                                       [--busy python|torch]

Times training steps at hapnet's default settings on the MIMIC-III-sized synthetic data, with
torch's default threads (one per core) on an idle machine, then beside one busy process (a
pure-Python loop, or a one-thread torch matmul loop like another training run) with: torch's
default threads, one thread, and the count `--threads auto` picks. The conditions beside the busy
process alternate round by round in this process. Prints seconds per step, each against the idle
default, the threads auto chose, and an epoch's estimate. Not a test: run it by hand on an
otherwise idle machine and record the figures (docs/performance.md, "Sharing the machine").
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import numpy as np
import torch

from hapnet.data.splits import split_patients
from hapnet.data.vocabulary import Vocabulary
from hapnet.training.config import make_config
from hapnet.training.optim import make_optimizer
from hapnet.training.setup import batch_builder, build_model, load_training_data
from hapnet.training.step import TrainingStep
from hapnet.utils.threads import auto_threads


def busy_python(stop: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    while not stop.is_set():
        sum(range(10_000))


def busy_torch(stop: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    torch.set_num_threads(1)
    a = torch.randn(512, 512)
    while not stop.is_set():
        a = torch.tanh(a @ a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="hap")
    parser.add_argument("--patients", type=int, default=7500)
    parser.add_argument("--steps", type=int, default=20, help="training steps per timing")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds beside the busy process")
    parser.add_argument("--busy", choices=["python", "torch"], default="python")
    args = parser.parse_args()

    config = make_config(model=args.model, synth_patients=args.patients, device="cpu", pretrain="none")
    ontology, data = load_training_data(config)
    split = split_patients(len(data.patient_ids), config.seed)
    vocab = Vocabulary.from_nodes(np.unique(data.codes), len(ontology))
    model = build_model(config, ontology, vocab)
    step = TrainingStep(model, make_optimizer(config, model), config.loss, compile=False)
    builder = batch_builder(config, data, vocab)
    starts = range(0, len(split.train), config.batch_size)
    batches = [builder.build(split.train[s : s + config.batch_size]) for s in starts]
    default_threads = torch.get_num_threads()
    print(
        f"{config.model}, defaults: {len(split.train):,} training patients, {len(batches)} steps/epoch; "
        f"torch default threads {default_threads}; busy process: {args.busy}"
    )

    def seconds_per_step(threads: int) -> float:
        torch.set_num_threads(threads)
        started = time.perf_counter()
        for i in range(args.steps):
            step(batches[i % len(batches)])
        return (time.perf_counter() - started) / args.steps

    seconds_per_step(default_threads)  # warm-up
    idle = min(seconds_per_step(default_threads) for _ in range(2))
    idle_one = min(seconds_per_step(1) for _ in range(2))
    idle_auto, _ = auto_threads()
    stop = multiprocessing.Event()
    busy = busy_python if args.busy == "python" else busy_torch
    worker = multiprocessing.Process(target=busy, args=(stop,))
    worker.start()
    try:
        time.sleep(1.0)
        results: dict[str, list[float]] = {"default": [], "1 thread": [], "auto": []}
        chosen = []
        for _ in range(args.rounds):
            results["default"].append(seconds_per_step(default_threads))
            results["1 thread"].append(seconds_per_step(1))
            threads, _ = auto_threads()
            chosen.append(threads)
            results["auto"].append(seconds_per_step(threads))
    finally:
        stop.set()
        worker.join()
    torch.set_num_threads(default_threads)
    print(f"idle, {default_threads} threads: {idle:.3f} s/step (auto picks {idle_auto} when idle)")
    print(f"idle, 1 thread: {idle_one:.3f} s/step = {idle_one / idle:.2f}x idle")
    for name, times in results.items():
        median = float(np.median(times))
        print(
            f"busy, {name:>8}: {median:.3f} s/step = {median / idle:.2f}x idle "
            f"(epoch ~{median * len(batches):.0f} s; rounds: {', '.join(f'{t:.3f}' for t in times)})"
        )
    print(f"threads auto chose beside the busy process: {chosen}")


if __name__ == "__main__":
    main()
