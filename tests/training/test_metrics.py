import math

import numpy as np
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
