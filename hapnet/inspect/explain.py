"""Where a code's final embedding comes from: `explain_code(run, code)`.

Every embedder writes the final embedding as a weighted sum of BASE embeddings,
g_c = sum_j W[c, j] e_j (`CodeEmbedder.explain`): for GRAM, W is the attention over the code and
its ancestors; for HAP, the bottom-up and top-down attention weights composed through both
passes (every node contributes); for RNN the code's own base embedding; for Rollup its parent's.
This module names each contributing node's relation to the code and ranks them by weight.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hapnet.errors import HapnetError, check_k
from hapnet.ontology.graph import Ontology
from hapnet.training.naming import run_label
from hapnet.training.runs import Run, as_run

SELF, ANCESTOR, DESCENDANT, SIBLING, COUSIN, OTHER = (
    "self",
    "ancestor",
    "descendant",
    "sibling",
    "cousin",
    "other",
)
RELATIONS = (SELF, ANCESTOR, DESCENDANT, SIBLING, COUSIN, OTHER)
RELATION_HELP = {
    SELF: "the code itself",
    ANCESTOR: "a parent, grandparent, … up to the root",
    DESCENDANT: "a child, grandchild, …",
    SIBLING: "another child of one of its parents",
    COUSIN: "below a parent or grandparent (not the root)",
    OTHER: "the rest of the ontology",
}


@dataclass
class Explanation:
    """The nodes whose base embeddings make up a code's final embedding, largest weight first."""

    run: Path
    model: str
    label: str  # HAP, GRAM (lv3), RNN+, …
    code: str
    description: str
    level: int
    in_vocabulary: bool  # the run predicts this code (else only its embedding can be explained)
    nodes: pd.DataFrame  # node, code, description, level, relation, weight (weight > 0, descending)
    summary: str

    def by_relation(self) -> dict[str, dict[str, float | int]]:
        """Total weight and number of nodes per relation (relations with no node left out)."""
        grouped = self.nodes.groupby("relation")["weight"].agg(["sum", "count"])
        return {
            r: {"weight": float(grouped.loc[r, "sum"]), "nodes": int(grouped.loc[r, "count"])}
            for r in RELATIONS
            if r in grouped.index
        }

    def as_dict(self, k: int | None = None) -> dict[str, Any]:
        """JSON-ready figures, with the `k` nodes of largest weight (default: every node)."""
        rows = self.nodes if k is None else self.nodes.head(check_k(k))
        return {
            "run": str(self.run),
            "model": self.model,
            "code": self.code,
            "description": self.description,
            "level": self.level,
            "in_vocabulary": self.in_vocabulary,
            "summary": self.summary,
            "nodes_with_weight": len(self.nodes),
            "by_relation": self.by_relation(),
            "nodes": rows.drop(columns="node").to_dict(orient="records"),
        }


# ----------------------------------------------------------------------------- relations
def _below(ontology: Ontology, starts: np.ndarray) -> np.ndarray:
    """Boolean mask of all descendants of `starts` (the starts themselves not included)."""
    flag = np.zeros(len(ontology), dtype=bool)
    frontier = np.unique(np.asarray(starts, dtype=np.int64))
    while len(frontier):
        children = np.concatenate([ontology.children(int(i)) for i in frontier])
        children = np.unique(children[~flag[children]])
        flag[children] = True
        frontier = children
    return flag


def relations(ontology: Ontology, node: int) -> np.ndarray:
    """The relation (RELATIONS) of every ontology node to `node`, as an array of strings.

    The first that applies wins: self, ancestor, descendant, sibling, cousin, other. The
    artificial root counts as an ancestor, never as the parent or grandparent that makes a
    cousin (that would make every node one).
    """
    result = np.full(len(ontology), OTHER, dtype=object)
    empty = np.zeros(0, dtype=np.int64)
    parents = ontology.parents(node)
    grandparents = np.concatenate([empty, *(ontology.parents(int(p)) for p in parents)])
    family = np.unique(np.concatenate([parents, grandparents]))
    result[_below(ontology, family[family != 0])] = COUSIN
    siblings = np.concatenate([empty, *(ontology.children(int(p)) for p in parents)])
    result[siblings] = SIBLING
    result[_below(ontology, [node])] = DESCENDANT
    result[np.array(ontology.ancestors(node), dtype=np.int64)] = ANCESTOR
    result[node] = SELF
    return result


# ----------------------------------------------------------------------------- weights
def code_weights(run: Run, node: int, dtype: torch.dtype = torch.float64) -> np.ndarray:
    """W[node, :]: the weight of every node's base embedding in `node`'s final embedding.

    Computed on a float64 copy of the embedder by default, so that the weights sum to 1 and
    reproduce the embedding to ~1e-12.
    """
    embedder = copy.deepcopy(run.model.embedder).to(dtype)
    embedder.eval()
    return embedder.explain(np.array([node]))[0].detach().cpu().numpy()


def _describe(label: str, model: str, code: str, frame: pd.DataFrame) -> str:
    if model == "rnn":
        return f"{label}: no ontology; the embedding of {code} is its own base embedding."
    if len(frame) == 1 and frame["relation"].iloc[0] == SELF:
        return f"{label}: {code} has no edge within the levels used; its embedding is its own base embedding."
    if model == "rollup":
        parents = ", ".join(frame["code"])
        if len(frame) == 1:
            return f"{label}: the embedding of {code} is the base embedding of its parent {parents}."
        return f"{label}: the embedding of {code} is the mean of its parents' base embeddings ({parents})."
    if model == "gram":
        return (
            f"{label}: attention over {code} and its {len(frame) - 1} ancestors "
            "(one softmax, the weights sum to 1)."
        )
    return (
        f"{label}: after bottom-up and top-down propagation the embedding of {code} is a weighted sum "
        f"of the base embeddings of {len(frame):,} nodes (the weights sum to 1)."
    )


def explain_code(run: Run | str | Path, code: str) -> Explanation:
    """Explain the final embedding of `code` (an ontology id, e.g. `4280` or `CCS:7.2.11`) in a
    loaded run (`hapnet.load`) or the run folder."""
    run = as_run(run)
    node = run.ontology.find(str(code))
    if node is None or node == 0:
        raise HapnetError(f"{code!r}: not a node of ontology {run.ontology.name}")
    weights = code_weights(run, node)
    used = np.flatnonzero(weights > 0)
    relation = relations(run.ontology, node)
    frame = pd.DataFrame(
        {
            "node": used,
            "code": [run.ontology.ids[i] for i in used],
            "description": [run.ontology.descriptions[i] for i in used],
            "level": run.ontology.levels[used].astype(int),
            "relation": relation[used].astype(str),
            "weight": weights[used],
        }
    )
    frame = frame.sort_values(["weight", "level", "node"], ascending=[False, True, True], kind="stable")
    frame = frame.reset_index(drop=True)
    label = run_label(run.config)
    ids = run.ontology.ids[node]
    return Explanation(
        run=run.path,
        model=run.config.model,
        label=label,
        code=ids,
        description=run.ontology.descriptions[node],
        level=int(run.ontology.levels[node]),
        in_vocabulary=bool(run.vocabulary().code_to_class[node] >= 0),
        nodes=frame,
        summary=_describe(label, run.config.model, ids, frame),
    )
