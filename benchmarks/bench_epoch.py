"""Benchmark: one training epoch at the paper's settings on MIMIC-III-sized synthetic data,
against its arithmetic floor (FLOPs / this machine's measured matmul speed) and, with `--naive`,
against the naive reference port of `hapnet bench`.

    python benchmarks/bench_epoch.py [--model hap] [--patients 7500] [--epochs 2] [--naive]
                                     [--phases] [--bound]

Prints the data shape, seconds per epoch (the fastest after the first, and the first against it),
the epoch's FLOPs, the floor, and the ratio: each epoch against the matmul speed measured beside it,
the median over the epochs after the first. `--naive` then times whole epochs of training steps
(the same batches in the same order, the same settings) of hapnet's model and of the naive port,
alternated in this process, and prints the speed-up. A step embeds only its batch's codes, so the
floor counts the propagation those need; the ratio with every code embedded at every step is
printed too.
`--phases` also times one more epoch's steps phase by phase (embedder forward, predictor + loss
forward, backward, optimiser). `--bound` prints what a step cannot go below on this machine
with these libraries: its own matrix products replayed at their shapes, the optimiser's update at
memory bandwidth, and the same step with tiny dimensions (the cost of its operations, not of their
arithmetic). Not a test: run it by hand and record the figures.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace

import numpy as np
import torch

import hapnet
from hapnet.data.batches import BatchBuilder
from hapnet.data.loaders import load_visits
from hapnet.data.splits import split_patients
from hapnet.data.synth import default_data_path
from hapnet.data.vocabulary import Vocabulary
from hapnet.models.losses import next_visit_loss
from hapnet.models.predictor import DIAGNOSIS
from hapnet.ontology.hierarchy import Hierarchy
from hapnet.perf.flops import BACKWARD_FACTOR, matmul_gflops, predictor_flops, propagation_flops
from hapnet.perf.naive import NaiveNextVisitModel, naive_training_step
from hapnet.perf.timing import time_interleaved
from hapnet.training.config import make_config
from hapnet.training.optim import make_optimizer
from hapnet.training.setup import build_model, model_ontology
from hapnet.training.step import TrainingStep
from hapnet.training.trainer import TrainCallbacks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="hap")
    parser.add_argument("--ontology", default="icd9-ccs")
    parser.add_argument("--patients", type=int, default=7500)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--ontology-scope", choices=["observed", "full"], help="override the preset's")
    parser.add_argument("--compile", action="store_true", help="train with --compile (torch.compile)")
    parser.add_argument("--naive", action="store_true", help="time epochs of the naive port beside ours")
    parser.add_argument("--naive-repeats", type=int, default=1, help="alternated epochs of each (--naive)")
    parser.add_argument("--phases", action="store_true", help="time the phases of a step too")
    parser.add_argument("--bound", action="store_true", help="print the step's lower bound on this machine")
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
        compile=args.compile,
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
    hierarchy = Hierarchy.from_ontology(model_ontology(config, ontology, vocab))
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

    speeds = MatmulSpeedAroundEpochs()
    with tempfile.TemporaryDirectory() as tmp:
        result = hapnet.train(config, out=f"{tmp}/run", callbacks=speeds)
    per_epoch = result.metrics["train_seconds_per_epoch"]
    # Other work on a shared machine slows an epoch and the matmul beside it alike: each epoch is
    # held against the speed measured just before and just after it (the faster), and the ratio
    # is the median over the epochs after the first (which compiles and warms up).
    epoch_speeds = [max(pair) for pair in zip(speeds.before, speeds.after, strict=True)]
    ratios = [s * v * 1e9 / flops for s, v in zip(per_epoch, epoch_speeds, strict=True)]
    ratios, seconds = ratios[1:] or ratios, min(per_epoch[1:] or per_epoch)  # the fastest after the first
    speed = float(np.median(epoch_speeds[1:] or epoch_speeds))
    floor = flops / (speed * 1e9)
    print(
        f"threads: {torch.get_num_threads()}, matmul 2048^2 fp32 around each epoch: "
        f"{', '.join(f'{v:.0f}' for v in epoch_speeds)} GFLOP/s"
    )
    print(
        f"model {config.model}, preset {args.preset}, ontology scope {config.ontology_scope}: "
        f"{len(batches)} steps/epoch, propagation (fwd+bwd) {BACKWARD_FACTOR * np.mean(prop) / 1e9:.2f} "
        f"GFLOP/step for the batch's codes, {BACKWARD_FACTOR * every_code / 1e9:.2f} for all codes"
    )
    print(
        f"epoch FLOPs {flops / 1e9:.1f} GFLOP; floor {floor:.2f} s at the median speed; fastest epoch "
        f"{seconds:.2f} s; each epoch after the first against the speed beside it: "
        f"{', '.join(f'{r:.2f}' for r in ratios)}; ratio {np.median(ratios):.2f}x the floor (median)"
    )
    print(
        f"with every code embedded at every step: {flops_every_code / 1e9:.1f} GFLOP, "
        f"ratio {np.median(ratios) * flops / flops_every_code:.2f}x"
    )
    print("seconds per epoch:", [round(s, 2) for s in per_epoch])
    if len(per_epoch) > 1:
        print(f"first epoch {per_epoch[0]:.2f} s = {per_epoch[0] / seconds:.2f}x the fastest later one")
    if args.naive:
        times = time_naive_epochs(config, ontology, vocab, data, split.train, args.naive_repeats)
        ours, naive = min(times["ours"]), min(times["naive"])
        print(
            f"training-step epochs alternated in this process, fastest of {args.naive_repeats}: "
            f"ours {ours:.2f} s, naive port {naive:.2f} s, speed-up {naive / ours:.1f}x"
        )
    if args.phases:
        model = build_model(config, ontology, vocab)
        phases = time_phases(model, make_optimizer(config, model), batches, config.loss)
        print("ms per step: " + ", ".join(f"{name} {ms:.1f}" for name, ms in phases.items()))
    if args.bound:
        step_ms = 1000 * seconds / len(batches)
        print_bound(config, ontology, vocab, batches, flops / len(batches), max(epoch_speeds), step_ms)


def time_naive_epochs(config, ontology, vocab, data, train, repeats: int) -> dict[str, list[float]]:  # noqa: ANN001
    """Seconds of whole epochs of training steps (build the batch, forward, loss, backward,
    optimiser step) over the same batches, hapnet's model and the naive port starting from the same
    parameters, alternated epoch by epoch."""
    order = np.random.default_rng([config.seed, 1]).permutation(train)
    chunks = [order[start : start + config.batch_size] for start in range(0, len(order), config.batch_size)]
    ours = build_model(config, ontology, vocab)
    ours_step = TrainingStep(ours, make_optimizer(config, ours), config.loss)
    builder = BatchBuilder(data, vocab.code_to_class)
    reference = NaiveNextVisitModel.twin_of(ours, config.model)
    naive_optimizer = make_optimizer(config, reference)

    def ours_epoch() -> None:
        for patients in chunks:
            ours_step(builder.build(patients))

    def naive_epoch() -> None:
        for patients in chunks:
            naive_training_step(reference, naive_optimizer, data, vocab.code_to_class, patients, config.loss)

    functions = {"ours": ours_epoch, "naive": naive_epoch}
    return time_interleaved(functions, repeats, warmup=0, device=torch.device("cpu"))


class MatmulSpeedAroundEpochs(TrainCallbacks):
    """This machine's matmul speed measured just before and just after each training epoch."""

    def __init__(self) -> None:
        self.before: list[float] = []
        self.after: list[float] = []

    def on_epoch_start(self, epoch: int, num_batches: int) -> None:
        self.before.append(matmul_gflops())

    def on_epoch_end(self, record: dict, is_best: bool) -> None:
        self.after.append(matmul_gflops())


def print_bound(config, ontology, vocab, batches, step_flops: float, speed: float, step_ms: float) -> None:  # noqa: ANN001
    """What one step costs at least here, against the floor, all taken at the machine's best
    (fastest of many calls): its matrix products at the speed this machine's BLAS reaches at
    their shapes, the optimiser's update at memory bandwidth, and the same step with d 4 (what its
    operations cost, with next to no arithmetic). `speed`: the best 2048^2 speed measured around
    the epochs; `step_ms`: a step of the fastest epoch."""
    floor_ms = step_flops / 1e6 / speed
    model = build_model(config, ontology, vocab)
    optimizer = make_optimizer(config, model)
    products = matrix_product_shapes(model, optimizer, batches[:10], config.loss)
    replays = {shape: replay_ms(shape) for shape in products}  # (fastest, median)
    products_ms = sum(count * replays[shape][0] for shape, count in products.items())
    typical_ms = sum(count * replays[shape][1] for shape, count in products.items())
    flops = sum(count * 2 * m * k * n for (m, k, n, _), count in products.items())
    traffic, bandwidth = optimiser_traffic(optimizer), memory_bandwidth()
    optimiser_ms = 1000 * traffic / bandwidth
    tiny = replace(config, dim=4, hidden=4, attention_dim=1)
    tiny_model = build_model(tiny, ontology, vocab)
    tiny_ms = sum(time_phases(tiny_model, make_optimizer(tiny, tiny_model), batches, tiny.loss).values())
    share = products_ms + optimiser_ms
    print(
        f"lower bound, ms per step: floor {floor_ms:.1f} at the best 2048^2 speed "
        f"({step_flops / 1e6 / floor_ms:.0f} GFLOP/s; 1.5x: {1.5 * floor_ms:.1f})"
    )
    print(
        f"  matrix products replayed at their shapes, at best: {products_ms:.1f} = "
        f"{products_ms / floor_ms:.2f}x the floor ({flops / 1e6 / products_ms:.0f} GFLOP/s); "
        f"median {typical_ms:.1f} = {typical_ms / floor_ms:.2f}x"
    )
    print(
        f"  optimiser update at memory bandwidth ({traffic / 1e6:.0f} MB at {bandwidth / 1e9:.0f} GB/s): "
        f"{optimiser_ms:.1f} = {optimiser_ms / floor_ms:.2f}x"
    )
    print(
        f"  together {share:.1f} = {share / floor_ms:.2f}x; left within 1.5x for everything else "
        f"(propagation, GRU gates, loss, every framework call): {1.5 * floor_ms - share:.1f}"
    )
    print(f"  the same step with d 4, hidden 4, attention 1: {tiny_ms:.1f}")
    print(f"  a step of the fastest epoch: {step_ms:.1f} = {step_ms / floor_ms:.2f}x")


def matrix_product_shapes(model, optimizer, batches, loss_kind: str) -> dict[tuple, float]:  # noqa: ANN001
    """{(m, k, n, with bias): calls per step} of the matrix products of training steps."""
    time_phases(model, optimizer, batches, loss_kind, warm_up=0)  # warm-up
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        time_phases(model, optimizer, batches, loss_kind, warm_up=0)
    shapes: dict[tuple, float] = {}
    for event in prof.key_averages(group_by_input_shape=True):
        if event.key not in ("aten::mm", "aten::addmm"):
            continue
        bias = event.key == "aten::addmm"
        (m, k), (_, n) = event.input_shapes[1:3] if bias else event.input_shapes[:2]
        key = (m, k, n, bias)
        shapes[key] = shapes.get(key, 0) + event.count / len(batches)
    return shapes


def replay_ms(shape: tuple[int, int, int, bool]) -> tuple[float, float]:
    """Milliseconds of one [m, k] x [k, n] product (+ bias) on fresh operands, hot: the fastest
    call and the median one."""
    m, k, n, bias = shape
    a, b, c = torch.randn(m, k), torch.randn(k, n), torch.randn(n)
    product = (lambda: torch.addmm(c, a, b)) if bias else (lambda: a @ b)
    times = _seconds_per_call(product, max(5, int(1e8 / (2 * m * k * n + 1))))
    return 1000 * min(times), 1000 * float(np.median(times))


def optimiser_traffic(optimizer: torch.optim.Optimizer) -> int:
    """Bytes one update must read and write: each parameter, its gradient and its state tensors
    read, the parameter and the state tensors written (after a first step, which made the state)."""
    total = 0
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state[param].values()
            tensors = sum(torch.is_tensor(v) and v.shape == param.shape for v in state)
            total += (3 + 2 * tensors) * param.numel() * param.element_size()
    return total


def memory_bandwidth(elements: int = 1 << 24) -> float:
    """Bytes per second of c = a + b on arrays far larger than the caches."""
    a, b, c = torch.randn(elements), torch.randn(elements), torch.empty(elements)
    return 3 * 4 * elements / min(_seconds_per_call(lambda: torch.add(a, b, out=c), 20))  # at its best


def _seconds_per_call(function, repeats: int) -> list[float]:  # noqa: ANN001
    """Seconds of each of `repeats` calls of `function`, after three warm-up calls."""
    return time_interleaved({"call": function}, repeats, warmup=3, device=torch.device("cpu"))["call"]


def time_phases(model, optimizer, batches, loss_kind: str, warm_up: int = 5) -> dict[str, float]:  # noqa: ANN001
    """Mean milliseconds per step of each phase over `batches`, after `warm_up` steps on the
    first ones (the trainer's step, cut where `hapnet.train` does its work)."""
    model.train()
    totals = np.zeros(4)
    for index, batch in enumerate(batches[:warm_up] + batches):
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
        if index >= warm_up:
            totals += np.diff(marks)
    names = ("embedder forward", "predictor + loss forward", "backward", "optimiser")
    return dict(zip(names, 1000 * totals / len(batches), strict=True))


if __name__ == "__main__":
    main()
