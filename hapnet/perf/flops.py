"""Arithmetic floors: FLOPs of one training step / epoch, and this machine's matmul speed.

Counts are the minimum a correct implementation must do (multiply-adds x 2), forward; backward is
taken as twice the forward (the usual estimate for matmul-dominated work).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from hapnet.models.hap_plan import needed_steps
from hapnet.ontology.hierarchy import Hierarchy, Step

BACKWARD_FACTOR = 3  # forward + backward = 3 x forward


def attention_step_flops(step: Step, dim: int, attention_dim: int, new_queries: bool) -> int:
    """One attention round: projections of queries (if not reused) and distinct keys, scores, sums."""
    targets = len(step.targets)
    keys = len(np.unique(step.edge_source))
    candidates = step.num_candidates
    flops = 2 * keys * dim * attention_dim  # W_k h_j
    if new_queries:
        flops += 2 * targets * dim * attention_dim  # W_q q
    flops += candidates * (3 * attention_dim)  # add, tanh, u^T
    flops += candidates * 2 * dim  # weighted sum
    return flops


def propagation_flops(
    model: str, hierarchy: Hierarchy, vocab: np.ndarray, dim: int, attention_dim: int
) -> int:
    """Forward FLOPs of the code embedder. HAP: only the targets the outputs `vocab` depend on
    (top-down runs over the observed codes and their ancestors; the rest is not needed)."""
    if model == "hap":
        bottom_up, top_down = needed_steps(hierarchy, np.asarray(vocab, dtype=np.int64))
        steps = zip(hierarchy.bottom_up + hierarchy.top_down, bottom_up + top_down, strict=True)
        return sum(
            attention_step_flops(step.keep(active), dim, attention_dim, True)
            for step, active in steps
            if active.any()
        )
    if model == "gram":
        return attention_step_flops(hierarchy.ancestor_step(vocab), dim, attention_dim, True)
    return 0


def predictor_flops(steps: int, dim: int, hidden: int, num_codes: int) -> int:
    """Forward FLOPs of the visit GRU and the output layer over the real (unpadded) steps."""
    gru = steps * 2 * 3 * (dim * hidden + hidden * hidden)
    output = steps * 2 * hidden * num_codes
    return gru + output


def training_step_flops(
    model: str,
    hierarchy: Hierarchy,
    vocab: np.ndarray,
    steps: int,
    dim: int,
    attention_dim: int,
    hidden: int,
    embedded: np.ndarray | None = None,
) -> int:
    """Forward + backward FLOPs of one training step: code embedder, visit GRU, output layer.
    `embedded`: the codes of the batch's input visits, the only embeddings its loss depends on
    (default: every code of `vocab`)."""
    forward = propagation_flops(model, hierarchy, vocab if embedded is None else embedded, dim, attention_dim)
    forward += predictor_flops(steps, dim, hidden, len(vocab))
    return BACKWARD_FACTOR * forward


def matmul_gflops(
    size: int = 2048,
    repeats: int = 5,
    device: str | torch.device = "cpu",
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Measured fp32 matmul speed of this machine (median of repeats), GFLOP/s. `clock`:
    time.process_time measures CPU time (steadier on a shared machine, one thread)."""
    device = torch.device(device)
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        sync()
        started = clock()
        a @ b
        sync()
        times.append(clock() - started)
    return 2 * size**3 / float(np.median(times)) / 1e9
