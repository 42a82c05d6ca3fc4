"""Where the tests' sample data live (tests/data: the MIMIC demo subsets and small ontology files,
see tests/data/README.md), for the test modules of every folder."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).parent
DATA = TESTS / "data"
MIMIC3 = DATA / "mimic3-demo"
MIMIC4 = DATA / "mimic4-demo"
ONTOLOGY_FILES = DATA / "ontology"
BENCHMARKS = TESTS.parent / "benchmarks"
