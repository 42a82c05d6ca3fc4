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
import hashlib
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hapnet.data.fingerprint import (
    data_fingerprint,
    fingerprint_from_sums,
    fingerprint_matches,
    fingerprint_sums,
)
from hapnet.data.loaders import load_shard
from hapnet.data.sharding import PatientShard
from hapnet.data.splits import Split, make_split, target_counts
from hapnet.data.visits import DataReport, VisitData
from hapnet.data.vocabulary import Vocabulary
from hapnet.errors import HapnetError
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
    reading_settings,
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
    nodes: np.ndarray  # the ontology nodes that occur in the whole data, sorted
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
        """Whether a fingerprint recorded by an older version is this data's. That one needs the
        whole data: a distributed run cannot tell it from a change, and says so."""
        if self.process.distributed and recorded != self.fingerprint:
            raise HapnetError(
                f"the run's data fingerprint ({recorded[:12]}) is not this data's ({self.fingerprint[:12]}): "
                "the data changed, or the run started before hapnet read data by shards, whose "
                "fingerprint only one process can check; resume it in one process (without --nproc) to know"
            )
        return fingerprint_matches(recorded, self.data, self.fingerprint)


def load_run_data(config: TrainConfig, process: Process = SINGLE) -> tuple[Ontology, RunData]:
    """The run's ontology and this rank's data (all of it in one process)."""
    if not process.distributed:
        ontology, data = load_training_data(config)
        whole = np.arange(len(data.patient_ids))
        nodes = np.flatnonzero(np.bincount(data.codes, minlength=len(ontology)))
        return ontology, RunData(data, whole, len(whole), data.report, data_fingerprint(data), nodes)
    ontology = training_ontology(config)
    from_main(process, lambda: training_data_path(config), share=False)  # the built-in set: made once
    path = training_data_path(config)  # (again on other machines, where rank 0's cache is not)
    check_same(process, source_signature(path), "data files")
    data, keys = _load_shard(config, ontology, path, process)
    # Where each patient stands in the whole data: every shard's order keys, sorted together.
    every = np.sort(np.concatenate(all_gather(process, keys, "the patients' order")))
    index = np.searchsorted(every, keys).astype(np.int64)
    if len(every) < MIN_PATIENTS:  # refused in the words of one process (no row, no known code, ...)
        from_main(process, lambda: load_training_data(config), share=False)
        check_enough_patients(path, len(every))
    summed = all_gather(process, (fingerprint_sums(data, index), data.report), "data reports")
    fingerprint = fingerprint_from_sums([sums for sums, _ in summed], len(every))
    (counts,) = sum_arrays(process, [np.bincount(data.codes, minlength=len(ontology))])
    nodes = np.flatnonzero(counts)
    report = merge_reports([report for _, report in summed], distinct_codes=len(nodes))
    return ontology, RunData(data, index, len(every), report, fingerprint, nodes, process)


def _load_shard(
    config: TrainConfig, ontology: Ontology, path: str | Path, process: Process
) -> tuple[VisitData, np.ndarray]:
    """This rank's shard, its warnings shown once by rank 0 (`once_or_by_rank`).

    A bad file is reported as one process reports it: the ranks tell each other whether their
    load failed, and if one did, rank 0 reads the whole source for the exact message (a shard's
    rows are not the file's lines, nor its counts the file's), which every rank then raises."""
    shard = PatientShard(process.rank, process.world_size)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            loaded, failure = load_shard(path, ontology, shard, **reading_settings(config)), None
        except HapnetError as exc:  # InputError included
            loaded, failure = None, str(exc)
    said = list(dict.fromkeys((str(w.message), w.category) for w in caught))
    outcomes = all_gather(process, (failure, said), "how the ranks' loads went")
    failed = [(rank, text) for rank, (text, _) in enumerate(outcomes) if text is not None]
    if failed:
        from_main(process, lambda: load_training_data(config), share=False)  # raises, on every rank
        rank, text = failed[0]  # the whole source loads (a shard's own trouble): that rank's words
        raise HapnetError(text if rank == 0 or text.startswith("rank ") else f"rank {rank}: {text}")
    if process.is_main:
        category = {message: kind for _, messages in outcomes for message, kind in messages}
        for shown, message in once_or_by_rank([[m for m, _ in messages] for _, messages in outcomes]):
            warnings.warn(shown, category[message], stacklevel=4)
    assert loaded is not None
    return loaded


def source_signature(path: str | Path) -> str:
    """The data's files, sizes and first and last 64 KB, as a digest: every rank must read the same
    data (each keeps its own patients), on every machine."""
    root = Path(path)
    digest = hashlib.sha256()
    try:
        files = sorted(f for f in root.rglob("*") if f.is_file()) if root.is_dir() else [root]
        for file in files:
            size = file.stat().st_size
            digest.update(f"{file.relative_to(root) if file != root else file.name}:{size}".encode())
            with open(file, "rb") as handle:
                digest.update(handle.read(1 << 16))
                handle.seek(max(0, size - (1 << 16)))
                digest.update(handle.read(1 << 16))
    except OSError:
        return "unreadable"  # the load reports it in its own words
    return digest.hexdigest()


def once_or_by_rank(per_rank: list[list[str]]) -> list[tuple[str, str]]:
    """Messages of every rank (warnings, report notes) as rank 0 shows them, (shown, message): one
    that every rank gave, once; the others with their rank ("rank R's patients: ..."). A message
    counting a shard's rows names its shard (the MEDS reader), so no two ranks' counts pass as one."""
    shown: dict[str, str] = {}
    for rank, messages in enumerate(per_rank):
        for message in messages:
            if all(message in other for other in per_rank):
                if rank == 0:
                    shown[message] = message
            else:
                shown[f"rank {rank}'s patients: {message}"] = message
    return list(shown.items())


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
    notes = [shown for shown, _ in once_or_by_rank([report.notes for report in reports])]
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


def run_vocabulary(run_data: RunData, ontology: Ontology) -> Vocabulary:
    """The classes a run predicts: every code of the whole data."""
    return Vocabulary.from_nodes(run_data.nodes, len(ontology))


def run_split(run_data: RunData, config: TrainConfig) -> Split:
    """The run's split (`make_split`) of the whole data, in positions of the whole data. With
    `--split meds`, the ranks exchange every patient's label, coded (4 bytes a patient)."""
    labels = run_data.data.patient_splits
    if config.split == "meds" and run_data.process.distributed:
        coded = None if labels is None else np.unique(labels, return_inverse=True)
        parts = all_gather(run_data.process, (run_data.index, coded), "split labels")
        if all(part is not None for _, part in parts):
            names = np.unique(np.concatenate([part[0] for _, part in parts]))
            whole = np.zeros(run_data.num_patients, dtype=np.int32)
            for index, (values, codes) in parts:
                whole[index] = np.searchsorted(names, values)[codes]
            labels = names[whole]
        else:  # a source without split labels: refused below, in the same words on every rank
            labels = None
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
