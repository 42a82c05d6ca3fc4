"""The data a run trains on, as one rank holds it (`RunData`), and the whole-data facts the ranks
work out together: the patient order, the split, the vocabulary, target counts, GloVe's
co-occurrence counts, the data report and the fingerprint.

In one process `RunData` is simply the loaded data. In a distributed run each rank reads only its
shard of the patients (`hapnet.data.sharding`: rows filtered while the file is read, for long CSV,
synth folders and MEDS), so memory per rank is that of its shard: 10 M patients on 8 ranks are
not 8 copies of the data. The ranks exchange only patient-level facts (each patient's position
in the whole data, split labels, ids for split.csv on rank 0) and sums over codes, and so end up
with exactly the split, vocabulary, frequency groups, GloVe and batches of a one-process run.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hapnet.data.fingerprint import (
    data_fingerprint,
    fingerprint_from_sums,
    fingerprint_sums,
    legacy_data_fingerprint,
)
from hapnet.data.loaders import load_shard
from hapnet.data.sharding import PatientShard
from hapnet.data.splits import Split, make_split, target_counts
from hapnet.data.visits import DataReport, VisitData
from hapnet.data.vocabulary import Vocabulary
from hapnet.errors import HapnetError, InputError
from hapnet.models.glove import Cooccurrence, sum_cooccurrences
from hapnet.ontology.graph import Ontology
from hapnet.training.config import TrainConfig
from hapnet.training.distributed import (
    SINGLE,
    Process,
    all_gather,
    check_same,
    from_main,
    gather_to_main,
    sum_arrays,
)
from hapnet.training.setup import (
    MIN_PATIENTS,
    check_enough_patients,
    load_training_data,
    training_cooccurrence,
    training_data_path,
    training_ontology,
)


@dataclass
class RunData:
    """The patients this rank holds (every patient in one process) and where they stand in the
    whole data; `report` and `fingerprint` describe the whole data."""

    data: VisitData  # this rank's patients, in one-process order
    index: np.ndarray  # int64 [local patients] position of each in the whole data, increasing
    num_patients: int  # in the whole data
    report: DataReport
    fingerprint: str
    process: Process = SINGLE

    def local(self, patients: np.ndarray) -> np.ndarray:
        """The patients (positions in the whole data) this rank holds, as indices of `data`, in
        the order given."""
        if not self.process.distributed:
            return np.asarray(patients, dtype=np.int64)
        where = np.searchsorted(self.index, patients)
        found = where < len(self.index)
        found[found] = self.index[where[found]] == np.asarray(patients)[found]
        return where[found]

    def matches(self, recorded: str) -> bool:
        """Whether a fingerprint recorded by an older version is this data's (one process only:
        that fingerprint needs the whole data)."""
        if recorded == self.fingerprint:
            return True
        return not self.process.distributed and recorded == legacy_data_fingerprint(self.data)


def load_run_data(config: TrainConfig, process: Process = SINGLE) -> tuple[Ontology, RunData]:
    """The run's ontology and this rank's data (all of it in one process)."""
    if not process.distributed:
        ontology, data = load_training_data(config)
        whole = np.arange(len(data.patient_ids))
        return ontology, RunData(data, whole, len(whole), data.report, data_fingerprint(data))
    ontology = training_ontology(config)
    from_main(process, lambda: training_data_path(config), share=False)  # the built-in set: made once
    path = training_data_path(config)  # (again on other machines, where rank 0's cache is not)
    check_same(process, _source_signature(path), "data files (sizes)")
    with _warnings_once(process):
        data, keys = _load_shard(config, ontology, path, process)
    # Where each patient stands in the whole data: every shard's order keys, sorted together.
    every = np.sort(np.concatenate(all_gather(process, keys, "the patients' order")))
    index = np.searchsorted(every, keys).astype(np.int64)
    if len(every) < MIN_PATIENTS:  # refused: in the words of one process (no row, no known code, ...)
        load_training_data(config)
        check_enough_patients(path, len(every))
    summed = all_gather(process, (fingerprint_sums(data, index), data.report), "data reports")
    fingerprint = fingerprint_from_sums([sums for sums, _ in summed], len(every))
    report = merge_reports(
        [report for _, report in summed], distinct_codes=len(observed_nodes(data, process))
    )
    return ontology, RunData(data, index, len(every), report, fingerprint, process)


def _load_shard(
    config: TrainConfig, ontology: Ontology, path: str | Path, process: Process
) -> tuple[VisitData, np.ndarray]:
    """This rank's shard. A bad file is reported as one process reports it: a shard's rows are not
    the file's lines, so on an error the rank reads the whole source again for the exact message."""
    settings = dict(columns=config.columns, unknown=config.unknown, code_pattern=config.code_pattern)
    shard = PatientShard(process.rank, process.world_size)
    try:
        return load_shard(path, ontology, shard, **settings)  # type: ignore[arg-type]
    except InputError as shard_error:
        try:
            load_training_data(config)
        except HapnetError as whole_error:
            raise whole_error from None
        raise shard_error from None


def _source_signature(path: str | Path) -> str:
    """The data's files and sizes: every rank must read the same data (each keeps its patients)."""
    root = Path(path)
    try:
        files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
        return ";".join(f"{f.relative_to(root) if f != root else f.name}:{f.stat().st_size}" for f in files)
    except OSError:
        return "unreadable"  # the load reports it in its own words


@contextmanager
def _warnings_once(process: Process) -> Iterator[None]:
    """Rank 0 shows the warnings of every rank's load once: those all ranks gave as they are, the
    others (they count a shard's rows) tagged with their rank."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    mine = list(dict.fromkeys((str(w.message), w.category) for w in caught))
    every = all_gather(process, mine, "warnings")
    if not process.is_main:
        return
    for rank, messages in enumerate(every):
        for message, category in messages:
            if all((message, category) in other for other in every):
                if rank == 0:
                    warnings.warn(message, category, stacklevel=4)
            else:
                warnings.warn(f"rank {rank}'s patients: {message}", category, stacklevel=4)


def merge_reports(reports: list[DataReport], distinct_codes: int) -> DataReport:
    """The report of the whole data from its shards' (counts summed; distinct codes counted over
    the union; notes every shard gave once, the others tagged with their rank)."""
    first = reports[0]
    distinct = ("distinct_codes", "exact_codes", "mapped_codes", "unknown_codes")  # over the union
    summed = {
        f.name: sum(getattr(r, f.name) for r in reports)
        for f in dataclasses.fields(DataReport)
        if isinstance(getattr(first, f.name), int) and f.name not in ("min_visits", *distinct)
    }
    resolved: dict[str, int] = {}
    other_kinds: Counter[str] = Counter()
    for report in reports:
        resolved.update(report.resolved)
        other_kinds.update(report.other_kinds)
    by_status = np.bincount(np.fromiter(resolved.values(), np.int64, len(resolved)), minlength=3)
    notes = []
    for rank, report in enumerate(reports):
        for note in report.notes:
            if all(note in other.notes for other in reports):
                if rank == 0:
                    notes.append(note)
            else:
                notes.append(f"rank {rank}'s patients: {note}")
    return dataclasses.replace(
        first,
        **summed,
        distinct_codes=distinct_codes,
        exact_codes=int(by_status[0]),
        mapped_codes=int(by_status[1]),
        unknown_codes=int(by_status[2]),
        notes=notes,
        resolved=resolved,
        other_kinds=dict(other_kinds),
    )


def observed_nodes(data: VisitData, process: Process) -> np.ndarray:
    """The ontology nodes that occur in the whole data (sorted)."""
    (counts,) = sum_arrays(process, [np.bincount(data.codes, minlength=len(data.ontology))])
    return np.flatnonzero(counts)


def run_vocabulary(run_data: RunData, ontology: Ontology) -> Vocabulary:
    """The classes a run predicts: every code of the whole data."""
    return Vocabulary.from_nodes(observed_nodes(run_data.data, run_data.process), len(ontology))


def run_split(run_data: RunData, config: TrainConfig) -> Split:
    """The run's split (`make_split`) of the whole data, in positions of the whole data. With
    `--split meds`, every rank gathers the labels (one string a patient)."""
    labels = run_data.data.patient_splits
    if config.split == "meds" and labels is not None and run_data.process.distributed:
        whole = np.empty(run_data.num_patients, dtype=object)
        for index, part in all_gather(run_data.process, (run_data.index, labels), "split labels"):
            whole[index] = part
        labels = whole.astype(str)
    if config.split == "meds" and not run_data.process.is_main:
        with warnings.catch_warnings():  # rank 0 says it
            warnings.simplefilter("ignore")
            return make_split(
                config.split, run_data.num_patients, labels, run_data.report.source, config.seed
            )
    return make_split(config.split, run_data.num_patients, labels, run_data.report.source, config.seed)


def summed_target_counts(run_data: RunData, patients: np.ndarray, vocab: Vocabulary) -> np.ndarray:
    """How often each class is a target in these patients' visits (positions in the whole data)."""
    local = target_counts(run_data.data, run_data.local(patients), vocab.code_to_class, len(vocab))
    return sum_arrays(run_data.process, [local])[0]


def run_cooccurrence(run_data: RunData, config: TrainConfig, train: np.ndarray) -> Cooccurrence | None:
    """GloVe's co-occurrence counts of the training visits, on rank 0 (None on the others): each
    rank counts its patients' visits, rank 0 adds them up (counts are whole numbers: exact)."""
    mine = training_cooccurrence(config, run_data.data, run_data.local(train))
    parts = gather_to_main(run_data.process, mine, "co-occurrence counts")
    return None if parts is None else parts[0] if len(parts) == 1 else sum_cooccurrences(parts)


def all_patient_ids(run_data: RunData) -> np.ndarray | None:
    """Every patient's id in whole-data order, on rank 0 (None on the others): for split.csv."""
    parts = gather_to_main(run_data.process, (run_data.index, run_data.data.patient_ids), "patient ids")
    if parts is None:
        return None
    ids = np.empty(run_data.num_patients, dtype=object)
    for index, part in parts:
        ids[index] = part
    return ids.astype(str)
