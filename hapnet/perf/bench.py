"""`bench(...)`: time HAP / GRAM propagation and one training step, ours against the naive port.

Both implementations run in the same process on the same synthetic batch, with the same
parameters (the naive model is loaded from ours), interleaved repeat by repeat so that a loaded
machine slows both alike; figures are medians after warm-up. Achieved GFLOP/s use the FLOP floor
of `hapnet.perf.flops` and are compared with this machine's measured matmul speed.
"""

from __future__ import annotations

import platform
import statistics
from typing import Any

import numpy as np
import torch

from hapnet.data.batches import BatchBuilder
from hapnet.data.loaders import visits_from_frame
from hapnet.data.synth import generate
from hapnet.data.vocabulary import Vocabulary
from hapnet.errors import HapnetError
from hapnet.models.embedder import EmbedderConfig
from hapnet.models.predictor import NextVisitModel
from hapnet.models.registry import get_model
from hapnet.ontology.builtins import load_ontology
from hapnet.ontology.hierarchy import Hierarchy
from hapnet.perf.flops import BACKWARD_FACTOR, matmul_gflops, propagation_flops, training_step_flops
from hapnet.perf.naive import NaiveNextVisitModel, naive_training_step
from hapnet.perf.settings import BENCH_DEFAULTS
from hapnet.perf.timing import CLOCKS, time_interleaved
from hapnet.training.config import PRESETS, make_config
from hapnet.training.optim import make_optimizer
from hapnet.training.step import TrainingStep
from hapnet.utils.device import resolve_device
from hapnet.utils.threads import torch_threads

PAPER = PRESETS["paper"]  # the sizes the paper trains at
BENCH_MODELS = ("hap", "gram")


def _models(model: str) -> list[str]:
    if model == "both":
        return list(BENCH_MODELS)
    if model not in BENCH_MODELS:
        raise HapnetError(f"--model {model!r}: choose {', '.join(BENCH_MODELS)} or both")
    return [model]


def bench(
    ontology: str = BENCH_DEFAULTS["ontology"],
    model: str = BENCH_DEFAULTS["model"],
    dim: int = PAPER["dim"],
    attention_dim: int = PAPER["attention_dim"],
    hidden: int = PAPER["hidden"],
    batch_size: int = PAPER["batch_size"],
    device: str = BENCH_DEFAULTS["device"],
    repeats: int = BENCH_DEFAULTS["repeats"],
    warmup: int = BENCH_DEFAULTS["warmup"],
    patients: int = BENCH_DEFAULTS["patients"],
    naive: bool = BENCH_DEFAULTS["naive"],
    seed: int = BENCH_DEFAULTS["seed"],
    threads: int | None = None,
    matmul_size: int = BENCH_DEFAULTS["matmul_size"],
    clock: str = BENCH_DEFAULTS["clock"],
) -> dict[str, Any]:
    """Time propagation (forward + backward) and one training step (Adadelta, the paper's loss) of
    each model on a batch of synthetic patients, ours and (with `naive`) the naive reference.

    Returns {"machine", "data", "settings", "rows"}; each row: model, part, ours_s, naive_s,
    speedup, gflop (fwd + bwd floor), ours_gflops, naive_gflops, peak_fraction (ours / matmul).
    `threads`: torch.set_num_threads for the run (on a shared machine 1 thread is the steadier
    figure: a parallel region waits for its slowest thread). `matmul_size`: the n of the n x n
    matmul that measures the machine's peak. `clock`: "wall" or "cpu" (process CPU time).
    """
    names = _models(model)
    if repeats < 1 or warmup < 0 or batch_size < 1 or patients < 2:
        raise HapnetError("--repeats and --batch-size must be at least 1, --patients at least 2")
    if clock not in CLOCKS:
        raise HapnetError(f"--clock {clock!r}: choose {' or '.join(CLOCKS)}")
    torch_device = resolve_device(device)
    if clock == "cpu" and torch_device.type == "cuda":
        raise HapnetError("--clock cpu measures CPU time: use --clock wall with --device cuda")
    with torch_threads(threads):
        return _measure(
            ontology,
            names,
            dim,
            attention_dim,
            hidden,
            batch_size,
            device,
            torch_device,
            repeats,
            warmup,
            patients,
            naive,
            seed,
            matmul_size,
            clock,
        )


def _measure(
    ontology: str,
    names: list[str],
    dim: int,
    attention_dim: int,
    hidden: int,
    batch_size: int,
    device: str,
    torch_device: torch.device,
    repeats: int,
    warmup: int,
    patients: int,
    naive: bool,
    seed: int,
    matmul_size: int,
    clock: str,
) -> dict[str, Any]:
    onto = load_ontology(ontology)
    data = visits_from_frame(generate(onto, patients=patients, seed=seed), onto)
    vocab = Vocabulary.from_nodes(np.unique(data.codes), len(onto))
    chosen = np.sort(np.random.default_rng(seed).permutation(data.num_patients)[:batch_size])
    builder = BatchBuilder(data, vocab.code_to_class)
    batch = builder.build(chosen)
    hierarchy = Hierarchy.from_ontology(onto)
    config = make_config(
        preset="paper", ontology=ontology, dim=dim, hidden=hidden, attention_dim=attention_dim, device=device
    )
    speed = matmul_gflops(matmul_size, device=torch_device, clock=CLOCKS[clock])
    padded, real = batch.step_mask.numel(), batch.num_steps

    rows = []
    for name in names:
        torch.manual_seed(seed)
        embed_config = EmbedderConfig(dim=dim, attention_dim=attention_dim)
        embedder = get_model(name).embedder(hierarchy, vocab.nodes, embed_config)
        ours = NextVisitModel(embedder, len(vocab), dim, hidden, config.dropout).to(torch_device)
        ours_opt = make_optimizer(config, ours)
        grad = torch.randn(len(vocab), dim, device=torch_device)

        def ours_propagation(embedder: torch.nn.Module = ours.embedder, grad: torch.Tensor = grad) -> None:
            embedder.zero_grad(set_to_none=True)
            embedder().backward(grad)

        ours_training_step = TrainingStep(ours, ours_opt, config.loss)

        def ours_step(step: TrainingStep = ours_training_step) -> None:
            step(builder.build(chosen).to(torch_device))

        propagation = {"ours": ours_propagation}
        step = {"ours": ours_step}
        check = None
        if naive:
            reference = NaiveNextVisitModel.twin_of(ours, name)
            reference_opt = make_optimizer(config, reference)
            with torch.no_grad():  # same parameters, same embeddings: the comparison is fair
                check = float((reference.embedder() - ours.embedder()).abs().max())

            def naive_propagation(
                embedder: torch.nn.Module = reference.embedder, grad: torch.Tensor = grad
            ) -> None:
                embedder.zero_grad(set_to_none=True)
                embedder().backward(grad)

            def naive_step(
                model: NaiveNextVisitModel = reference, optimizer: torch.optim.Optimizer = reference_opt
            ) -> None:
                naive_training_step(model, optimizer, data, vocab.code_to_class, chosen, config.loss)

            propagation["naive"] = naive_propagation
            step["naive"] = naive_step

        batch_codes = vocab.nodes[batch.input_classes]  # the embeddings a step needs
        flops = {
            "propagation": BACKWARD_FACTOR
            * propagation_flops(name, hierarchy, vocab.nodes, dim, attention_dim),
            "train_step": training_step_flops(
                name, hierarchy, vocab.nodes, real, dim, attention_dim, hidden, embedded=batch_codes
            ),
        }
        for part, functions in (("propagation", propagation), ("train_step", step)):
            times = time_interleaved(functions, repeats, warmup, torch_device, CLOCKS[clock])
            seconds = {impl: statistics.median(values) for impl, values in times.items()}
            gflop = flops[part] / 1e9
            naive_s = seconds.get("naive")
            rows.append(
                {
                    "model": name,
                    "part": part,
                    "ours_s": seconds["ours"],
                    "naive_s": naive_s,
                    "speedup": None if naive_s is None else naive_s / seconds["ours"],
                    "gflop": gflop,
                    "ours_gflops": gflop / seconds["ours"],
                    "naive_gflops": None if naive_s is None else gflop / naive_s,
                    "peak_fraction": gflop / seconds["ours"] / speed,
                    "naive_max_abs_diff": check,
                    "spread": max(max(v) / min(v) for v in times.values()),  # slowest / fastest repeat
                }
            )
    return {
        "machine": {
            "device": str(torch_device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "processor": platform.processor() or platform.machine(),
            "matmul_gflops": speed,
        },
        "data": {
            "ontology": ontology,
            "nodes": len(onto),
            "codes": len(vocab),
            "patients": int(data.num_patients),
            "batch_patients": int(batch.num_patients),
            "batch_steps": int(real),
            "padded_steps": int(padded),
        },
        "settings": {
            "dim": dim,
            "attention_dim": attention_dim,
            "hidden": hidden,
            "batch_size": batch_size,
            "repeats": repeats,
            "warmup": warmup,
            "clock": clock,
            "optimizer": config.optimizer,
            "loss": config.loss,
        },
        "rows": rows,
    }
