import math

import numpy as np
import pytest
import torch

from hapnet.training.metrics import AccuracyAtK, frequency_groups
from hapnet.training.seeds import markdown_table, mean_std, parse_seeds, summarize


def test_frequency_groups_cut_running_sum_into_quarters():
    # Ten codes seen once each: running sums before each code are 0..9 of 10.
    groups = frequency_groups(np.ones(10))
    assert groups.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]


def test_frequency_groups_sort_rarest_first_and_unseen_codes_are_rarest():
    counts = np.array([40, 0, 5, 30, 25])  # total 100
    # sorted (count, running sum before): code1 (0, 0), code2 (5, 0), code4 (25, 5), code3 (30, 30),
    # code0 (40, 60); groups = floor(4 * start / 100)
    assert frequency_groups(counts).tolist() == [2, 0, 0, 1, 0]


def test_accuracy_at_k_counts_every_true_code_by_group():
    groups = np.array([0, 1, 2, 3, 3])
    meter = AccuracyAtK(k=2, groups=groups)
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.0, 0.2], [0.0, 0.1, 0.2, 0.9, 0.8]])
    targets = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 1, 1]], dtype=torch.float32)
    meter.update(scores, targets)
    result = meter.result()
    # visit 1: top2 = {0, 1}; true {0, 2} -> hit code0. visit 2: top2 = {3, 4}; true {1, 3, 4} -> hits 3, 4.
    assert result["accuracy"] == 3 / 5
    assert result["accuracy_by_group"][:3] == [1.0, 0.0, 0.0]
    assert result["accuracy_by_group"][3] == 1.0
    assert result["true_codes_by_group"] == [1, 1, 1, 2]


def test_accuracy_with_no_true_code_in_a_group_is_nan():
    meter = AccuracyAtK(k=1, groups=np.array([0, 0]))
    meter.update(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]]))
    assert meter.result()["accuracy"] == 1.0
    assert math.isnan(meter.result()["accuracy_by_group"][3])


def test_parse_seeds_and_summary_table():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("3, 1,3") == [3, 1]
    metrics = [
        {
            "seed": s,
            "k": 20,
            "best_epoch": e,
            "test": {"accuracy": a, "accuracy_by_group": [a, a, a, a], "tasks": {"level1": {"loss": a}}},
        }
        for s, a, e in [(0, 0.2, 3), (1, 0.4, 6)]
    ]
    summary = summarize(metrics)
    assert summary["best_epoch"]["mean"] == 4.5
    assert summary["tasks"]["level1"]["loss"]["mean"] == summary["accuracy"]["mean"]
    assert (
        summary["accuracy"]["mean"] == 0.30000000000000004 or abs(summary["accuracy"]["mean"] - 0.3) < 1e-12
    )
    assert abs(summary["accuracy"]["std"] - mean_std([0.2, 0.4])["std"]) < 1e-12
    assert abs(mean_std([0.2, 0.4])["std"] - math.sqrt(0.02)) < 1e-12
    table = markdown_table([("hap", summary)])
    assert "| hap | 0.3000 ± 0.1414" in table


def run_metrics(seed: int, score: float | None) -> dict:
    """A run's metrics.json; with `score`, the scores of issue #21 too (None: a run from before)."""
    test = {"accuracy": 0.3, "accuracy_by_group": [0.3] * 4}
    if score is not None:
        test.update({"recall@10": score, "recall@20": 2 * score, "weighted_f1": score / 2})
        test.update({"pr_auc_micro": score, "pr_auc_macro": float("nan"), "roc_auc_micro": 0.75})
        test.update({"roc_auc_macro": 0.5 + score, "auc_macro_codes": 9})
    return {"seed": seed, "k": 20, "best_epoch": 1, "test": test}


def test_summary_and_tables_carry_the_other_scores():
    summary = summarize([run_metrics(0, 0.2), run_metrics(1, 0.4)])
    assert summary["recall@10"]["mean"] == pytest.approx(0.3)
    assert summary["recall@20"]["mean"] == pytest.approx(0.6)
    assert summary["weighted_f1"]["std"] == pytest.approx(math.sqrt(0.02) / 2)
    assert summary["roc_auc_micro"] == {"mean": 0.75, "std": 0.0}
    assert math.isnan(summary["pr_auc_macro"]["mean"])  # undefined in the runs: undefined here
    assert "auc_macro_codes" not in summary  # a count, not a score
    table = markdown_table([("hap", summary)])
    paper, scores = table.split("\n\n", 1)
    assert paper.splitlines()[0] == "| model | 0-25 | 25-50 | 50-75 | 75-100 | accuracy@20 |"  # unchanged
    header = "| model | recall@10 | recall@20 | weighted F1 | PR-AUC micro | PR-AUC macro | ROC-AUC micro |"
    assert header + " ROC-AUC macro |" in scores
    assert "| hap | 0.3000 ± 0.1414 | 0.6000 ± 0.2828 | 0.1500 ± 0.0707 | 0.3000 ± 0.1414 | – |" in scores


def test_runs_from_before_the_other_scores_summarise_with_dashes():
    old = summarize([run_metrics(0, None), run_metrics(1, None)])
    assert "recall@10" not in old and old["accuracy"]["mean"] == pytest.approx(0.3)
    assert "\n\n" not in markdown_table([("rnn", old)])  # the paper's table alone, as before
    mixed = summarize([run_metrics(0, 0.2), run_metrics(1, None)])
    assert "recall@10" not in mixed  # a mean over some of the seeds would mislead
    table = markdown_table([("hap", summarize([run_metrics(0, 0.2)])), ("rnn", old)])
    assert "| rnn | – | – | – | – | – | – | – |" in table
