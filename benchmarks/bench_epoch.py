"""Benchmark: one training epoch at the paper's settings on MIMIC-III-sized synthetic data,
against its arithmetic floor (FLOPs / this machine's measured matmul speed).

    python benchmarks/bench_epoch.py [--model hap] [--patients 7500] [--epochs 2] [--phases]

Prints the data shape, seconds per epoch (the fastest after the first), the epoch's FLOPs,
the floor, and the ratio. A step embeds only its batch's codes, so the floor counts the
propagation those need; the floor with every code embedded at every step is printed too.
`--phases` also times one more epoch's steps phase by phase (embedder forward, predictor + loss
forward, backward, optimiser). Not a test: run it by hand and record the figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

import hapnet
from hapnet.config import make_config
from hapnet.flops import BACKWARD_FACTOR, matmul_gflops, predictor_flops, propagation_flops
from hapnet.native import kernels_status
from hapnet.predictor import DIAGNOSIS, BatchBuilder, next_visit_loss
from hapnet.trainer import (
    Vocabulary,
    build_model,
    default_data_path,
    make_optimizer,
    model_ontology,
    split_patients,
)
from hapnet.visits import load_visits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hap")
    parser.add_argument("--ontology", default="icd9-ccs")
    parser.add_argument("--patients", type=int, default=7500)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--ontology-scope", choices=["observed", "full"], help="override the preset's")
    parser.add_argument("--phases", action="store_true", help="time the phases of a step too")
    args = parser.parse_args()

    data_path = default_data_path(args.ontology, args.patients)
    config = make_config(
        preset=args.preset,
        model=args.model,
        ontology=args.ontology,
        data=str(data_path),
        epochs=args.epochs,
        ontology_scope=args.ontology_scope,
        device="cpu",
    )
    ontology = hapnet.load_ontology(args.ontology)
    data = load_visits(data_path, ontology)
    codes = data.codes
    print(
        f"data: {len(data.patient_ids):,} patients, {len(data.visit_offsets) - 1:,} visits, "
        f"{len(np.unique(codes)):,} codes, {len(codes) / (len(data.visit_offsets) - 1):.1f} codes/visit"
    )

    # FLOPs of one epoch over the training split, batch by batch.
    split = split_patients(len(data.patient_ids), config.seed)
    vocab = Vocabulary.from_nodes(np.unique(codes), len(ontology))
    hierarchy = model_ontology(config, ontology, vocab).compile()
    builder = BatchBuilder(data, vocab.code_to_class)
    batches = [
        builder.build(split.train[start : start + config.batch_size])
        for start in range(0, len(split.train), config.batch_size)
    ]
    # A step's loss depends only on the embeddings of its batch's input codes: the floor counts
    # the propagation those need (what training computes), and also, for comparison, that of all codes.
    dims = (config.dim, config.attention_dim)
    every_code = propagation_flops(config.model, hierarchy, vocab.nodes, *dims)
    prop = [propagation_flops(config.model, hierarchy, vocab.nodes[b.input_classes], *dims) for b in batches]
    rest = sum(predictor_flops(b.num_steps, config.dim, config.hidden, len(vocab)) for b in batches)
    flops = BACKWARD_FACTOR * (sum(prop) + rest)
    flops_every_code = BACKWARD_FACTOR * (every_code * len(batches) + rest)

    with tempfile.TemporaryDirectory() as tmp:
        result = hapnet.train(config, out=f"{tmp}/run")
    per_epoch = result.metrics["train_seconds_per_epoch"]
    seconds = min(per_epoch[1:] or per_epoch)  # the fastest epoch after the first (noisy machines)
    speed = matmul_gflops()
    floor = flops / (speed * 1e9)
    print(f"threads: {torch.get_num_threads()}, matmul 2048^2 fp32: {speed:.0f} GFLOP/s")
    print(f"fused CPU kernels: {kernels_status()}")
    print(
        f"model {config.model}, preset {args.preset}, ontology scope {config.ontology_scope}: "
        f"{len(batches)} steps/epoch, propagation (fwd+bwd) {BACKWARD_FACTOR * np.mean(prop) / 1e9:.2f} "
        f"GFLOP/step for the batch's codes, {BACKWARD_FACTOR * every_code / 1e9:.2f} for all codes"
    )
    print(
        f"epoch FLOPs {flops / 1e9:.1f} GFLOP; floor {floor:.2f} s; measured {seconds:.2f} s/epoch; "
        f"ratio {seconds / floor:.2f}x the floor"
    )
    floor_every_code = flops_every_code / (speed * 1e9)
    print(
        f"with every code embedded at every step: {flops_every_code / 1e9:.1f} GFLOP, "
        f"floor {floor_every_code:.2f} s, ratio {seconds / floor_every_code:.2f}x"
    )
    print("seconds per epoch:", [round(s, 2) for s in result.metrics["train_seconds_per_epoch"]])
    if args.phases:
        model = build_model(config, ontology, vocab)
        phases = time_phases(model, make_optimizer(config, model), batches, config.loss)
        print("ms per step: " + ", ".join(f"{name} {ms:.1f}" for name, ms in phases.items()))


def time_phases(model, optimizer, batches, loss_kind: str) -> dict[str, float]:  # noqa: ANN001
    """Mean milliseconds per step of each phase over one epoch's batches, after 5 warm-up steps
    (the trainer's step, cut where `hapnet.train` does its work)."""
    model.train()
    totals = np.zeros(4)
    for index, batch in enumerate(batches[:5] + batches):
        marks = [time.perf_counter()]
        g, codes = model.batch_embeddings(batch)
        marks.append(time.perf_counter())
        loss = next_visit_loss(model.read_visits(batch, g, codes)[DIAGNOSIS], batch, loss_kind)
        marks.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        marks.append(time.perf_counter())
        optimizer.step()
        marks.append(time.perf_counter())
        if index >= 5:
            totals += np.diff(marks)
    names = ("embedder forward", "predictor + loss forward", "backward", "optimiser")
    return dict(zip(names, 1000 * totals / len(batches), strict=True))


if __name__ == "__main__":
    main()
