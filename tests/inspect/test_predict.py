"""`predict_next_visit(run, history)` and `hapnet predict` on a tiny trained run (tests/tiny.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import build_tiny_run, hapnet
from typer.testing import CliRunner

from hapnet.errors import HapnetError
from hapnet.inspect.predict import OUTSIDE_VOCABULARY, parse_history, patient_history, predict_next_visit
from hapnet.training.runs import load

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="module")
def hap_run(tiny: Path) -> Path:
    return build_tiny_run(tiny, "hap")


# ----------------------------------------------------------------------------- library
def test_probabilities_sum_to_one_and_top_is_a_prefix_of_the_full_ranking(hap_run: Path) -> None:
    run = load(hap_run)
    result = predict_next_visit(run, [["A11", "A12"], ["B21"]], k=5)
    assert result.probabilities.shape == (len(run.vocab),)
    assert result.probabilities.sum() == pytest.approx(1.0, abs=1e-9)
    assert (result.probabilities > 0).all()
    top = result.top
    assert len(top) == 5 and top["rank"].tolist() == [1, 2, 3, 4, 5]
    assert (np.diff(top["probability"].to_numpy()) <= 0).all()
    ranking = np.argsort(-result.probabilities, kind="stable")
    assert top["code"].tolist() == run.vocab["code"].to_numpy()[ranking[:5]].tolist()
    assert top["probability"].tolist() == result.probabilities[ranking[:5]].tolist()
    # Facts of each code come from vocab.csv.
    facts = run.vocab.set_index("code")
    for row in top.itertuples():
        assert (
            row.group == facts.loc[row.code, "group"]
            and row.train_count == facts.loc[row.code, "train_count"]
        )
    # Asking for more codes than there are gives all of them.
    assert len(predict_next_visit(run, [["A11"]], k=1000).top) == len(run.vocab)


def test_probabilities_equal_a_hand_written_forward_pass(hap_run: Path) -> None:
    """Second computation path: g -> tanh(sum of the visit's g) -> GRU -> head -> softmax, with
    the default tied head written out: output rows W g_c + u_c."""
    run = load(hap_run)
    history = [["A11", "A12"], ["B21"], ["C211", "A11"]]
    code_class = {c: i for i, c in enumerate(run.codes)}
    model = run.model.eval()
    with torch.no_grad():
        g = model.code_embeddings()
        visits = torch.stack([torch.tanh(g[[code_class[c] for c in visit]].sum(0)) for visit in history])
        states, _ = model.gru(visits[None])
        head = model.heads["diagnosis"]
        logits = (g @ head.project.weight.T + head.free) @ states[0, -1] + head.bias
        expected = torch.softmax(logits.double(), dim=0).numpy()
    np.testing.assert_allclose(predict_next_visit(run, history).probabilities, expected, rtol=1e-5, atol=1e-7)


def test_codes_resolve_like_training_and_the_rest_are_reported(hap_run: Path) -> None:
    run = load(hap_run)
    # a11: exact after normalisation; A111: mapped to its ancestor A11 (same node: counted once);
    # Z99: unknown; A1: a category the run never saw in a visit (its visit is dropped).
    result = predict_next_visit(run, [["a11", "A111", "Z99"], ["A1"]], k=3)
    statuses = {r.raw: (r.code, r.status) for r in result.resolved}
    assert statuses == {
        "a11": ("A11", "exact"),
        "A111": ("A11", "mapped"),
        "Z99": (None, "unknown"),
        "A1": ("A1", OUTSIDE_VOCABULARY),
    }
    assert result.visits_used == 1
    assert [r.raw for r in result.skipped()] == ["Z99", "A1"] and [r.raw for r in result.mapped()] == ["A111"]
    same = predict_next_visit(run, [["A11"]], k=3)
    np.testing.assert_array_equal(result.probabilities, same.probabilities)
    as_dict = json.loads(json.dumps(result.as_dict()))
    assert as_dict["skipped"][0] == {"raw": "Z99", "code": None, "visit": 1, "reason": "unknown"}


@pytest.mark.parametrize(
    "history, message",
    [
        ([], "empty history"),
        ([["Z99", "Q12"]], "no code of the history is in the run's vocabulary: Z99 (unknown), Q12 (unknown)"),
        ([["A1"]], "A1 (outside vocabulary)"),
        ("A11", "must be a list of visits"),
    ],
)
def test_unusable_history_is_a_one_line_error(hap_run: Path, history, message: str) -> None:
    with pytest.raises(HapnetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        predict_next_visit(load(hap_run), history)


def test_parse_history() -> None:
    assert parse_history(" 4280, 5849 ;4019,42731;") == [["4280", "5849"], ["4019", "42731"]]
    with pytest.raises(HapnetError, match="no code given"):
        parse_history(" ; , ")


def test_patient_history_reads_their_visits_in_order(hap_run: Path, tiny: Path) -> None:
    run = load(hap_run)
    rows = [line.split(",") for line in (tiny / "visits.csv").read_text().splitlines()[1:]]
    expected: dict[str, list[str]] = {}
    for patient, visit, code in rows:
        if patient == "p4":
            expected.setdefault(visit, []).append(code)
    assert patient_history(run, tiny / "visits.csv", "p4") == list(expected.values())
    with pytest.raises(HapnetError, match="no patient 'nobody'"):
        patient_history(run, tiny / "visits.csv", "nobody")


def test_k_defaults_to_the_runs_accuracy_k_and_is_checked(tiny: Path) -> None:
    run_dir = build_tiny_run(tiny, "rnn", k=5, name="rnn-k5")
    run = load(run_dir)
    assert run.config.k == 5 and len(run.vocab) > 5
    by_run, by_folder = predict_next_visit(run, [["A11"]]), predict_next_visit(run_dir, [["A11"]])
    assert len(by_run.top) == 5 and by_folder.top.equals(by_run.top)  # a Run or its folder alike
    assert len(predict_next_visit(run, [["A11"]], k=3).top) == 3
    for bad in (0, -1):
        with pytest.raises(HapnetError, match=rf"^--k must be at least 1, got {bad}$"):
            predict_next_visit(run, [["A11"]], k=bad)
    shown = hapnet("predict", run_dir, "--history", "A11", "--json")
    assert shown.exit_code == 0 and len(json.loads(shown.stdout)["predictions"]) == 5
    shown = hapnet("predict", run_dir, "--history", "A11", "-k", "2", "--json", "--device", "auto")
    assert shown.exit_code == 0 and len(json.loads(shown.stdout)["predictions"]) == 2


# ----------------------------------------------------------------------------- CLI
def test_cli_predict_table_and_json(hap_run: Path) -> None:
    result = hapnet("predict", hap_run, "--history", "A11,A12;B21,Z99", "--k", "4")
    assert result.exit_code == 0, result.output
    top_code = predict_next_visit(load(hap_run), [["A11", "A12"], ["B21"]], k=1).top["code"][0]
    assert (
        top_code in result.stdout and "skipped: Z99" in result.stdout and "frequency group" in result.stdout
    )
    result = hapnet("predict", hap_run, "--history", "A11,A12;B21", "--k", "4", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [p["rank"] for p in data["predictions"]] == [1, 2, 3, 4]
    assert data["predictions"][0]["code"] == top_code


def test_cli_predict_patient(hap_run: Path, tiny: Path) -> None:
    result = hapnet("predict", hap_run, "--patient", "p4", "--data", tiny / "visits.csv", "--json")
    assert result.exit_code == 0, result.output
    history = patient_history(load(hap_run), tiny / "visits.csv", "p4")
    assert json.loads(result.stdout)["visits_used"] == len(history)


@pytest.mark.parametrize(
    "args, message",
    [
        (["no/such/run", "--history", "A11"], "error: no/such/run: not a hapnet run folder"),
        (
            ["{run}", "--history", "Z99"],
            "error: no code of the history is in the run's vocabulary: Z99 (unknown)",
        ),
        (["{run}"], "error: give either --history or --patient"),
        (["{run}", "--patient", "p1"], "error: --patient needs --data"),
        (["{run}", "--history", "A11", "--k", "0"], "error: --k must be at least 1, got 0"),
    ],
)
def test_cli_predict_bad_input_is_exit_2_one_line(hap_run: Path, args: list[str], message: str) -> None:
    result = hapnet("predict", *[a.replace("{run}", str(hap_run)) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr
