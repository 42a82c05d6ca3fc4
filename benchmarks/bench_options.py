"""Benchmark: what the options beyond the paper cost per training step, against the paper's free
output layer, on MIMIC-III-sized synthetic data (the built-in set).

    python benchmarks/bench_options.py [--model hap] [--batches 20] [--repeats 3] [--threads N]

Builds one model per variant (free output; `--output tied`; `--aux-levels 1,2`; `--time-input`)
at the default settings and times `--batches` training steps of each on the same batches,
alternated in this process (`hapnet.perf.timing.time_interleaved`: a loaded machine slows them
alike). Prints the median seconds per step and the ratio to the free output. Not a test: run it
by hand and record the figures.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from hapnet.data.splits import split_patients
from hapnet.data.vocabulary import Vocabulary
from hapnet.perf.timing import time_interleaved
from hapnet.training.config import make_config
from hapnet.training.optim import make_optimizer
from hapnet.training.setup import batch_builder, build_model, load_training_data
from hapnet.training.step import TrainingStep

VARIANTS = {
    "free": {"output": "free"},
    "tied": {"output": "tied"},
    "free + aux 1,2": {"output": "free", "aux_levels": [1, 2]},
    "free + time": {"output": "free", "time_input": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="hap")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = make_config(model=args.model, device="cpu")
    ontology, data = load_training_data(base)
    vocab = Vocabulary.from_nodes(np.unique(data.codes), len(ontology))
    train = split_patients(len(data.patient_ids), base.seed).train
    order = np.random.default_rng(0).permutation(train)
    steps = {}
    for name, settings in VARIANTS.items():
        config = make_config(model=args.model, device="cpu", **settings)
        torch.manual_seed(0)
        model = build_model(config, ontology, vocab)
        builder = batch_builder(config, data, vocab)
        batches = [builder.build(order[i * 100 : (i + 1) * 100]) for i in range(args.batches)]
        step = TrainingStep(model, make_optimizer(config, model), config.loss)
        steps[name] = lambda step=step, batches=batches: [step(b) for b in batches]
    times = time_interleaved(steps, repeats=args.repeats, warmup=1, device=torch.device("cpu"))
    sizes = f"{len(data.patient_ids):,} patients, {len(vocab):,} codes"
    print(f"{args.model}: {sizes}, {args.batches} steps of 100 patients")
    free = statistics.median(times["free"]) / args.batches
    for name, seconds in times.items():
        per_step = statistics.median(seconds) / args.batches
        print(f"{name:>16}: {per_step * 1000:7.1f} ms/step  ({per_step / free:.2f}x free)")


if __name__ == "__main__":
    main()
