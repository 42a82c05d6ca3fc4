"""The scores besides accuracy@k (issue #21): per-visit recall@k, the weighted F1 of the top-|y|
codes, micro and macro PR-AUC and ROC-AUC. Small cases worked out by hand; the same figures by a
second path (Chet's own loops, scikit-learn, counting pairs); the end of training, `hapnet
evaluate` and the tables carrying them; runs from before them still shown."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from sklearn.metrics import f1_score
from tiny import build_tiny_run, hapnet, write_tiny_data

import hapnet as lib
from hapnet.cli.display import metrics_table
from hapnet.errors import InputError
from hapnet.training.evaluation import log_probabilities
from hapnet.training.metrics import (
    AUC_CODES,
    AUC_SCORES,
    VISIT_SCORES,
    AccuracyAtK,
    ScoreCollector,
    VisitScores,
    ranking_scores,
    weighted_f1,
)
from hapnet.training.runs import check_metrics

NEW_KEYS = [*VISIT_SCORES, *AUC_SCORES, AUC_CODES]

# Three visits over five codes (the ranks of each visit's scores, best first, in the comments).
SCORES = torch.tensor(
    [
        [0.9, 0.8, 0.1, 0.0, 0.2],  # ranks 0, 1, 4, 2, 3
        [0.0, 0.1, 0.2, 0.9, 0.8],  # ranks 3, 4, 2, 1, 0
        [0.5, 0.4, 0.3, 0.2, 0.1],  # ranks 0, 1, 2, 3, 4
    ]
)
TARGETS = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float32)


# ----------------------------------------------------------------------------- recall@k and F1
def test_recall_and_weighted_f1_by_hand() -> None:
    meter = VisitScores(num_codes=5, ks=(1, 2))
    meter.update(SCORES, TARGETS)
    result = meter.result()
    # recall@1: 1/2, 1/3, 1/1 -> mean 11/18; recall@2: 1/2, 2/3, 1/1 -> mean 13/18
    assert result["recall@1"] == pytest.approx(11 / 18, abs=1e-15)
    assert result["recall@2"] == pytest.approx(13 / 18, abs=1e-15)
    # pooled accuracy@2 counts codes, not visits: hits 1 + 2 + 1 of 2 + 3 + 1 true codes
    pooled = AccuracyAtK(k=2, groups=np.zeros(5, np.int64))
    pooled.update(SCORES, TARGETS)
    assert pooled.result()["accuracy"] == 4 / 6
    # top-|y|: visit 1 predicts {0, 1}, visit 2 {3, 4, 2}, visit 3 {0}
    assert meter.state["true_positives"].tolist() == [2, 0, 0, 1, 1]
    assert meter.state["false_positives"].tolist() == [0, 1, 1, 0, 0]
    assert meter.state["false_negatives"].tolist() == [0, 1, 1, 0, 0]
    assert int(meter.state["visits"]) == 3
    # per-code F1 1, 0, 0, 1, 1 with supports 2, 1, 1, 1, 1 -> (2 + 1 + 1) / 6
    assert result["weighted_f1"] == pytest.approx(2 / 3, abs=1e-15)
    predicted = np.array([[1, 1, 0, 0, 0], [0, 0, 1, 1, 1], [1, 0, 0, 0, 0]])
    assert f1_score(TARGETS.numpy(), predicted, average="weighted", zero_division=0) == pytest.approx(2 / 3)


def chet_scores(targets: np.ndarray, scores: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """Chet's metrics.py (LuChang-CS/Chet), as written there: argsort, sets, loops."""
    ranked = np.argsort(-scores, axis=1)
    recall = np.zeros(len(ks))
    for pred, true_hot in zip(ranked, targets, strict=True):
        truth = set(np.where(true_hot == 1)[0].tolist())
        for i, k in enumerate(ks):
            recall[i] += len(set(pred[:k].tolist()) & truth) / len(truth)
    predicted = np.zeros_like(targets)
    for i in range(len(predicted)):
        predicted[i][ranked[i][: int(np.sum(targets[i] == 1))]] = 1
    f1 = f1_score(targets, predicted, average="weighted", zero_division=0)
    return {**{f"recall@{k}": r / len(targets) for k, r in zip(ks, recall, strict=True)}, "weighted_f1": f1}


@pytest.mark.parametrize("num_codes", [60, 15])  # 15: fewer codes than k = 20
def test_recall_and_f1_match_chets_loops_and_scikit_learn(num_codes: int) -> None:
    rng = np.random.default_rng(num_codes)
    visits = 57
    targets = np.zeros((visits, num_codes), dtype=np.int64)
    for row, size in enumerate(rng.integers(1, min(num_codes, 30), size=visits)):  # some |y| > 20
        targets[row, rng.choice(num_codes, size=size, replace=False)] = 1
    scores = rng.standard_normal((visits, num_codes)).astype(np.float32)  # no ties
    meter = VisitScores(num_codes)
    for rows in np.split(np.arange(visits), [5, 30]):  # uneven batches
        meter.update(torch.from_numpy(scores[rows]), torch.from_numpy(targets[rows]).float())
    expected = chet_scores(targets, scores, (10, 20))
    assert meter.result() == pytest.approx(expected, abs=1e-12)


def test_states_add_up_across_batches_and_ranks() -> None:
    rng = np.random.default_rng(3)
    scores = torch.from_numpy(rng.standard_normal((40, 25)).astype(np.float32))
    targets = (torch.from_numpy(rng.random((40, 25))) < 0.2).float()
    targets[:, 0] = 1  # every visit has a true code
    whole = VisitScores(25)
    whole.update(scores, targets)
    first, second = VisitScores(25), VisitScores(25)  # e.g. two DDP ranks
    first.update(scores[:17], targets[:17])
    second.update(scores[17:], targets[17:])
    first.merge(second.state)
    for key, value in whole.state.items():
        assert np.allclose(first.state[key], value, rtol=0, atol=1e-12), key
    assert first.state["true_positives"].tolist() == whole.state["true_positives"].tolist()
    assert first.result() == pytest.approx(whole.result(), abs=1e-12)


def test_weighted_f1_from_counts_is_scikit_learns() -> None:
    rng = np.random.default_rng(5)
    truth = (rng.random((30, 12)) < 0.3).astype(int)
    predicted = (rng.random((30, 12)) < 0.3).astype(int)
    truth[:, 3] = 0  # a code that never occurs: weight 0
    predicted[:, 4] = 0  # one never predicted: precision undefined, F1 0
    tp = (truth & predicted).sum(0)
    fp = ((1 - truth) & predicted).sum(0)
    fn = (truth & (1 - predicted)).sum(0)
    expected = f1_score(truth, predicted, average="weighted", zero_division=0)
    assert weighted_f1(tp, fp, fn) == pytest.approx(expected, abs=1e-12)
    assert weighted_f1(np.zeros(3), np.ones(3), np.zeros(3)) == 0.0  # no true code anywhere


# ----------------------------------------------------------------------------- AUCs
def test_aucs_by_hand() -> None:
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=bool)
    scores = np.array([[0.9, 0.3, 0.05], [0.6, 0.8, 0.15], [0.4, 0.2, 0.25], [0.1, 0.7, 0.35]])
    result = ranking_scores(targets, scores)
    # code 0: positives .9 .4, negatives .6 .1 -> ROC 3/4; ranked + - + - -> AP (1 + 2/3) / 2
    # code 1: positive .8 above its negatives .3 .2 .7 -> ROC 1, AP 1; code 2: no positive, skipped
    assert result[AUC_CODES] == 2
    assert result["roc_auc_macro"] == pytest.approx((3 / 4 + 1) / 2)
    assert result["pr_auc_macro"] == pytest.approx((5 / 6 + 1) / 2)
    # micro: positives .9 .8 .4 against 9 negatives: 9 + 9 + 7 pairs in order of 27;
    # ranked .9+ .8+ .7- .6- .4+ -> AP (1 + 1 + 3/5) / 3
    assert result["roc_auc_micro"] == pytest.approx(25 / 27)
    assert result["pr_auc_micro"] == pytest.approx(13 / 15)


def pairs_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC by definition: the share of (positive, negative) pairs ranked in order."""
    positive, negative = scores[truth], scores[~truth]
    return float((positive[:, None] > negative[None, :]).mean())


def precision_at_positives(truth: np.ndarray, scores: np.ndarray) -> float:
    """Average precision by definition: the precision at the rank of each positive, averaged."""
    hits = truth[np.argsort(-scores)]
    return float((np.cumsum(hits) / np.arange(1, len(hits) + 1))[hits].mean())


def test_aucs_match_pair_counting_on_random_data() -> None:
    rng = np.random.default_rng(11)
    targets = rng.random((40, 16)) < 0.25
    targets[:, 2] = False  # no positive
    targets[:, 5] = True  # no negative
    scores = rng.standard_normal((40, 16))
    result = ranking_scores(targets, scores)
    kept = [c for c in range(16) if c not in (2, 5)]
    assert result[AUC_CODES] == 14
    roc = np.mean([pairs_auc(targets[:, c], scores[:, c]) for c in kept])
    ap = np.mean([precision_at_positives(targets[:, c], scores[:, c]) for c in kept])
    assert result["roc_auc_macro"] == pytest.approx(roc, abs=1e-12)
    assert result["pr_auc_macro"] == pytest.approx(ap, abs=1e-12)
    assert result["roc_auc_micro"] == pytest.approx(pairs_auc(targets.ravel(), scores.ravel()), abs=1e-12)
    micro_ap = precision_at_positives(targets.ravel(), scores.ravel())
    assert result["pr_auc_micro"] == pytest.approx(micro_ap, abs=1e-12)


def test_collected_batches_score_like_the_whole_and_undefined_aucs_are_nan() -> None:
    rng = np.random.default_rng(2)
    scores = rng.standard_normal((20, 8)).astype(np.float32)
    targets = rng.random((20, 8)) < 0.3
    collector, other = ScoreCollector(), ScoreCollector()
    collector.update(torch.from_numpy(scores[:7]), torch.from_numpy(targets[:7]).float())
    other.update(torch.from_numpy(scores[7:]), torch.from_numpy(targets[7:]).float())
    collector.merge(other)
    assert collector.result() == ranking_scores(targets, scores)
    nothing = ranking_scores(np.zeros((3, 4), bool), np.zeros((3, 4)))
    assert nothing[AUC_CODES] == 0 and all(math.isnan(nothing[key]) for key in AUC_SCORES)


def test_aucs_rank_probabilities_the_way_the_loss_defines_them() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [5.0, 4.0, 3.0]])
    # softmax: the first visit's code 0 (0.84) is likelier than the second's (0.67), though its logit is lower
    assert torch.allclose(log_probabilities(logits, "paper").exp(), torch.softmax(logits, 1))
    assert torch.allclose(log_probabilities(logits, "bce").exp(), torch.sigmoid(logits))
    targets = np.array([[1, 0, 0], [0, 0, 0]], dtype=bool)
    by_probability = ranking_scores(targets, log_probabilities(logits, "softmax").numpy())
    by_logit = ranking_scores(targets, logits.numpy())
    assert by_probability["roc_auc_micro"] == 1.0 and by_logit["roc_auc_micro"] < 1.0


# ----------------------------------------------------------------------------- training, evaluate
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_tiny_data(tmp_path_factory.mktemp("tiny"))


def test_the_final_metrics_repeat_the_best_epochs_figures_exactly(tiny: tuple[Path, Path]) -> None:
    ontology, data = tiny
    with pytest.warns(UserWarning, match="validation split"):
        result = lib.train(
            model="hap", ontology=str(ontology), data=str(data), epochs=6, patience=0, lr=3.0,
            dim=16, hidden=16, attention_dim=8, batch_size=4, pretrain="none", device="cpu", quiet=True,
        )  # fmt: skip
    metrics = result.metrics
    best = result.history[metrics["best_epoch"] - 1]
    assert metrics["best_epoch"] < len(result.history)  # the weights changed since: reloaded, not kept
    for split in ("valid", "test"):
        assert metrics[split]["accuracy"] == best[f"{split}_accuracy"]  # exactly: the same pass again
        assert metrics[split]["loss"] == best[f"{split}_loss"]
        assert set(NEW_KEYS) <= set(metrics[split])
        assert all(0 <= metrics[split][key] <= 1 for key in [*VISIT_SCORES, *AUC_SCORES])
        assert metrics[split][AUC_CODES] >= 1
    assert list(metrics["test"])[:3] == ["loss", "accuracy", "accuracy_by_group"]  # the keys others read


@pytest.fixture(scope="module")
def run(tiny: tuple[Path, Path]) -> Path:
    with pytest.warns(UserWarning, match="validation split"):
        return build_tiny_run(tiny[0].parent, "rnn")


def test_evaluate_reports_every_score(run: Path) -> None:
    saved = json.loads((run / "metrics.json").read_text())["test"]
    result = hapnet("evaluate", run, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)["test"]
    assert set(NEW_KEYS) <= set(evaluated)
    assert evaluated["accuracy"] == saved["accuracy"] and evaluated[AUC_CODES] == saved[AUC_CODES]
    for key in [*VISIT_SCORES, *AUC_SCORES]:
        assert evaluated[key] == pytest.approx(saved[key], abs=1e-12), key
    at_5 = json.loads(hapnet("evaluate", run, "--json", "--k", "5").stdout)["test"]
    assert at_5["recall@10"] == evaluated["recall@10"]  # --k changes accuracy@k only
    shown = hapnet("evaluate", run, "--device", "cpu")
    assert shown.exit_code == 0, shown.output
    assert (
        "recall@10" in shown.output and "ROC-AUC" in shown.output and "macro AUCs: mean over" in shown.output
    )


# ----------------------------------------------------------------------------- tables, old runs
def table_text(metrics: dict) -> str:
    console = Console(record=True, width=200)
    console.print(metrics_table(metrics, "t"))
    return console.export_text()


def test_the_scores_table_shows_dashes_for_undefined_and_missing_scores() -> None:
    nan = float("nan")
    old = {"accuracy_by_group": [0.1, 0.2, 0.3, 0.4], "accuracy": 0.5, "loss": 3.0}
    new = {**old, "recall@10": 0.25, "recall@20": 0.5, "weighted_f1": 0.125, "pr_auc_micro": nan}
    text = table_text({"k": 20, "valid": old, "test": {**new, AUC_CODES: 7}})
    rows = [line for line in text.splitlines() if line.startswith("│ test")]
    assert len(rows) == 2  # accuracy table, then the scores table
    cells = [cell.strip() for cell in rows[1].split("│")[2:-1]]
    assert cells == ["0.2500", "0.5000", "0.1250", "–", "–", "–", "–"]
    assert len([line for line in text.splitlines() if line.startswith("│ valid")]) == 1  # no scores, no row
    assert "7 (test)" in text and "nan" not in text.lower()
    scores_lines = text.split("acc@20 75-100%")[1].splitlines()[5:]  # below the accuracy table
    assert max(len(line.rstrip()) for line in scores_lines) <= 90  # two-line headers keep it narrow


def test_a_run_from_before_the_new_scores_still_loads_and_shows() -> None:
    old = {"k": 20, "seed": 0, "best_epoch": 2, "test": {"accuracy": 0.5, "accuracy_by_group": [0.5] * 4}}
    assert check_metrics("m.json", old) is old
    text = table_text({**old, "test": {**old["test"], "loss": 1.0}})
    assert "recall" not in text and "AUC" not in text  # only the accuracy table
    broken = {**old, "test": {**old["test"], "recall@10": "high"}}
    with pytest.raises(InputError, match=r"`test.recall@10` is not a number"):
        check_metrics("m.json", broken)
