"""`hapnet ontology list|info|show` end to end, and every kind of bad input through the CLI."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from testdata import ONTOLOGY_FILES as DATA
from typer.testing import CliRunner

from hapnet.cli.main import app

runner = CliRunner()


def hapnet(*args: str | Path):  # noqa: ANN201 - click's Result
    return runner.invoke(app, ["ontology", *map(str, args)])


def test_list_names_every_builtin() -> None:
    result = hapnet("list")
    assert result.exit_code == 0
    for name in ("icd9-ccs", "icd9cm", "icd10cm", "icd10cm-ccsr", "icd9-icd10"):
        assert name in result.stdout


def test_info_json_on_a_file() -> None:
    result = hapnet("info", DATA / "dag.csv", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["nodes"] == 9 == sum(summary["per_level"])  # root included
    assert (summary["edges"], summary["leaves"], summary["depth"], summary["multi_parent"]) == (9, 3, 4, 1)
    assert summary["per_level"] == [1, 3, 3, 1, 1]


def test_info_json_levels() -> None:
    summary = json.loads(hapnet("info", DATA / "dag.csv", "--levels", "2", "--json").stdout)
    assert summary["per_level"] == [0, 0, 0, 1, 1] and summary["edges"] == 1
    assert summary["cut_level"] == 3 and summary["standalone_below_cut"] == 2


def test_info_table_on_a_builtin() -> None:
    result = hapnet("info", "icd9-ccs", "--levels", "3")
    assert result.exit_code == 0, result.output
    assert "15,072" not in result.stdout and "13,483" in result.stdout  # leaves at levels 3..5
    assert "3..5" in result.stdout and "1,589" in result.stdout  # residual codes below the cut


def test_show_path_and_children() -> None:
    result = hapnet("show", "icd9-ccs", "038.9")
    assert result.exit_code == 0, result.output
    for text in ("0389", "Unspecified septicemia", "CCS:1.1.2.6", "CCS:1 ", "<ROOT>", "(level 5)", "a leaf"):
        assert text in result.stdout
    children = hapnet("show", "icd9-ccs", "ccs:18", "--children", "2")
    assert "1589 children" in children.stdout and "first 2 of 1589" in children.stdout


def test_show_every_path_of_a_multi_parent_code() -> None:
    result = hapnet("show", DATA / "dag.csv", "D")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("<ROOT>") == 2  # D -> C -> A and D -> C -> B -> A


def test_show_maps_to_the_nearest_ancestor() -> None:
    result = hapnet("show", "icd9-icd10", "icd10:T81.4XXA", "--children", "1")
    assert result.exit_code == 0, result.output
    assert "nearest ancestor shown" in result.stdout
    assert "ICD10:T814 Infection following a procedure" in result.stdout and "ICD-10-CM" in result.stdout


def test_show_unknown_code_is_one_line_exit_2() -> None:
    result = hapnet("show", "icd9-ccs", "ZZZ99")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: icd9-ccs: unknown code 'ZZZ99'"


CCS_HEADER = "'ICD-9-CM CODE','CCS LVL 1','CCS LVL 1 LABEL','CCS LVL 2','CCS LVL 2 LABEL'," + (
    "'CCS LVL 3','CCS LVL 3 LABEL','CCS LVL 4','CCS LVL 4 LABEL'\n"
)

BAD_INPUTS = {
    # name: (file name, content, expected words of the message)
    "empty": ("empty.csv", b"", "empty file"),
    "blank lines": ("blank.csv", b"\n  \n\r\n", "empty file"),
    "header only": ("header.csv", b"code,parent,description\n", "header only, no data rows"),
    "header only ccs": ("ccs.csv", CCS_HEADER.encode(), "header only, no data rows"),
    "wrong columns": ("cols.csv", b"icd,up\nA,B\n", "line 1: wrong columns 'icd,up'"),
    "cycle": ("cycle.csv", b"code,parent\nA,\nB,A\nC,B\nA,C\n", "cycle (parent -> child): "),
    "self-loop": ("loop.csv", b"code,parent\nA,\nB,b\n", "line 3: self-loop: 'B' is its own parent"),
    "short row": ("short.csv", b"code,parent\nA,\nB\n", "line 3: expected 2 fields, found 1"),
    "binary": ("garbage.csv", bytes(range(256)) * 8, "binary data"),
    "binary without NUL": ("noise.csv", bytes(range(1, 256)) * 4, "binary data"),
    "fake gz": ("fake.csv.gz", b"code,parent\nA,\n", "has a .gz suffix but is not gzip-compressed"),
    "broken gz": (
        "broken.csv.gz",
        gzip.compress(b"code,parent\n" + b"A,\n" * 500)[:40],
        "corrupt or truncated gzip",
    ),
    "gz of garbage": ("bin.csv.gz", gzip.compress(bytes(range(256))), "binary data"),
    "truncated ccs": (
        "trunc.csv",
        (
            CCS_HEADER
            + "'0010','1','Infectious','1.1','Bacterial',' ',' ',' ',' '\n'0011','1','Infectious'\n"
        ).encode(),
        "line 3: truncated CCS row: expected 9 fields, found 3",
    ),
}


@pytest.mark.parametrize("command", ["info", "show"])
@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_naming_the_file_exit_2(tmp_path: Path, case: str, command: str) -> None:
    filename, content, expected = BAD_INPUTS[case]
    path = tmp_path / filename
    path.write_bytes(content)
    result = hapnet(command, path, *(["A"] if command == "show" else []))
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {path}") and expected in lines[0]
    assert "Traceback" not in result.output and result.stdout == ""


def test_cycle_message_names_the_cycle(tmp_path: Path) -> None:
    path = tmp_path / "cycle.csv"
    path.write_text("code,parent\nR,\nA,R\nB,A\nC,B\nA,C\n")
    message = hapnet("info", path).stderr
    cycle = message.split("cycle (parent -> child): ", 1)[1].strip()
    nodes = cycle.split(" -> ")
    assert nodes[0] == nodes[-1] and sorted(nodes[:-1]) == ["A", "B", "C"]


def test_missing_file_and_bad_levels_are_one_line() -> None:
    result = hapnet("info", "no/such/file.csv")
    assert result.exit_code == 2 and "no/such/file.csv: no such file" in result.stderr
    result = hapnet("info", DATA / "dag.csv", "--levels", "0")
    assert result.exit_code == 2 and result.stderr.strip() == "error: --levels must be at least 1, got 0"


def test_latin1_file_warns_and_loads() -> None:
    result = hapnet("info", DATA / "latin1.csv", "--json")
    assert result.exit_code == 0, result.output
    assert "not valid UTF-8, read as latin-1" in result.stderr
    assert json.loads(result.stdout)["nodes"] == 3
    shown = hapnet("show", DATA / "latin1.csv", "a")
    assert "Café au lait" in shown.stdout
