"""Arithmetic floors: FLOPs of one training step / epoch, and this machine's matmul speed.

Counts are the minimum a correct implementation must do (multiply-adds x 2), forward; backward is
taken as twice the forward (the usual estimate for matmul-dominated work).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from hapnet.hierarchy import Hierarchy, Step

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
    """Forward FLOPs of the code embedder."""
    if model == "hap":
        return sum(
            attention_step_flops(s, dim, attention_dim, True)
            for s in hierarchy.bottom_up + hierarchy.top_down
        )
    if model == "gram":
        return attention_step_flops(hierarchy.ancestor_step(vocab), dim, attention_dim, True)
    return 0


def predictor_flops(padded_steps: int, real_steps: int, dim: int, hidden: int, num_codes: int) -> int:
    """Forward FLOPs of the visit GRU (over padded steps) and the output layer (real steps)."""
    gru = padded_steps * 2 * 3 * (dim * hidden + hidden * hidden)
    output = real_steps * 2 * hidden * num_codes
    return gru + output


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 matmul speed of this machine (median of repeats), GFLOP/s."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    a @ b  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * size**3 / float(np.median(times)) / 1e9
