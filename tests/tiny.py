"""A tiny trained run for the tests of every folder: `build_tiny_run` trains a model for 2 epochs
on a hand-made 3-level ontology with one two-parent code and 60 synthetic patients; `hapnet(...)`
runs the CLI in-process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from hapnet.cli.main import app
from hapnet.training.trainer import train

runner = CliRunner()

# root -> chapters A, B, C -> categories -> codes; B12 has two parents (A1 and B1); C2 is one level
# deeper (C21 -> C211, C212). Category ids are 2 characters so that a 4-character code like A111
# maps to its 3-character ancestor A11 by ICD prefix truncation.
TINY_ONTOLOGY = """code,parent,description
A,,Chapter A
B,,Chapter B
C,,Chapter C
A1,A,Category A1
A2,A,Category A2
B1,B,Category B1
B2,B,Category B2
C1,C,Category C1
C2,C,Category C2
A11,A1,Code A11
A12,A1,Code A12
A13,A1,Code A13
A21,A2,Code A21
A22,A2,Code A22
B11,B1,Code B11
B12,B1,Code B12
B12,A1,Code B12
B21,B2,Code B21
B22,B2,Code B22
B23,B2,Code B23
C11,C1,Code C11
C12,C1,Code C12
C21,C2,Code C21
C211,C21,Code C211
C212,C21,Code C212
"""
LEAVES = ["A11", "A12", "A13", "A21", "A22", "B11", "B12", "B21", "B22", "B23", "C11", "C12", "C211", "C212"]


def write_tiny_data(folder: Path) -> tuple[Path, Path]:
    """The tiny ontology and 60 patients of 2-4 visits (codes mostly from one chapter each)."""
    folder.mkdir(parents=True, exist_ok=True)
    ontology = folder / "tiny_ontology.csv"
    ontology.write_text(TINY_ONTOLOGY)
    rng = np.random.default_rng(0)
    rows = ["patient,visit,code"]
    visit = 0
    for patient in range(60):
        chapter = "ABC"[patient % 3]
        own = [c for c in LEAVES if c.startswith(chapter)]
        for _ in range(rng.integers(2, 5)):
            visit += 1
            codes = set(rng.choice(own, size=rng.integers(1, 4)))
            codes.add(str(rng.choice(LEAVES)))
            rows += [f"p{patient},v{visit},{code}" for code in sorted(codes)]
    data = folder / "visits.csv"
    data.write_text("\n".join(rows) + "\n")
    return ontology, data


def build_tiny_run(folder: Path, model: str, **settings) -> Path:
    """Train `model` for 2 epochs on the tiny data in `folder` (written once) into folder/model."""
    ontology, data = folder / "tiny_ontology.csv", folder / "visits.csv"
    if not data.exists():
        ontology, data = write_tiny_data(folder)
    out = folder / settings.pop("name", model)
    train(
        model=model,
        ontology=str(ontology),
        data=str(data),
        epochs=2,
        dim=16,
        hidden=16,
        attention_dim=8,
        batch_size=16,
        device="cpu",
        out=out,
        **settings,
    )
    return out


def hapnet(*args: str | Path):  # noqa: ANN201 - click's Result
    return runner.invoke(app, [*map(str, args)])
