"""Aggregate figures of a visit data set (`hapnet data-stats`): sizes, visits per patient, codes
per visit, the code frequency distribution and how much of each next visit the patient's history
already held. No record leaves this module: only counts and shares.

The figures and their exact definitions are in docs/data-and-ontologies.md ("Data statistics");
`hapnet/data/reference/mimic3-aggregate-stats.json` holds MIMIC-III's, in the layout of
`DataStats.to_dict()`. Everything is numpy over whole arrays (no loop per patient or visit).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

import numpy as np

from hapnet.data.loaders import load_visits
from hapnet.data.table import DEFAULT_UNKNOWN
from hapnet.data.visits import VisitData
from hapnet.errors import HapnetError, InputError
from hapnet.ontology.builtins import DEFAULT_ONTOLOGY, load_ontology
from hapnet.ontology.graph import Ontology
from hapnet.utils.arrays import csr_select, range_owners, range_positions

PERCENTILE_METHOD = "lower"  # numpy's: an observed value, never an interpolated one
REFERENCES = {"mimic3": "mimic3-aggregate-stats.json"}  # --compare NAME -> hapnet/data/reference/


@dataclass(frozen=True)
class VisitsPerPatient:
    mean: float
    p50: float
    p90: float
    max: int
    share_2: float  # share of patients with exactly 2 visits
    share_3: float


@dataclass(frozen=True)
class CodesPerVisit:
    mean: float
    p10: float
    p50: float
    p90: float
    max: int


@dataclass(frozen=True)
class CodeFrequency:
    top1_share: float  # share of all code occurrences taken by the most frequent code
    top20_share: float
    top100_share: float
    codes_seen_once: int
    codes_seen_le5: int
    median_count: float  # median occurrences per distinct code


@dataclass(frozen=True)
class NextVisitCodes:
    """Over the codes of visits 2..T of each patient: shares already seen by that patient."""

    in_previous_visit: float
    in_any_earlier_visit: float
    ccs_lvl1_seen_before: float  # the code's level-1 category appeared in an earlier visit
    ccs_lvl2_seen_before: float


@dataclass(frozen=True)
class DataStats:
    """The figures of one data set, nested like the reference JSON (`to_dict`, `from_dict`)."""

    patients_2plus: int
    visits: int
    codes: int  # distinct codes
    codes_per_visit: CodesPerVisit
    visits_per_patient: VisitsPerPatient
    code_frequency: CodeFrequency
    next_visit_codes: NextVisitCodes

    def to_dict(self) -> dict:
        return _rounded(asdict(self))

    @classmethod
    def from_dict(cls, data: dict, source: str = "statistics") -> DataStats:
        """From the nested layout of `to_dict` (a reference JSON); extra keys are ignored."""
        try:
            values = {}
            for f in fields(cls):
                part = data[f.name]
                if isinstance(part, dict):
                    kind = _SECTIONS[f.name]
                    part = kind(**{g.name: part[g.name] for g in fields(kind)})
                values[f.name] = part
            return cls(**values)
        except (KeyError, TypeError) as exc:
            raise InputError(source, f"not a data-stats JSON: missing or bad figure {exc}") from None

    def flat(self) -> dict[str, float]:
        """`{"codes_per_visit.mean": 13.06, ...}` in the order of `to_dict`."""
        out: dict[str, float] = {}
        for key, value in self.to_dict().items():
            if isinstance(value, dict):
                out.update({f"{key}.{name}": v for name, v in value.items()})
            else:
                out[key] = value
        return out


_SECTIONS = {
    "codes_per_visit": CodesPerVisit,
    "visits_per_patient": VisitsPerPatient,
    "code_frequency": CodeFrequency,
    "next_visit_codes": NextVisitCodes,
}


def _rounded(value: object) -> object:
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, 4)
    return value


# ============================================================================ computing
def data_stats(
    data: VisitData | str | Path,
    ontology: Ontology | str = DEFAULT_ONTOLOGY,
    *,
    columns: dict[str, str] | None = None,
    unknown: str = DEFAULT_UNKNOWN,
) -> DataStats:
    """The figures of `data`: a `VisitData` or anything `load_visits` reads (MIMIC folder, long
    CSV, synth folder), loaded on `ontology` (patients with 2+ visits, as training sees them)."""
    if not isinstance(data, VisitData):
        if not isinstance(ontology, Ontology):
            ontology = load_ontology(ontology)
        data = load_visits(data, ontology, columns=columns, unknown=unknown)
    return compute_stats(data.patient_offsets, data.visit_offsets, data.codes, data.ontology)


def compute_stats(
    patient_offsets: np.ndarray, visit_offsets: np.ndarray, codes: np.ndarray, ontology: Ontology
) -> DataStats:
    """The figures from CSR arrays (`VisitData`'s layout; codes distinct within a visit).

    Patients with fewer than 2 visits are left out, as the reference's extract leaves them out.
    """
    patient_offsets = np.asarray(patient_offsets, dtype=np.int64)
    visit_offsets = np.asarray(visit_offsets, dtype=np.int64)
    codes = np.asarray(codes, dtype=np.int64)
    n_visits = np.diff(patient_offsets)
    if (n_visits < 2).any():  # keep the visits (and codes) of patients with 2+ visits only
        visit_index, patient_offsets = csr_select(patient_offsets, np.flatnonzero(n_visits >= 2))
        code_index, visit_offsets = csr_select(visit_offsets, visit_index)
        codes = codes[code_index]
        n_visits = np.diff(patient_offsets)
    if len(n_visits) == 0:
        raise HapnetError("no patient with 2 or more visits: nothing to describe")
    n_codes = np.diff(visit_offsets)
    counts = np.bincount(codes, minlength=len(ontology))
    return DataStats(
        patients_2plus=len(n_visits),
        visits=len(n_codes),
        codes=int(np.count_nonzero(counts)),
        codes_per_visit=CodesPerVisit(
            mean=float(n_codes.mean()),
            p10=_percentile(n_codes, 10),
            p50=_percentile(n_codes, 50),
            p90=_percentile(n_codes, 90),
            max=int(n_codes.max()),
        ),
        visits_per_patient=VisitsPerPatient(
            mean=float(n_visits.mean()),
            p50=_percentile(n_visits, 50),
            p90=_percentile(n_visits, 90),
            max=int(n_visits.max()),
            share_2=float(np.mean(n_visits == 2)),
            share_3=float(np.mean(n_visits == 3)),
        ),
        code_frequency=_code_frequency(counts[counts > 0]),
        next_visit_codes=_next_visit_codes(n_visits, n_codes, codes, ontology),
    )


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q, method=PERCENTILE_METHOD))


def _code_frequency(counts: np.ndarray) -> CodeFrequency:
    ranked = np.sort(counts)[::-1]
    total = ranked.sum()
    return CodeFrequency(
        top1_share=float(ranked[:1].sum() / total),
        top20_share=float(ranked[:20].sum() / total),
        top100_share=float(ranked[:100].sum() / total),
        codes_seen_once=int(np.sum(ranked == 1)),
        codes_seen_le5=int(np.sum(ranked <= 5)),
        median_count=float(np.median(ranked)),
    )


def _next_visit_codes(
    n_visits: np.ndarray, n_codes: np.ndarray, codes: np.ndarray, ontology: Ontology
) -> NextVisitCodes:
    # Per code row: its visit, the visit's rank within the patient, and the patient.
    row_visit = range_owners(n_codes)
    visit_rank = range_positions(n_visits)[row_visit]
    row_patient = range_owners(n_visits)[row_visit]
    later = visit_rank > 0
    size = len(ontology)
    # Keys are unique per (visit, code) since codes are distinct within a visit.
    present = np.sort(row_visit * size + codes)
    wanted = (row_visit[later] - 1) * size + codes[later]
    found = np.minimum(np.searchsorted(present, wanted), len(present) - 1)
    in_previous = present[found] == wanted

    def seen_before(items: np.ndarray) -> np.ndarray:
        """For the later rows: whether `items` (per row) showed in an earlier visit of the patient."""
        key = row_patient * size + items
        order = np.lexsort((visit_rank, key))  # by (patient, item), then visit
        sorted_key = key[order]
        starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
        first_rank = np.empty(len(key), dtype=np.int64)
        first_rank[order] = np.repeat(visit_rank[order][starts], np.diff(np.r_[starts, len(key)]))
        return (first_rank < visit_rank)[later]

    return NextVisitCodes(
        in_previous_visit=float(in_previous.mean()) if later.any() else 0.0,
        in_any_earlier_visit=_mean(seen_before(codes)),
        ccs_lvl1_seen_before=_mean(seen_before(level_ancestor(ontology, 1)[codes])),
        ccs_lvl2_seen_before=_mean(seen_before(level_ancestor(ontology, 2)[codes])),
    )


def _mean(flags: np.ndarray) -> float:
    return float(flags.mean()) if len(flags) else 0.0


def level_ancestor(ontology: Ontology, level: int) -> np.ndarray:
    """[N] each node's category at `level`: its deepest proper ancestor at that level or above,
    following first parents (the node itself for the root). On icd9-ccs, level 1 is CCS level 1
    and level 2 is CCS level 2; codes of a branch with no level-2 node (CCS 18, residual codes)
    get their level-1 category, as a blank "CCS LVL 2" column groups them together."""
    first_parent = ontology.first_parent
    anchor = first_parent.copy()
    # One step up per round: at most depth rounds (a handful), not a loop over nodes.
    for _ in range(ontology.depth):
        above = ontology.levels[anchor] > level
        if not above.any():
            break
        anchor[above] = first_parent[anchor[above]]
    return anchor


# ============================================================================ references
def load_stats(source: str | Path) -> DataStats:
    """A saved `DataStats` JSON (`hapnet data-stats --json`), or a bundled reference by name
    (`mimic3`: MIMIC-III's figures, see hapnet/data/reference/README.md)."""
    if str(source) in REFERENCES:
        path = Path(str(resources.files("hapnet.data").joinpath("reference", REFERENCES[str(source)])))
    else:
        path = Path(source)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        names = ", ".join(REFERENCES)
        raise InputError(path, f"not found (give a data-stats JSON file or one of: {names})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"unreadable statistics JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(path, "not a data-stats JSON: expected an object")
    return DataStats.from_dict(data, str(path))


def relative_differences(stats: DataStats, reference: DataStats) -> dict[str, float | None]:
    """(value - reference) / reference for every figure; None where the reference is 0."""
    ref = reference.flat()
    return {
        key: (value - ref[key]) / abs(ref[key]) if ref[key] else None for key, value in stats.flat().items()
    }
