"""The synthetic EHR generator behind `hapnet synth`: realistic visit sequences on any ontology.

Not noise: the data has the structure that makes the hierarchy worth using.
- Latent conditions live at CATEGORY level (the parent of the observable codes), with Zipf-like
  prevalence. A condition emits codes from its category, Zipf-like within the category (only the
  first `codes_per_category` codes of a category are in use, as in real data most ICD codes are
  never coded), so rare codes co-occur with their frequent siblings and the hierarchy carries
  signal for them.
- Chronic conditions recur across visits, sometimes with the same specific code, more often with
  another code of their category (a complication, a more specific diagnosis): the category is
  what persists. Acute ones come and go.
- Progression: a condition may lead, at a later visit, to a related category (a sibling under
  the same parent, or a cousin when the category has no sibling): half the time the category's
  fixed successor, otherwise a random relative.
- Comorbidities: frequent codes that stay with a patient and show in most visits.
- Background codes: incidental diagnoses from the population distribution. Comorbidities and
  background draw from it sharpened toward frequent codes, so the long tail comes mostly from
  conditions: a rare code usually belongs to a category the patient has.
- 2+ visits per patient (negative binomial: most have 2-3, a few 10 or more), 5-30 codes a visit.

Everything is numpy over whole blocks of patients (no Python loop per patient, visit or code).
A block of `BLOCK_PATIENTS` patients draws from its own seed, so the output for a seed is the
same however it is consumed (`generate` builds a DataFrame, `write_synth` streams to disk).
Defaults are calibrated so that 7,500 patients on icd9-ccs look like MIMIC-III: about 20k visits,
4.9k distinct codes and 13 codes per visit; and, as in the MIMIC-III demo, most next-visit codes
of the frequent groups were seen before by the patient (~70%), while for the rarest group it is
about a quarter exact repeats, a third siblings of earlier codes and the rest new.
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
from hapnet.utils.textio import atomic_path

DEFAULT_PATIENTS = 7_500
BLOCK_PATIENTS = 50_000  # patients per independently seeded block (part of the output's definition)
DATA_FILE = "visits.csv.gz"
MANIFEST = "synth.json"
FORMAT_VERSION = 1
GENERATOR_VERSION = 2  # bumped whenever the same settings and seed give other data
_EPOCH_DAY = np.datetime64("2000-01-01", "D")  # synthetic dates are days after this
_EPOCH_DAY_UNIX = int((_EPOCH_DAY - np.datetime64("1970-01-01", "D")).astype(np.int64))


@dataclass(frozen=True)
class SynthSettings:
    """Generator knobs; the defaults give MIMIC-III's shape on icd9-ccs."""

    category_zipf: float = 1.2  # prevalence of categories by (random) rank: (rank+1+offset)^-a
    category_offset: float = 40.0  # Zipf-Mandelbrot offset: flattens the head of the categories
    code_zipf: float = 1.0  # frequency of codes within a category by (random) rank
    codes_per_category: int = 16  # codes in use per category (the rest never occur); 0 = all
    extra_visits_mean: float = 0.66  # visits per patient = 2 + negative binomial with this mean
    extra_visits_shape: float = 0.25  # smaller = heavier tail of frequent visitors
    max_visits: int = 40
    conditions_mean: float = 4.0  # latent conditions per patient at the start (1 + Poisson)
    chronic_fraction: float = 0.5
    onset_at_first_visit: float = 0.6  # else the condition starts at a random later visit
    chronic_presence: float = 0.85  # chance a chronic condition shows in a later visit
    chronic_same_code: float = 0.3  # chance it shows as its own code (else another of its category)
    acute_presence: float = 0.25  # chance an acute condition shows again after its onset
    chronic_extra_codes: float = 1.5  # Poisson codes from the category besides the chronic code
    acute_codes: float = 2.5  # Poisson codes from the category besides the first one
    progression: float = 0.35  # chance a condition leads to a related category later
    successor_share: float = 0.5  # share of progressions to the category's fixed successor
    comorbidities_mean: float = 5.5  # frequent codes that stay with a patient (Poisson)
    comorbidity_presence: float = 0.92  # chance a comorbidity shows in a visit
    background_codes: float = 2.0  # incidental codes per visit from the population (Poisson)
    background_sharpness: float = 1.7  # > 1 concentrates background codes on frequent ones
    min_codes: int = 5
    max_codes: int = 30
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
    successor: np.ndarray  # [K] the fixed successor category
    relative_offsets: np.ndarray  # [G+1] categories sharing a parent (or grandparent)
    relatives: np.ndarray  # [K] categories grouped by relative group
    group_of: np.ndarray  # [K] relative group of each category

    @classmethod
    def build(cls, ontology: Ontology, rng: np.random.Generator, settings: SynthSettings) -> _Universe:
        leaves = np.flatnonzero(ontology.is_leaf)
        if len(leaves) == 0:
            raise HapnetError(f"ontology {ontology.name} has no leaf codes to generate")
        # First parent of every node (a DAG node with several parents uses its first); root if none.
        first_parent = np.zeros(len(ontology), dtype=np.int64)
        first_parent[ontology.edge_child[::-1]] = ontology.edge_parent[::-1]
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
        global_weight = (cat_weight[cat_of_leaf] * within_norm) ** settings.background_sharpness
        global_cumulative = np.cumsum(global_weight)
        global_cumulative /= global_cumulative[-1]

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


def _generate_block(
    universe: _Universe, rng: np.random.Generator, num_patients: int, settings: SynthSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(visit_patient, visit_day, row_visit, row_code) for one block, visits in time order."""
    s = settings
    # Visits per patient: 2 + negative binomial (gamma-Poisson), a heavy tail of frequent visitors.
    rate = rng.gamma(s.extra_visits_shape, s.extra_visits_mean / s.extra_visits_shape, num_patients)
    n_visits = np.minimum(2 + rng.poisson(rate), s.max_visits)
    visit_offsets = np.concatenate([[0], np.cumsum(n_visits)])
    visit_patient, _ = _ranges(n_visits)
    num_visits = len(visit_patient)

    # Latent conditions at category level, each with an onset visit.
    n_conditions = 1 + rng.poisson(s.conditions_mean - 1, num_patients)
    cond_patient, _ = _ranges(n_conditions)
    cond_category = universe.sample_categories(rng, len(cond_patient))
    last_visit = n_visits[cond_patient] - 1
    late = rng.random(len(cond_patient)) >= s.onset_at_first_visit
    cond_onset = np.where(late, (rng.random(len(cond_patient)) * (last_visit + 1)).astype(np.int64), 0)

    # Progression: a condition leads to a related category at a later visit.
    progresses = (rng.random(len(cond_patient)) < s.progression) & (cond_onset < last_visit)
    source = np.flatnonzero(progresses)
    to_successor = rng.random(len(source)) < s.successor_share
    related = _pick_relative(
        rng, cond_category[source], universe.group_of, universe.relative_offsets, universe.relatives
    )
    new_category = np.where(to_successor, universe.successor[cond_category[source]], related)
    gap = last_visit[source] - cond_onset[source]
    new_onset = cond_onset[source] + 1 + (rng.random(len(source)) * gap).astype(np.int64)
    cond_patient = np.concatenate([cond_patient, cond_patient[source]])
    cond_category = np.concatenate([cond_category, new_category])
    cond_onset = np.concatenate([cond_onset, new_onset])
    num_conditions = len(cond_patient)
    chronic = rng.random(num_conditions) < s.chronic_fraction
    chronic_code = universe.sample_in_category(rng, cond_category)  # the code that recurs

    # (condition, visit) pairs from the onset on; the onset visit always shows the condition.
    active_visits = n_visits[cond_patient] - cond_onset
    pair_cond, step = _ranges(active_visits)
    presence = np.where(chronic[pair_cond], s.chronic_presence, s.acute_presence)
    shown = (step == 0) | (rng.random(len(pair_cond)) < presence)
    pair_cond, step = pair_cond[shown], step[shown]
    pair_visit = visit_offsets[cond_patient[pair_cond]] + cond_onset[pair_cond] + step
    pair_chronic = chronic[pair_cond]

    # Codes of each shown condition: chronic -> its own code + a few from the category;
    # acute -> 1 + a few from the category.
    extra = rng.poisson(np.where(pair_chronic, s.chronic_extra_codes, s.acute_codes))
    drawn = extra + (~pair_chronic)
    draw_pair, _ = _ranges(drawn)
    drawn_codes = universe.sample_in_category(rng, cond_category[pair_cond[draw_pair]])
    # A chronic condition shows its own code, or (a complication, a more specific diagnosis)
    # another code of its category: the category, not the code, is what persists.
    chronic_pairs = np.flatnonzero(pair_chronic)
    varied = rng.random(len(chronic_pairs)) >= s.chronic_same_code
    chronic_shown = chronic_code[pair_cond[chronic_pairs]]
    chronic_shown[varied] = universe.sample_in_category(rng, cond_category[pair_cond[chronic_pairs[varied]]])

    # Comorbidities: frequent codes of the population that stay with a patient (hypertension,
    # diabetes...) and show in most of their visits.
    n_comorbid = rng.poisson(s.comorbidities_mean, num_patients)
    comorbid_patient, _ = _ranges(n_comorbid)
    comorbid_code = universe.sample_background(rng, len(comorbid_patient))
    comorbid_pair, comorbid_step = _ranges(n_visits[comorbid_patient])
    shown = rng.random(len(comorbid_pair)) < s.comorbidity_presence
    comorbid_pair = comorbid_pair[shown]
    comorbid_visit = visit_offsets[comorbid_patient[comorbid_pair]] + comorbid_step[shown]

    # Background codes (incidental), topping every visit up to min_codes.
    condition_codes = np.bincount(pair_visit, weights=drawn + pair_chronic, minlength=num_visits)
    condition_codes += np.bincount(comorbid_visit, minlength=num_visits)
    n_background = np.maximum(rng.poisson(s.background_codes, num_visits), s.min_codes - condition_codes)
    n_background = n_background.astype(np.int64)
    background_visit, _ = _ranges(n_background)

    row_visit = np.concatenate(
        [pair_visit[chronic_pairs], pair_visit[draw_pair], comorbid_visit, background_visit]
    )
    row_code = np.concatenate(
        [
            chronic_shown,
            drawn_codes,
            comorbid_code[comorbid_pair],
            universe.sample_background(rng, int(n_background.sum())),
        ]
    )
    # One row per distinct code in a visit; top visits that fell below min_codes up again.
    num_leaves = len(universe.leaf_ids)
    row_visit, row_code = _distinct(row_visit, row_code, num_leaves)
    for _ in range(8):
        short = s.min_codes - np.bincount(row_visit, minlength=num_visits)
        short_visits = np.flatnonzero(short > 0)
        if len(short_visits) == 0:
            break
        top_up_visit = np.repeat(short_visits, short[short_visits])
        row_visit = np.concatenate([row_visit, top_up_visit])
        row_code = np.concatenate([row_code, universe.sample_background(rng, len(top_up_visit))])
        row_visit, row_code = _distinct(row_visit, row_code, num_leaves)
    # At most max_codes per visit (a random choice), in random order within the visit.
    order = np.lexsort((rng.random(len(row_visit)), row_visit))
    row_visit, row_code = row_visit[order], row_code[order]
    sizes = np.bincount(row_visit, minlength=num_visits)
    position = range_positions(sizes)  # row_visit is sorted: rows of a visit are consecutive
    keep = position < s.max_codes
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
    universe = _Universe.build(ontology, np.random.default_rng([seed, 0]), settings)
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


def write_synth(
    out_dir: str | Path,
    ontology: Ontology | str = DEFAULT_ONTOLOGY,
    patients: int = DEFAULT_PATIENTS,
    seed: int = 0,
    *,
    settings: SynthSettings | None = None,
    force: bool = False,
) -> Path:
    """Write `visits.csv.gz` (patient,visit,time,code) and `synth.json` to a new folder, atomically.

    Refuses an existing `out_dir` unless `force`. Returns the folder; `synth.json` holds the
    settings and the figures (patients, visits, rows, distinct codes).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise HapnetError(f"{out_dir}: already exists (use --force to overwrite)")
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
