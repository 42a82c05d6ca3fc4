"""The synthetic EHR generator behind `hapnet synth`: realistic visit sequences on any ontology.

Not noise: the data has the structure that makes the hierarchy worth using.
- A population code distribution: categories (the parents of the observable codes) with
  Zipf-Mandelbrot prevalence, codes Zipf-like within a category (only the first
  `codes_per_category` in use, as in real data most ICD codes are never coded). Which categories
  and codes are common is drawn once from `population_seed`; the seed of a call draws patients.
- Latent conditions at category level: a few at the first visit, new ones at every later visit
  (a share of them a progression to a category related to one the patient had: a sibling under
  the same parent, or a cousin when the category has no sibling). A shown condition writes its
  code and a few more of its category, so rare codes co-occur with frequent siblings.
- Chronic conditions recur, with the same code or another of their category (a complication, a
  more specific diagnosis); acute ones rarely come back.
- Comorbidities: frequent codes that stay with a patient and show in most visits.
- Rare codes: any code of a category, uniformly: the long tail of codes seen once or twice.
- Visit sizes come first (1 + negative binomial, at most `max_codes`): a visit keeps a random
  subset of its condition codes, or is filled with background codes from the population.
- 2+ visits per patient: negative binomial, plus a few frequent visitors with a long tail.

Everything is numpy over whole blocks of patients (no Python loop per patient, visit or code).
A block of `BLOCK_PATIENTS` patients draws from its own seed, so the output for a seed is the
same however it is consumed (`generate` builds a DataFrame, `write_synth` streams to disk).
The defaults are calibrated (with `hapnet.data.synth_fit`) so that 7,500 patients on icd9-ccs with
seed 0 give every figure of `hapnet data-stats` within 10% of MIMIC-III's
(hapnet/data/reference/mimic3-aggregate-stats.json): visits per patient, codes per visit, the
code frequency distribution and how much of each next visit the patient had before.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from hapnet.errors import HapnetError
from hapnet.ontology.builtins import DEFAULT_ONTOLOGY, load_ontology
from hapnet.ontology.graph import Ontology
from hapnet.utils.arrays import range_owners, range_positions, sorted_unique
from hapnet.utils.cache import cache_dir
from hapnet.utils.paths import check_output_location
from hapnet.utils.textio import atomic_path

DEFAULT_PATIENTS = 7_500
BLOCK_PATIENTS = 50_000  # patients per independently seeded block (part of the output's definition)
DATA_FILE = "visits.csv.gz"
MANIFEST = "synth.json"
FORMAT_VERSION = 1
GENERATOR_VERSION = 3  # bumped whenever the same settings and seed give other data
_EPOCH_DAY = np.datetime64("2000-01-01", "D")  # synthetic dates are days after this
_EPOCH_DAY_UNIX = int((_EPOCH_DAY - np.datetime64("1970-01-01", "D")).astype(np.int64))


@dataclass(frozen=True)
class SynthSettings:
    """Generator knobs; the defaults give MIMIC-III's figures on icd9-ccs (every figure of
    `hapnet data-stats` within 10% of hapnet/data/reference/mimic3-aggregate-stats.json)."""

    # The population's code distribution: category prevalence x frequency within the category,
    # ranked at random by population_seed (the seed of `generate` only draws patients from it).
    population_seed: int = 0
    category_zipf: float = 1.32  # prevalence of categories by (random) rank: (rank+1+offset)^-a
    category_offset: float = 18.0  # Zipf-Mandelbrot offset: flattens the head of the categories
    code_zipf: float = 2.12  # frequency of codes within a category by (random) rank
    codes_per_category: int = 50  # codes in use per category (the rest never occur); 0 = all
    # Visits per patient: 2 + negative binomial, and a few frequent visitors with a long tail.
    extra_visits_mean: float = 0.42
    extra_visits_shape: float = 0.7  # smaller = more patients with 4+ visits
    frequent_visitors: float = 0.032  # share of patients with many visits
    frequent_visits_mean: float = 8.8  # extra visits of a frequent visitor (geometric)
    max_visits: int = 42
    # Codes per visit: 1 + negative binomial, at most max_codes (a hospital's coding form).
    codes_per_visit_mean: float = 13.0
    codes_per_visit_shape: float = 5.94  # larger = visit sizes closer to the mean
    min_codes: int = 1
    max_codes: int = 39
    # Latent conditions at category level.
    conditions_mean: float = 3.19  # conditions at the first visit (1 + Poisson)
    new_conditions: float = 1.6  # conditions starting at each later visit (Poisson)
    progression: float = 0.68  # share of new conditions related to an earlier one (same parent)
    successor_share: float = 0.5  # share of progressions to the category's fixed successor
    condition_codes: float = 1.5  # codes of the category a shown condition adds (Poisson, + 1)
    chronic_fraction: float = 0.5
    chronic_presence: float = 0.948  # chance a chronic condition shows in a later visit
    chronic_same_code: float = 0.647  # chance it shows as its own code (else another of its category)
    acute_presence: float = 0.1  # chance an acute condition shows again after its onset
    # Comorbidities: frequent codes that stay with a patient (hypertension, diabetes).
    comorbidities_mean: float = 2.83  # per patient (Poisson)
    comorbidity_presence: float = 0.824  # chance a comorbidity shows in a visit
    comorbidity_sharpness: float = 2.2  # > 1 concentrates comorbidities on frequent codes
    rare_codes: float = 0.16  # per visit (Poisson): any code of a category, the long tail
    mean_days_between_visits: float = 200.0


# ============================================================================ the code universe
@dataclass
class _Universe:
    """What every patient shares: the observable codes, their categories and the weights."""

    leaf_ids: np.ndarray  # [L] str, the codes written out (ontology ids)
    leaf_nodes: np.ndarray  # [L] ontology node indices
    cat_offsets: np.ndarray  # [K+1] leaves of category k: cat_offsets[k]:cat_offsets[k+1]
    cat_cumulative: np.ndarray  # [L] k + cumulative within-category weight (segment searchsorted)
    cat_cumulative_weight: np.ndarray  # [K] cumulative category prevalence, normalised
    global_cumulative: np.ndarray  # [L] cumulative population frequency of each code
    comorbid_cumulative: np.ndarray  # [L] the same, sharpened toward frequent codes
    successor: np.ndarray  # [K] the fixed successor category
    relative_offsets: np.ndarray  # [G+1] categories sharing a parent (or grandparent)
    relatives: np.ndarray  # [K] categories grouped by relative group
    group_of: np.ndarray  # [K] relative group of each category

    @classmethod
    def build(cls, ontology: Ontology, rng: np.random.Generator, settings: SynthSettings) -> _Universe:
        leaves = np.flatnonzero(ontology.is_leaf)
        if len(leaves) == 0:
            raise HapnetError(f"ontology {ontology.name} has no leaf codes to generate")
        first_parent = ontology.first_parent  # a DAG node with several parents uses its first
        leaf_category = first_parent[leaves]
        categories, cat_of_leaf = np.unique(leaf_category, return_inverse=True)
        num_categories = len(categories)

        # Leaves sorted by category, in random rank order within it; weight (rank+1)^-code_zipf.
        order = np.lexsort((rng.random(len(leaves)), cat_of_leaf))
        leaves, cat_of_leaf = leaves[order], cat_of_leaf[order]
        cat_sizes = np.bincount(cat_of_leaf, minlength=num_categories)
        cat_offsets = np.concatenate([[0], np.cumsum(cat_sizes)])
        rank = np.arange(len(leaves)) - cat_offsets[cat_of_leaf]
        within = (rank + 1.0) ** -settings.code_zipf
        if settings.codes_per_category > 0:
            within[rank >= settings.codes_per_category] = 0.0
        within_total = np.bincount(cat_of_leaf, weights=within, minlength=num_categories)
        within_norm = within / within_total[cat_of_leaf]
        running = np.cumsum(within_norm)
        before = (running - within_norm)[cat_offsets[:-1]]  # running total where each category starts
        cat_cumulative = cat_of_leaf + np.minimum(running - before[cat_of_leaf], 1.0)
        cat_cumulative[cat_offsets[1:] - 1] = np.arange(1, num_categories + 1)  # exact segment ends

        cat_rank = rng.permutation(num_categories)
        cat_weight = (cat_rank + 1.0 + settings.category_offset) ** -settings.category_zipf
        cat_weight /= cat_weight.sum()
        # Conditions draw a category, then a code in it: the same distribution as background
        # codes, so every mechanism below keeps the population's code frequencies.
        global_weight = cat_weight[cat_of_leaf] * within_norm
        global_cumulative = np.cumsum(global_weight)
        global_cumulative /= global_cumulative[-1]
        comorbid_cumulative = np.cumsum(global_weight**settings.comorbidity_sharpness)
        comorbid_cumulative /= comorbid_cumulative[-1]

        # Relatives: categories under the same parent; an only child looks one level up (cousins).
        cat_parent = first_parent[categories]
        parent_group = np.unique(cat_parent, return_inverse=True)[1]
        siblings = np.bincount(parent_group)[parent_group]  # categories under the same parent
        group_key = np.where(siblings > 1, cat_parent, first_parent[cat_parent])
        groups, group_of = np.unique(group_key, return_inverse=True)
        relatives = np.argsort(group_of, kind="stable")
        relative_offsets = np.concatenate([[0], np.cumsum(np.bincount(group_of, minlength=len(groups)))])
        successor = _pick_relative(rng, np.arange(num_categories), group_of, relative_offsets, relatives)
        return cls(
            leaf_ids=np.asarray([ontology.ids[i] for i in leaves], dtype=object),
            leaf_nodes=leaves,
            cat_offsets=cat_offsets,
            cat_cumulative=cat_cumulative,
            cat_cumulative_weight=np.cumsum(cat_weight),
            global_cumulative=global_cumulative,
            comorbid_cumulative=comorbid_cumulative,
            successor=successor,
            relative_offsets=relative_offsets,
            relatives=relatives,
            group_of=group_of,
        )

    @property
    def num_categories(self) -> int:
        return len(self.cat_offsets) - 1

    def sample_categories(self, rng: np.random.Generator, n: int) -> np.ndarray:
        found = np.searchsorted(self.cat_cumulative_weight, rng.random(n) * self.cat_cumulative_weight[-1])
        return np.minimum(found, self.num_categories - 1)

    def sample_in_category(self, rng: np.random.Generator, categories: np.ndarray) -> np.ndarray:
        """One leaf (index into leaf_ids) per entry of `categories`, Zipf-like within each."""
        found = np.searchsorted(self.cat_cumulative, categories + rng.random(len(categories)), side="right")
        return np.clip(found, self.cat_offsets[categories], self.cat_offsets[categories + 1] - 1)

    def sample_background(self, rng: np.random.Generator, n: int) -> np.ndarray:
        found = np.searchsorted(self.global_cumulative, rng.random(n), side="right")
        return np.minimum(found, len(self.leaf_ids) - 1)

    def sample_comorbid(self, rng: np.random.Generator, n: int) -> np.ndarray:
        found = np.searchsorted(self.comorbid_cumulative, rng.random(n), side="right")
        return np.minimum(found, len(self.leaf_ids) - 1)


def _pick_relative(
    rng: np.random.Generator,
    categories: np.ndarray,
    group_of: np.ndarray,
    offsets: np.ndarray,
    members: np.ndarray,
) -> np.ndarray:
    """A random category of the same relative group as each given category."""
    group = group_of[categories]
    size = offsets[group + 1] - offsets[group]
    return members[offsets[group] + (rng.random(len(categories)) * size).astype(np.int64)]


def _ranges(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For counts [2, 3]: owner [0 0 1 1 1] and position [0 1 0 1 2] (no Python loop)."""
    return range_owners(counts), range_positions(counts)


def _distinct(row_visit: np.ndarray, row_code: np.ndarray, num_codes: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop repeated (visit, code) rows; the result is sorted by visit, then code."""
    pairs = sorted_unique(row_visit * num_codes + row_code)
    return pairs // num_codes, pairs % num_codes


# ============================================================================ one block
@dataclass
class SynthBlock:
    """Generated rows of one block of patients, in file order (patient, visit, then code)."""

    patient: np.ndarray  # int64, 1-based global patient number
    visit: np.ndarray  # int64, 1-based global visit number
    day: np.ndarray  # int64 days since 2000-01-01
    code: np.ndarray  # int64 index into the universe's leaf_ids
    num_patients: int
    num_visits: int


def draw_visit_counts(rng: np.random.Generator, n: int, s: SynthSettings) -> np.ndarray:
    """Visits of `n` patients: 2 + negative binomial (gamma-Poisson); a few frequent visitors add
    a geometric number of visits, which makes the long tail (a handful with 20-40 visits)."""
    extra = rng.poisson(rng.gamma(s.extra_visits_shape, s.extra_visits_mean / s.extra_visits_shape, n))
    frequent = rng.random(n) < s.frequent_visitors
    extra[frequent] += rng.geometric(1.0 / (1.0 + s.frequent_visits_mean), int(frequent.sum())) - 1
    return np.minimum(2 + extra, s.max_visits)


def draw_visit_sizes(rng: np.random.Generator, n: int, s: SynthSettings) -> np.ndarray:
    """Codes in each of `n` visits: 1 + negative binomial, within min_codes..max_codes."""
    rate = rng.gamma(s.codes_per_visit_shape, (s.codes_per_visit_mean - 1) / s.codes_per_visit_shape, n)
    return np.clip(1 + rng.poisson(rate), s.min_codes, s.max_codes)


def _generate_block(
    universe: _Universe, rng: np.random.Generator, num_patients: int, settings: SynthSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(visit_patient, visit_day, row_visit, row_code) for one block, visits in time order."""
    s = settings
    n_visits = draw_visit_counts(rng, num_patients, s)
    visit_offsets = np.concatenate([[0], np.cumsum(n_visits)])
    visit_patient, visit_step = _ranges(n_visits)
    num_visits = len(visit_patient)

    # Latent conditions at category level: some at the first visit, new ones at later visits
    # (a share of them related to one of the first: a progression to a sibling category).
    n_first = 1 + rng.poisson(s.conditions_mean - 1, num_patients)
    first_patient, _ = _ranges(n_first)
    first_category = universe.sample_categories(rng, len(first_patient))
    later_visits = np.flatnonzero(visit_step > 0)
    n_new = rng.poisson(s.new_conditions, len(later_visits))
    new_visit = np.repeat(later_visits, n_new)
    new_patient = visit_patient[new_visit]
    new_category = universe.sample_categories(rng, len(new_visit))
    related = rng.random(len(new_visit)) < s.progression
    first_start = np.concatenate([[0], np.cumsum(n_first)])
    owner = new_patient[related]  # relates to one of its patient's first conditions, at random
    origin = first_category[first_start[owner] + (rng.random(len(owner)) * n_first[owner]).astype(np.int64)]
    to_successor = rng.random(len(origin)) < s.successor_share
    relative = _pick_relative(rng, origin, universe.group_of, universe.relative_offsets, universe.relatives)
    new_category[related] = np.where(to_successor, universe.successor[origin], relative)
    cond_patient = np.concatenate([first_patient, new_patient])
    cond_category = np.concatenate([first_category, new_category])
    cond_onset = np.concatenate([np.zeros(len(first_patient), dtype=np.int64), visit_step[new_visit]])
    num_conditions = len(cond_patient)
    chronic = rng.random(num_conditions) < s.chronic_fraction
    own_code = universe.sample_in_category(rng, cond_category)  # the code a condition starts with

    # (condition, visit) pairs from the onset on; the onset visit always shows the condition.
    pair_cond, step = _ranges(n_visits[cond_patient] - cond_onset)
    presence = np.where(chronic[pair_cond], s.chronic_presence, s.acute_presence)
    shown = (step == 0) | (rng.random(len(pair_cond)) < presence)
    pair_cond, step = pair_cond[shown], step[shown]
    pair_visit = visit_offsets[cond_patient[pair_cond]] + cond_onset[pair_cond] + step
    # A shown condition writes one code (its own at onset; later, a chronic one keeps its code
    # with chronic_same_code, else another of its category: a complication, a more specific
    # diagnosis) and a few more codes of its category.
    head_code = own_code[pair_cond]
    varied = (step > 0) & (rng.random(len(pair_cond)) >= s.chronic_same_code)
    head_code[varied] = universe.sample_in_category(rng, cond_category[pair_cond[varied]])
    draw_pair, _ = _ranges(rng.poisson(s.condition_codes, len(pair_cond)))
    drawn_codes = universe.sample_in_category(rng, cond_category[pair_cond[draw_pair]])

    # Comorbidities: frequent codes of the population that stay with a patient (hypertension,
    # diabetes...) and show in most of their visits.
    comorbid_patient, _ = _ranges(rng.poisson(s.comorbidities_mean, num_patients))
    comorbid_code = universe.sample_comorbid(rng, len(comorbid_patient))
    comorbid_pair, comorbid_step = _ranges(n_visits[comorbid_patient])
    shown = rng.random(len(comorbid_pair)) < s.comorbidity_presence
    comorbid_pair = comorbid_pair[shown]
    comorbid_visit = visit_offsets[comorbid_patient[comorbid_pair]] + comorbid_step[shown]

    # Rare codes: any code of a category, uniformly (codes a population shows once or twice).
    rare_visit, _ = _ranges(rng.poisson(s.rare_codes, num_visits))
    rare_category = universe.sample_categories(rng, len(rare_visit))
    low, high = universe.cat_offsets[rare_category], universe.cat_offsets[rare_category + 1]
    rare_code = low + (rng.random(len(rare_visit)) * (high - low)).astype(np.int64)

    row_visit = np.concatenate([pair_visit, pair_visit[draw_pair], comorbid_visit, rare_visit])
    row_code = np.concatenate([head_code, drawn_codes, comorbid_code[comorbid_pair], rare_code])
    num_leaves = len(universe.leaf_ids)
    row_visit, row_code = _distinct(row_visit, row_code, num_leaves)

    # The visit's size comes first (1 + negative binomial, at most max_codes): a visit with more
    # condition codes than that keeps a random subset, one with fewer gets background codes
    # (incidental diagnoses from the population) to fill it.
    size = draw_visit_sizes(rng, num_visits, s)
    for _ in range(8):
        short = size - np.bincount(row_visit, minlength=num_visits)
        short_visits = np.flatnonzero(short > 0)
        if len(short_visits) == 0:
            break
        top_up_visit = np.repeat(short_visits, short[short_visits])
        row_visit = np.concatenate([row_visit, top_up_visit])
        row_code = np.concatenate([row_code, universe.sample_background(rng, len(top_up_visit))])
        row_visit, row_code = _distinct(row_visit, row_code, num_leaves)
    # At most `size` codes per visit (a random choice), in random order within the visit.
    order = np.lexsort((rng.random(len(row_visit)), row_visit))
    row_visit, row_code = row_visit[order], row_code[order]
    position = range_positions(np.bincount(row_visit, minlength=num_visits))
    keep = position < size[row_visit]
    row_visit, row_code = row_visit[keep], row_code[keep]

    # Dates: a start day per patient, then gaps of 1 + exponential days.
    start = rng.integers(0, 365 * 15, num_patients)
    gaps = 1 + rng.exponential(s.mean_days_between_visits, num_visits).astype(np.int64)
    gaps[visit_offsets[:-1]] = 0
    cumulative = np.cumsum(gaps)
    visit_day = start[visit_patient] + cumulative - cumulative[visit_offsets[:-1]][visit_patient]
    return visit_patient, visit_day, row_visit, row_code


def iter_blocks(
    ontology: Ontology, patients: int, seed: int = 0, settings: SynthSettings | None = None
) -> Iterator[tuple[_Universe, SynthBlock]]:
    """Generate `patients` patients block by block (bounded memory for millions of patients)."""
    settings = settings or SynthSettings()
    _check(patients, settings)
    # The population (which codes are common) is the settings'; the seed draws its patients.
    universe = _Universe.build(ontology, np.random.default_rng([settings.population_seed, 0]), settings)
    first_patient, first_visit = 0, 0
    for block, start in enumerate(range(0, patients, BLOCK_PATIENTS)):
        count = min(BLOCK_PATIENTS, patients - start)
        rng = np.random.default_rng([seed, 1, block])
        visit_patient, visit_day, row_visit, row_code = _generate_block(universe, rng, count, settings)
        yield (
            universe,
            SynthBlock(
                patient=first_patient + 1 + visit_patient[row_visit],
                visit=first_visit + 1 + row_visit,
                day=visit_day[row_visit],
                code=row_code,
                num_patients=count,
                num_visits=len(visit_patient),
            ),
        )
        first_patient += count
        first_visit += len(visit_patient)


def _check(patients: int, settings: SynthSettings) -> None:
    if patients < 1:
        raise HapnetError(f"--patients must be at least 1, got {patients}")
    if not 1 <= settings.min_codes <= settings.max_codes:
        raise HapnetError(
            "codes per visit: need 1 <= min_codes <= max_codes, "
            f"got {settings.min_codes}..{settings.max_codes}"
        )
    if settings.max_visits < 2:
        raise HapnetError("max_visits must be at least 2")
    if settings.conditions_mean < 1:
        raise HapnetError("conditions_mean must be at least 1 (every patient has a condition)")


def _resolve_ontology(ontology: Ontology | str) -> Ontology:
    if isinstance(ontology, Ontology):
        return ontology
    return load_ontology(ontology)


# ============================================================================ public API
def generate(
    ontology: Ontology | str = DEFAULT_ONTOLOGY,
    patients: int = DEFAULT_PATIENTS,
    seed: int = 0,
    settings: SynthSettings | None = None,
) -> pd.DataFrame:
    """Synthetic visits as a long DataFrame: patient, visit (ints), time (datetime64), code (categorical).

    Deterministic for a seed. Rows are grouped by patient, then visit in time order.
    """
    ontology = _resolve_ontology(ontology)
    parts, leaf_ids = [], None
    for universe, block in iter_blocks(ontology, patients, seed, settings):
        leaf_ids = universe.leaf_ids
        parts.append(block)
    codes = np.concatenate([b.code for b in parts])
    return pd.DataFrame(
        {
            "patient": np.concatenate([b.patient for b in parts]),
            "visit": np.concatenate([b.visit for b in parts]),
            "time": (_EPOCH_DAY + np.concatenate([b.day for b in parts])).astype("datetime64[s]"),
            "code": pd.Categorical.from_codes(codes, categories=pd.Index(leaf_ids, dtype=object)),
        }
    )


def generate_visit_arrays(
    ontology: Ontology | str = DEFAULT_ONTOLOGY,
    patients: int = DEFAULT_PATIENTS,
    seed: int = 0,
    settings: SynthSettings | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same data as `generate`, as `VisitData`'s CSR arrays: (patient_offsets, visit_offsets,
    codes as ontology node indices). What the settings fit measures, without a DataFrame."""
    ontology = _resolve_ontology(ontology)
    visit_sizes, visits_of_patient, nodes = [], [], []
    for universe, block in iter_blocks(ontology, patients, seed, settings):
        first_row = np.flatnonzero(np.r_[True, block.visit[1:] != block.visit[:-1]])
        visit_sizes.append(np.diff(np.r_[first_row, len(block.visit)]))
        owner = block.patient[first_row] - block.patient[0]
        visits_of_patient.append(np.bincount(owner, minlength=block.num_patients))
        nodes.append(universe.leaf_nodes[block.code])
    patient_offsets = np.concatenate([[0], np.cumsum(np.concatenate(visits_of_patient))])
    visit_offsets = np.concatenate([[0], np.cumsum(np.concatenate(visit_sizes))])
    return patient_offsets, visit_offsets, np.concatenate(nodes)


def write_synth(
    out_dir: str | Path,
    ontology: Ontology | str = DEFAULT_ONTOLOGY,
    patients: int = DEFAULT_PATIENTS,
    seed: int = 0,
    *,
    settings: SynthSettings | None = None,
    force: bool = False,
    extra: dict | None = None,
) -> Path:
    """Write `visits.csv.gz` (patient,visit,time,code) and `synth.json` to a new folder, atomically.

    Refuses an existing `out_dir` unless `force`. Returns the folder; `synth.json` holds the
    settings and the figures (patients, visits, rows, distinct codes), and `extra` (what
    `--like` fitted the settings to).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise HapnetError(f"{out_dir}: already exists (use --force to overwrite)")
    check_output_location(out_dir, force=force, kind="folder")
    settings = settings or SynthSettings()
    _check(patients, settings)
    ontology = _resolve_ontology(ontology)
    rows = visits = 0
    seen = None
    with atomic_path(out_dir, overwrite=force) as tmp:
        tmp.mkdir()
        with gzip.open(tmp / DATA_FILE, "wb", compresslevel=4) as handle:
            handle.write(b"patient,visit,time,code\n")
            for universe, block in iter_blocks(ontology, patients, seed, settings):
                if seen is None:
                    seen = np.zeros(len(universe.leaf_ids), dtype=bool)
                    leaf_ids = pa.array(universe.leaf_ids, pa.string())
                    # Codes are written bare unless an id holds a CSV special character.
                    special = any(ch in i for i in universe.leaf_ids for ch in ',"\r\n')
                    quoting = "needed" if special else "none"
                table = pa.table(
                    {
                        "patient": block.patient,
                        "visit": block.visit,
                        "time": pa.array((block.day + _EPOCH_DAY_UNIX).astype(np.int32), pa.date32()),
                        "code": leaf_ids.take(pa.array(block.code)),
                    }
                )
                sink = pa.BufferOutputStream()
                pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False, quoting_style=quoting))
                handle.write(sink.getvalue())
                rows += len(block.code)
                visits += block.num_visits
                seen[block.code] = True
        manifest = {
            "format": "hapnet-synth",
            "version": FORMAT_VERSION,
            "generator": GENERATOR_VERSION,
            "file": DATA_FILE,
            "columns": ["patient", "visit", "time", "code"],
            "ontology": ontology.name,
            "patients": patients,
            "seed": seed,
            "visits": visits,
            "rows": rows,
            "distinct_codes": int(seen.sum()),
            "codes_per_visit": round(rows / visits, 3),
            "settings": asdict(settings),
            **(extra or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return out_dir


def default_data_path(ontology_source: str, patients: int, seed: int = 0) -> Path:
    """The built-in synthetic data set, generated once into the cache folder."""
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(ontology_source).name)
    # The generator version is in the name: a newer hapnet never trains on an older cached set.
    path = cache_dir() / f"synth-v{GENERATOR_VERSION}-{safe}-{patients}-seed{seed}"
    if not path.exists():
        write_synth(path, ontology=ontology_source, patients=patients, seed=seed)
    return path
