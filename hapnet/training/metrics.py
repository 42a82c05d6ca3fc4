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


# ----------------------------------------------------------------------------- beyond accuracy@k
# Chet (Lu et al., AAAI 2022) and Sherbet report recall@k per visit at these k, and weighted F1.
RECALL_KS = (10, 20)
# The scores of every evaluation besides accuracy@k and the loss: key in metrics.json -> table label.
VISIT_SCORES = {**{f"recall@{k}": f"recall@{k}" for k in RECALL_KS}, "weighted_f1": "weighted F1"}
AUC_SCORES = {
    "pr_auc_micro": "PR-AUC micro",
    "pr_auc_macro": "PR-AUC macro",
    "roc_auc_micro": "ROC-AUC micro",
    "roc_auc_macro": "ROC-AUC macro",
}
SCORE_LABELS = {**VISIT_SCORES, **AUC_SCORES}
AUC_CODES = "auc_macro_codes"  # how many codes the macro AUCs average over


class VisitScores:
    """Per-visit recall@k and the weighted F1 of the top-|y| codes, accumulated as sums and counts.

    `state` is a dict of arrays that add up: the states of several batches (or, later, of DDP
    ranks) merge by summing key by key (`merge`), and `result` reads the scores off the sums.
    """

    def __init__(self, num_codes: int, ks: tuple[int, ...] = RECALL_KS) -> None:
        self.num_codes = num_codes
        self.ks = tuple(ks)
        self.state: dict[str, np.ndarray] = {
            "recall_sum": np.zeros(len(self.ks), dtype=np.float64),  # sum over visits of each recall@k
            "visits": np.zeros((), dtype=np.int64),  # visits with at least one true code
            "true_positives": np.zeros(num_codes, dtype=np.int64),  # per code, top-|y| prediction
            "false_positives": np.zeros(num_codes, dtype=np.int64),
            "false_negatives": np.zeros(num_codes, dtype=np.int64),
        }

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """scores [S, C] for S predicted visits; targets [S, C] multi-hot (0/1)."""
        # Float sums of the 0/1 targets: exact, and several times faster than over a bool mask.
        sizes = targets.sum(1).long()  # |y| of every visit
        # One ranking serves both: the first k ranks give recall@k, the first |y| the F1 prediction.
        depth = min(max(max(self.ks), int(sizes.max()) if len(sizes) else 0), scores.shape[1])
        ranked = scores.topk(depth, dim=1).indices  # [S, depth], best first
        hit = targets.gather(1, ranked) > 0  # is the code at that rank a true one?
        hits_within = hit.cumsum(1)  # [S, depth] true codes among the first r + 1
        has_truth = sizes > 0  # a visit with no true code has no recall (Chet divides by |y|)
        cut = torch.tensor([min(k, depth) - 1 for k in self.ks], device=scores.device)
        recalls = hits_within[has_truth][:, cut].double() / sizes[has_truth][:, None].double()
        predicted = torch.arange(depth, device=scores.device) < sizes[:, None]  # the top |y| ranks
        counts = torch.stack(
            [
                torch.bincount(ranked[predicted & hit], minlength=self.num_codes),  # true positives
                torch.bincount(ranked[predicted], minlength=self.num_codes),  # predicted
                targets.sum(0).long(),  # true
            ]
        ).cpu()
        tp, predicted_count, true_count = counts.numpy()
        self.merge(
            {
                "recall_sum": recalls.sum(0).cpu().numpy(),
                "visits": np.asarray(int(has_truth.sum())),
                "true_positives": tp,
                "false_positives": predicted_count - tp,
                "false_negatives": true_count - tp,
            }
        )

    def merge(self, state: dict[str, np.ndarray]) -> None:
        """Add another accumulator's state (another batch, another rank) to this one."""
        for key, value in state.items():
            self.state[key] = self.state[key] + value

    def result(self) -> dict[str, float]:
        s = self.state
        visits = int(s["visits"])
        recall = {
            f"recall@{k}": float(total / visits) if visits else float("nan")
            for k, total in zip(self.ks, s["recall_sum"], strict=True)
        }
        f1 = weighted_f1(s["true_positives"], s["false_positives"], s["false_negatives"])
        return {**recall, "weighted_f1": f1}


def weighted_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> float:
    """Per-code F1 = 2TP / (2TP + FP + FN) (0 where undefined), averaged weighted by each code's
    support TP + FN: sklearn's f1_score(average="weighted", zero_division=0) from the counts."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    support = tp + fn
    if support.sum() == 0:
        return 0.0  # sklearn's value (with a warning) when no code has a true instance
    denominator = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return float((f1 * support).sum() / support.sum())


class ScoreCollector:
    """Every visit's scores (float32) and true codes, kept for the AUCs, which need all of them
    (they are not sums). Merging is concatenation (across DDP ranks: a gather)."""

    def __init__(self) -> None:
        self.scores: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        self.scores.append(scores.detach().float().cpu().numpy())
        self.targets.append((targets > 0).cpu().numpy())

    def merge(self, other: ScoreCollector) -> None:
        self.scores += other.scores
        self.targets += other.targets

    def result(self) -> dict[str, float | int]:
        num_codes = self.scores[0].shape[1] if self.scores else 0
        scores = np.concatenate(self.scores) if self.scores else np.zeros((0, num_codes), np.float32)
        targets = np.concatenate(self.targets) if self.targets else np.zeros((0, num_codes), bool)
        return ranking_scores(targets, scores)


def ranking_scores(targets: np.ndarray, scores: np.ndarray) -> dict[str, float | int]:
    """Micro and macro average precision (PR-AUC) and ROC-AUC of `scores` [S, C] against the
    multi-hot `targets` [S, C], by scikit-learn. Micro pools every (visit, code) pair; macro is
    the mean over the codes with both a positive and a negative visit (the others have no AUC),
    and `auc_macro_codes` says how many. NaN where no pair, or no such code, exists."""
    # scikit-learn takes ~1.3 s to import: only the final evaluation needs it, never an epoch
    from sklearn.metrics import average_precision_score, roc_auc_score

    targets = np.asarray(targets, dtype=bool)
    positives = targets.sum(0)
    both = (positives > 0) & (positives < len(targets))
    nan = float("nan")
    result: dict[str, float | int] = dict.fromkeys(AUC_SCORES, nan)
    result[AUC_CODES] = int(both.sum())
    if targets.any() and not targets.all():
        result["pr_auc_micro"] = float(average_precision_score(targets, scores, average="micro"))
        result["roc_auc_micro"] = float(roc_auc_score(targets, scores, average="micro"))
    if both.any():
        # Row-major copies (a boolean column selection is column-major): scikit-learn takes one
        # column at a time with np.take, which copies the whole of a column-major array each time.
        kept_targets = np.ascontiguousarray(targets[:, both])
        kept_scores = np.ascontiguousarray(scores[:, both])
        result["pr_auc_macro"] = float(average_precision_score(kept_targets, kept_scores, average="macro"))
        result["roc_auc_macro"] = float(roc_auc_score(kept_targets, kept_scores, average="macro"))
    return result
