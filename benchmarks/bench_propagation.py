"""Time the HAP and GRAM code embedders, forward + backward, on the built-in ontologies.

    python benchmarks/bench_propagation.py [--repeats 7] [--only icd10cm] [--threads 1]
                                           [--clock cpu] [--profile] [--compile]

Cases: icd9-ccs at d=400 / a=100 (the paper's setting) and the full icd10cm at d=256 / a=100.
Vocab = every leaf code (the worst case: every code observable), and a random 20% of the leaves
(closer to real data: top-down only runs over the observed codes and their ancestors). Prints the
median over repeats after two warm-up runs, in ms, and for HAP the matrix-product floor: the
FLOPs of its W_q / W_k projections (forward + backward = 3 x forward) at this machine's measured
matmul speed, i.e. what the rest of the time is spent beyond the unavoidable matrix products.
`--clock cpu` measures process CPU time (steadier than wall time when the machine is shared).
`--compile` also times `torch.compile(embedder)` (inductor) in the same run, with its compile time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from hapnet.models.embedder import EmbedderConfig
from hapnet.models.hap import HAPEmbedder
from hapnet.models.registry import get_model
from hapnet.ontology.builtins import load_ontology
from hapnet.ontology.hierarchy import Hierarchy
from hapnet.perf.timing import CLOCKS

CASES = [("icd9-ccs", 400, 100), ("icd10cm", 256, 100)]


def matmul_gflops(rows: int, dim: int, cols: int, clock, repeats: int = 5) -> float:  # noqa: ANN001
    """fp32 speed of a [rows, dim] x [dim, cols] product here (the projections' shape)."""
    x, w = torch.randn(rows, dim), torch.randn(cols, dim)
    x @ w.T
    times = []
    for _ in range(repeats):
        started = clock()
        x @ w.T
        times.append(clock() - started)
    return 2 * rows * dim * cols / statistics.median(times) / 1e9


def projection_gflop(embedder: HAPEmbedder) -> float:
    """Forward + backward GFLOP of HAP's projections: rows x dim x columns per table, x 2 x 3."""
    plan, dim, att = embedder.plan, embedder.config.dim, embedder.config.attention_dim
    columns = [sum(att * (2 if q else 1) for q in needs.values()) for needs in plan.needs]
    return sum(len(t.nodes) * c for t, c in zip(plan.tables, columns, strict=True)) * dim * 2 * 3 / 1e9


def time_model(embedder: torch.nn.Module, num_codes: int, dim: int, repeats: int, clock) -> dict:  # noqa: ANN001
    grad_out = torch.randn(num_codes, dim)

    def forward_backward() -> tuple[float, float]:
        embedder.zero_grad(set_to_none=True)
        t0 = clock()
        g = embedder()
        t1 = clock()
        g.backward(grad_out)
        return t1 - t0, clock() - t1

    for _ in range(2):  # warm-up
        forward_backward()
    runs = [forward_backward() for _ in range(repeats)]
    return {
        "fwd": statistics.median(r[0] for r in runs) * 1e3,
        "bwd": statistics.median(r[1] for r in runs) * 1e3,
        "total": statistics.median(r[0] + r[1] for r in runs) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--only", default=None, help="one ontology name")
    parser.add_argument("--models", default="hap,gram")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--clock", choices=list(CLOCKS), default="wall")
    parser.add_argument("--profile", action="store_true", help="torch.profiler table for HAP, all leaves")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(embedder)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock")
    for ontology_name, dim, attention in CASES:
        if args.only and ontology_name != args.only:
            continue
        ontology = load_ontology(ontology_name)
        hierarchy = Hierarchy.from_ontology(ontology)
        leaves = np.flatnonzero(ontology.is_leaf)
        subset = np.sort(np.random.default_rng(0).choice(leaves, size=len(leaves) // 5, replace=False))
        config = EmbedderConfig(dim=dim, attention_dim=attention)
        speed = matmul_gflops(len(leaves), dim, 3 * attention, CLOCKS[args.clock])
        print(
            f"{ontology_name}: {len(ontology):,} nodes; "
            f"matmul [{len(leaves)}x{dim}]x[{dim}x{3 * attention}]: {speed:.0f} GFLOP/s"
        )
        for vocab_name, vocab in [("all leaves", leaves), ("20% leaves", subset)]:
            for model in args.models.split(","):
                torch.manual_seed(0)
                started = time.perf_counter()
                embedder = get_model(model).embedder(hierarchy, vocab, config)
                build = time.perf_counter() - started
                r = time_model(embedder, len(vocab), dim, args.repeats, CLOCKS[args.clock])
                floor = ""
                if isinstance(embedder, HAPEmbedder):
                    gflop = projection_gflop(embedder)
                    floor = f"  matmul floor {gflop / speed * 1e3:5.0f} ms ({gflop:.1f} GFLOP)"
                print(
                    f"  {model:4s} d={dim} a={attention} vocab={vocab_name} ({len(vocab):,}): "
                    f"fwd {r['fwd']:6.0f}  bwd {r['bwd']:6.0f}  fwd+bwd {r['total']:6.0f} ms"
                    f"{floor}  (build {build:.2f} s)",
                    flush=True,
                )
                if args.compile:
                    started = time.perf_counter()
                    compiled = torch.compile(embedder)
                    compiled().backward(torch.randn(len(vocab), dim))  # compiles forward and backward
                    took = time.perf_counter() - started
                    c = time_model(compiled, len(vocab), dim, args.repeats, CLOCKS[args.clock])
                    print(
                        f"       torch.compile: fwd {c['fwd']:6.0f}  bwd {c['bwd']:6.0f}  "
                        f"fwd+bwd {c['total']:6.0f} ms = {r['total'] / c['total']:.2f}x eager "
                        f"(compile {took:.0f} s)",
                        flush=True,
                    )
        if args.profile:
            embedder = get_model("hap").embedder(hierarchy, leaves, config)
            grad_out = torch.randn(len(leaves), dim)
            embedder().backward(grad_out)
            with torch.profiler.profile() as prof:
                embedder().backward(grad_out)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


if __name__ == "__main__":
    main()
