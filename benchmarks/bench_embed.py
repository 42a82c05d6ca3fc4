"""Benchmark: `hapnet embed` from the structure alone, on ICD-9-CM (17.7k nodes) and ICD-10-CM (98.5k).

    python benchmarks/bench_embed.py [--ontologies icd9cm icd10cm] [--dim 128] [--epochs 0 5 10]
                                     [--gensim-epochs 40] [--sample 10000] [--no-gensim]
                                     [--json results.json]

For each ontology, one row per method:
  (a) hap      HAP propagation (bottom-up then top-down) + the ranking objective (the default),
               after each epoch budget (0 epochs: random base embeddings, propagation only);
  (b) plain    the same objective on plain embeddings, no propagation (`model="rnn"`);
  (c) poincare gensim's PoincareModel (Nickel & Kiela) on the same edges, when gensim is
               installed (benchmark only, never a hapnet dependency); ranked by its own Poincaré
               distance, and by cosine (what `hapnet neighbors` uses).
Columns: MAP and mean rank (reconstruction of parents + children over every node,
`hapnet.embeddings`), the same for all ancestors (the transitive closure: Nickel & Kiela's WordNet
setting; `--sample` random query nodes, the same for every method), seconds of training and of the
parents + children evaluation. Not a test: run it by hand and record the figures.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import hapnet
from hapnet.embeddings.reconstruction import reconstruction, relations
from hapnet.embeddings.structure import initial_embedder


def evaluate(
    ontology: hapnet.Ontology, vectors: np.ndarray | torch.Tensor, similarity: str, sample: int
) -> dict:
    nodes = np.arange(1, len(ontology))
    edges = reconstruction(vectors, relations(ontology, nodes, "edges"), similarity=similarity)
    ancestors = relations(ontology, nodes, "ancestors").sample(sample)  # the same rows for every method
    closure = reconstruction(vectors, ancestors, similarity=similarity)
    return {
        "map": edges.map,
        "mean_rank": edges.mean_rank,
        "ancestors_map": closure.map,
        "ancestors_mean_rank": closure.mean_rank,
        "eval_seconds": edges.seconds,
    }


def run_hapnet(ontology: hapnet.Ontology, model: str, epochs: int, args: argparse.Namespace) -> dict:
    if epochs == 0:  # the untrained baseline, which `hapnet.embed` refuses: propagation only
        start = time.perf_counter()
        embedder = initial_embedder(ontology, hapnet.EmbedConfig(dim=args.dim, model=model, device="cpu"))
        embedder.eval()
        with torch.no_grad():
            vectors = embedder()[1:]
        seconds = time.perf_counter() - start
    else:
        result = hapnet.embed(
            ontology, dim=args.dim, epochs=epochs, model=model, device="cpu", evaluate=False
        )
        vectors, seconds = result.vectors, result.train_seconds
    return {"train_seconds": seconds, **evaluate(ontology, vectors, "cosine", args.sample)}


def run_gensim(ontology: hapnet.Ontology, args: argparse.Namespace) -> list[tuple[str, dict]]:
    from gensim.models.poincare import PoincareModel

    keep = ontology.edge_parent != 0
    pairs = [
        (ontology.ids[c], ontology.ids[p])
        for c, p in zip(ontology.edge_child[keep], ontology.edge_parent[keep], strict=True)
    ]
    start = time.perf_counter()
    model = PoincareModel(pairs, size=args.dim, negative=10, seed=0)
    model.train(epochs=args.gensim_epochs, batch_size=10)  # gensim's defaults
    seconds = time.perf_counter() - start
    vectors = np.stack([model.kv[node] for node in ontology.ids[1:]])
    return [
        (
            f"poincare {args.gensim_epochs} ep, {similarity}",
            {"train_seconds": seconds, **evaluate(ontology, vectors, similarity, args.sample)},
        )
        for similarity in ("poincare", "cosine")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ontologies", nargs="+", default=["icd9cm", "icd10cm"])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument(
        "--epochs", type=int, nargs="+", default=[0, 5, 10], help="hapnet epoch budgets (plain skips 0)"
    )
    parser.add_argument("--gensim-epochs", type=int, default=40)
    parser.add_argument(
        "--sample", type=int, default=10000, help="query nodes of the ancestors figures (all if fewer)"
    )
    parser.add_argument("--no-gensim", action="store_true")
    parser.add_argument("--methods", nargs="+", default=["hap", "plain"])
    parser.add_argument("--json", help="Also write the rows to this JSON file.")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dim {args.dim}")
    columns = ["MAP", "rank", "anc MAP", "anc rank", "train s", "eval s"]
    print(f"{'ontology':<9} {'method':<26} " + " ".join(f"{c:>9}" for c in columns))
    rows = []

    def report(name: str, method: str, figures: dict, nodes: int) -> None:
        rows.append({"ontology": name, "nodes": nodes, "method": method, **figures})
        print(
            f"{name:<9} {method:<26} {figures['map']:>9.5f} {figures['mean_rank']:>9.3f} "
            f"{figures['ancestors_map']:>9.4f} {figures['ancestors_mean_rank']:>9.1f} "
            f"{figures['train_seconds']:>9.1f} {figures['eval_seconds']:>9.1f}",
            flush=True,
        )

    for name in args.ontologies:
        ontology = hapnet.load_ontology(name)
        nodes = len(ontology) - 1
        for method in args.methods:
            for epochs in args.epochs:
                if epochs > 0 or method == "hap":  # plain embeddings at 0 epochs are random
                    model = "hap" if method == "hap" else "rnn"
                    report(name, f"{method} {epochs} ep", run_hapnet(ontology, model, epochs, args), nodes)
        if not args.no_gensim:
            try:
                for method, figures in run_gensim(ontology, args):
                    report(name, method, figures, nodes)
            except ImportError:
                print("gensim is not installed: (c) skipped")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
