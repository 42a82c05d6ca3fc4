"""Benchmark: GloVe pretraining (`train_glove`) at the paper's settings on the built-in synthetic data.

    HAPNET_CACHE_DIR=/tmp/hcache python benchmarks/bench_glove.py [--dim 400] [--epochs 50]
        [--scope ancestors|codes] [--threads 1] [--repeats 1] [--compare]

Builds the co-occurrence counts of the training visits (the run's 70 % split, seed 0) of the
built-in synthetic data (icd9-ccs), with every code's ancestors (what `hapnet train --model hap
--pretrain glove` counts) or of the codes only (RNN+), and times `train_glove` on it. Prints the
nonzeros, seconds, seconds per epoch and the final loss (J / nnz, the same loss `train_glove`
reports). `--compare` also times the reference trainer (the pre-#19 one: AdaGrad over batches of
16,384 nonzeros, `reference_glove` below), alternating reference and current `--repeats` times
in this one process, as DEVELOPERS.md asks of a speed-up. Not a test: run it by hand and record
the figures (docs/training.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hapnet.data.loaders import load_visits
from hapnet.data.splits import split_patients
from hapnet.data.synth import DEFAULT_PATIENTS, default_data_path
from hapnet.models.glove import Cooccurrence, cooccurrence, glove_weight, train_glove
from hapnet.ontology.builtins import load_ontology
from hapnet.ontology.hierarchy import ancestor_sets


def training_cooccurrence(scope: str, patients: int) -> Cooccurrence:
    ontology = load_ontology("icd9-ccs")
    data = load_visits(default_data_path("icd9-ccs", patients), ontology)
    train = data.subset(split_patients(len(data.patient_ids), 0).train)
    ancestors = ancestor_sets(ontology) if scope == "ancestors" else None
    return cooccurrence(train.visit_offsets, train.codes, len(ontology), ancestors)


def reference_glove(
    cooc: Cooccurrence, dim: int, epochs: int, lr: float = 0.05, seed: int = 0, batch_size: int = 16384
) -> tuple[Tensor, list[float]]:
    """The trainer before #19, kept here for the A/B: per batch, the gradient of each touched row
    summed with embedding_bag, AdaGrad by index_select / index_copy / index_add."""
    num_nodes = cooc.size
    rows, cols = torch.from_numpy(cooc.rows), torch.from_numpy(cooc.cols)
    counts = torch.from_numpy(cooc.counts.astype(np.float32))
    log_counts, weights = torch.log(counts), glove_weight(counts)
    generator = torch.Generator().manual_seed(seed)

    def init(*shape: int) -> Tensor:
        return (torch.rand(*shape, generator=generator) - 0.5) / dim

    def row_sums(rows: Tensor, other: Tensor, table: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        sorted_rows, order = torch.sort(rows)
        touched, per_row = torch.unique_consecutive(sorted_rows, return_counts=True)
        offsets = torch.cumsum(per_row, 0) - per_row
        vectors = F.embedding_bag(other[order], table, offsets, mode="sum", per_sample_weights=weight[order])
        return touched, vectors, torch.bincount(rows, weights=weight, minlength=len(table))[touched]

    def adagrad(param: Tensor, grad_sq: Tensor, rows: Tensor, grad: Tensor) -> None:
        accumulated = grad_sq.index_select(0, rows).addcmul_(grad, grad)
        grad_sq.index_copy_(0, rows, accumulated)
        param.index_add_(0, rows, grad * accumulated.rsqrt_(), alpha=-lr)

    w, w_ctx, b, b_ctx = init(num_nodes, dim), init(num_nodes, dim), init(num_nodes), init(num_nodes)
    grad_sq = [torch.ones_like(p) for p in (w, w_ctx, b, b_ctx)]
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(counts), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            i, j = rows[batch], cols[batch]
            diff = (w[i] * w_ctx[j]).sum(1) + b[i] + b_ctx[j] - log_counts[batch]
            scaled = weights[batch] * diff
            total += float(torch.dot(scaled, diff)) / 2
            touched_i, grad_w, grad_b = row_sums(i, j, w_ctx, scaled)
            touched_j, grad_ctx, grad_b_ctx = row_sums(j, i, w, scaled)
            adagrad(w, grad_sq[0], touched_i, grad_w)
            adagrad(b, grad_sq[2], touched_i, grad_b)
            adagrad(w_ctx, grad_sq[1], touched_j, grad_ctx)
            adagrad(b_ctx, grad_sq[3], touched_j, grad_b_ctx)
        losses.append(total / len(counts))
    return w + w_ctx, losses


def timed(name: str, train, cooc: Cooccurrence, epochs: int) -> float:
    start = time.perf_counter()
    vectors, losses = train()
    seconds = time.perf_counter() - start
    norms = vectors.norm(dim=1)
    print(
        f"{name:10s} {seconds:8.2f} s  {seconds / epochs:7.3f} s/epoch  loss epoch 1 {losses[0]:.4f}"
        f"  epoch {epochs // 2} {losses[epochs // 2 - 1]:.4f}  final {losses[-1]:.4f}"
        f"  |  vector norm mean {norms.mean():.3f}, coordinate std {vectors.std():.4f}"
    )
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dim", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--scope", choices=["ancestors", "codes"], default="ancestors")
    parser.add_argument("--patients", type=int, default=DEFAULT_PATIENTS)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--compare", action="store_true", help="also time the reference (pre-#19) trainer")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    cooc = training_cooccurrence(args.scope, args.patients)
    print(
        f"co-occurrence ({args.scope}): {cooc.size} nodes, {len(cooc.counts):,} nonzeros, "
        f"{(cooc.counts > 0).any() and int(np.unique(cooc.rows).size)} rows used, "
        f"{time.perf_counter() - start:.1f} s; d {args.dim}, {args.epochs} epochs, "
        f"{torch.get_num_threads()} threads"
    )
    ratios = []
    for _ in range(args.repeats):
        if args.compare:
            before = timed(
                "reference", lambda: reference_glove(cooc, args.dim, args.epochs), cooc, args.epochs
            )
        after = timed(
            "current",
            lambda: train_glove(cooc, args.dim, epochs=args.epochs, return_losses=True),
            cooc,
            args.epochs,
        )
        if args.compare:
            ratios.append(before / after)
    if ratios:
        print(f"speed-up (reference / current): {' '.join(f'{r:.2f}x' for r in ratios)}")


if __name__ == "__main__":
    main()
