"""The paper's evaluation: accuracy@k overall and by 4 frequency groups (docs/algorithms.md)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from hapnet.training.naming import GROUP_LABELS

NUM_GROUPS = len(GROUP_LABELS)


def frequency_groups(train_counts: np.ndarray, num_groups: int = NUM_GROUPS) -> np.ndarray:
    """Group of every code: sort codes by training target count (rarest first) and cut the
    sorted list where the running sum crosses each quarter of the total.

    A code goes to the group in which its share of the running sum starts; codes never seen as
    a training target are the rarest and land in group 0.
    """
    counts = np.asarray(train_counts, dtype=np.float64)
    order = np.argsort(counts, kind="stable")
    total = counts.sum()
    groups = np.zeros(len(counts), dtype=np.int64)
    if total == 0:
        return groups
    start = np.cumsum(counts[order]) - counts[order]  # running sum before each code
    groups[order] = np.minimum(num_groups - 1, np.floor(start / total * num_groups)).astype(np.int64)
    return groups


@dataclass
class AccuracyAtK:
    """Accumulates hits over batches: for every true code of every predicted visit, is it in the top k?"""

    k: int
    groups: np.ndarray  # [num_codes] frequency group of each code
    hits: np.ndarray = field(init=False)
    totals: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.hits = np.zeros(NUM_GROUPS, dtype=np.int64)
        self.totals = np.zeros(NUM_GROUPS, dtype=np.int64)
        self._groups_t = torch.as_tensor(np.array(self.groups, dtype=np.int64))

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """scores [S, C] for S predicted visits; targets [S, C] multi-hot (0/1)."""
        k = min(self.k, scores.shape[1])
        top = scores.topk(k, dim=1).indices
        in_top = torch.zeros_like(targets, dtype=torch.bool).scatter_(1, top, True)
        true = targets > 0
        groups = self._groups_t.to(scores.device)
        code_hits = (in_top & true).sum(0)
        code_totals = true.sum(0)
        self.hits += (
            torch.zeros(NUM_GROUPS, dtype=torch.int64, device=scores.device)
            .index_add_(0, groups, code_hits)
            .cpu()
            .numpy()
        )
        self.totals += (
            torch.zeros(NUM_GROUPS, dtype=torch.int64, device=scores.device)
            .index_add_(0, groups, code_totals)
            .cpu()
            .numpy()
        )

    def result(self) -> dict:
        by_group = [float(h / t) if t else float("nan") for h, t in zip(self.hits, self.totals, strict=True)]
        total = int(self.totals.sum())
        return {
            "accuracy": float(self.hits.sum() / total) if total else float("nan"),
            "accuracy_by_group": by_group,
            "true_codes": total,
            "true_codes_by_group": self.totals.tolist(),
        }
