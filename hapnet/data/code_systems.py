"""ICD-9 or ICD-10 for every diagnosis row of a source that may not say (OMOP without a concept
table, MEDS codes read with a `--code-pattern`), and the code names it hands to `assemble`.

On a namespaced ontology (`icd9-icd10`, `meds:DIR`) a code is `ICD9:4280` / `ICD10:I509`. A row's
system is the source's where it says, else the code's shape (`system_by_shape`), else that of the
other codes of its visit (a visit is coded in one system): the system most of them have. Rows left
undecided (a visit of such codes only, or a tie) are left out, counted in a note and a warning. On a
single-system ontology codes stay bare, and data whose source says they mix both systems (MEDS code
forms, OMOP vocabularies) get the MIMIC-IV warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hapnet.ontology.graph import Ontology
from hapnet.ontology.icd_systems import ICD9, ICD10, UNDECIDED, is_namespaced, system_by_shape, system_id


@dataclass
class SettledCodes:
    code_names: list[str]  # what `assemble` resolves on the ontology
    row_code: np.ndarray  # int64 [R] index into code_names
    keep: np.ndarray | None  # bool [R] rows whose system was settled; None: every row
    notes: list[str] = field(default_factory=list)


def settle_systems(
    names: list[str],
    row_code: np.ndarray,
    row_system: np.ndarray,
    row_visit: np.ndarray,
    ontology: Ontology,
    source: str,
) -> SettledCodes:
    """Code names for `assemble` from bare normalised codes (`names`, `row_code`) and what the
    source says of each row's system (`row_system`: ICD9, ICD10 or UNDECIDED).

    `row_visit` numbers each row's (patient, visit) uniquely, -1 for a row of no visit.
    """
    shape = np.array([system_by_shape(name) for name in names], dtype=np.int8)
    empty = np.array([not name for name in names], dtype=bool)[row_code]
    system = np.where(row_system == UNDECIDED, shape[row_code], row_system).astype(np.int8)
    notes: list[str] = []
    if not is_namespaced(ontology):
        # as the source states them: a shape alone would also call local codes (A12B) ICD-10
        counts = {s: int(np.count_nonzero(row_system == s)) for s in (ICD9, ICD10)}
        if counts[ICD9] and counts[ICD10]:
            message = (
                f"{source}: the data mix ICD-9 and ICD-10 codes (ICD-9: {counts[ICD9]:,} rows, ICD-10: "
                f"{counts[ICD10]:,} rows) but ontology {ontology.name} is single-system: codes of the other "
                "system will be unknown or mapped wrongly; use --ontology icd9-icd10"
            )
            warnings.warn(message, stacklevel=4)
            notes.append(message)
        return SettledCodes(list(names), row_code, None, notes)

    open_rows = (system == UNDECIDED) & ~empty
    keep = None
    if open_rows.any():
        visit_ids = pd.factorize(row_visit)[0]
        in_visit = row_visit >= 0
        num = int(visit_ids.max(initial=-1)) + 1
        icd9 = np.bincount(visit_ids[in_visit & (system == ICD9)], minlength=num)
        icd10 = np.bincount(visit_ids[in_visit & (system == ICD10)], minlength=num)
        rows = np.flatnonzero(open_rows & in_visit)
        vote = np.where(icd9[visit_ids[rows]] > icd10[visit_ids[rows]], ICD9, UNDECIDED)
        vote = np.where(icd10[visit_ids[rows]] > icd9[visit_ids[rows]], ICD10, vote)
        system[rows] = vote
        left = (system == UNDECIDED) & ~empty
        examples = ", ".join(repr(names[c]) for c in pd.unique(row_code[open_rows])[:3])
        message = (
            f"{source}: {int(open_rows.sum()):,} diagnosis rows have codes that could be ICD-9 or ICD-10 "
            f"(such as {examples}): {int(open_rows.sum() - left.sum()):,} took the system of the other "
            f"codes of their visit, {int(left.sum()):,} were left out (no other code, or as many of each)"
        )
        notes.append(message)
        if left.any():
            warnings.warn(message, stacklevel=4)
            keep = ~left
    # One name per (code, system): an undecided code may be ICD-9 in one visit, ICD-10 in another.
    pair_ids, pairs = pd.factorize(row_code * 16 + system)
    code_names = [
        "" if not names[pair // 16] else system_id(int(pair % 16), names[pair // 16])
        for pair in pairs.tolist()
    ]
    return SettledCodes(code_names, pair_ids.astype(np.int64), keep, notes)
