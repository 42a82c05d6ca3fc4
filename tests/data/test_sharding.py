"""Patient shards (issue #20): a rank reads only its patients' rows, and the shards together are
exactly the one-process data (order, visits, report, fingerprint), for every kind of source.

These run the shard loads one after the other in this process (no torch.distributed): what the
ranks would exchange is combined here by the same functions (`merge_reports`, the fingerprint sums).
"""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from test_meds import extract_form
from testdata import MIMIC3, MIMIC4
from tiny import write_tiny_data

import hapnet
from hapnet.data.fingerprint import data_fingerprint, fingerprint_from_sums, fingerprint_sums
from hapnet.data.loaders import load_shard, load_visits
from hapnet.data.sharding import PatientShard
from hapnet.data.table import LongTable
from hapnet.data.visits import VisitData
from hapnet.errors import InputError
from hapnet.training.distributed import Process
from hapnet.training.run_data import RunData, merge_reports


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_tiny_data(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def sources(tiny, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """One data set of each kind the loader reads, with its ontology."""
    folder = tmp_path_factory.mktemp("sources")
    demo = tuple(
        pd.read_csv(MIMIC4 / "hosp" / f"{t}.csv.gz", dtype=str) for t in ("admissions", "diagnoses_icd")
    )
    gz = folder / "visits.csv.gz"
    gz.write_bytes(gzip.compress(tiny[1].read_bytes()))
    hapnet.write_synth(folder / "synth", "icd9-ccs", patients=300, seed=1)
    # Dates written day first, the first of the file unambiguous (25/12): a shard whose first date
    # is 01/02 must still read it as 1 February, as one process does.
    rng = np.random.default_rng(3)
    rows = ["patient,time,code", "p0,25/12/2130,A1"]
    for i in range(40):
        for day in sorted(rng.choice(np.arange(1, 13), size=3, replace=False)):
            rows.append(f"p{i},{day:02d}/{rng.integers(1, 13):02d}/2131,A{rng.integers(1, 4)}")
    (folder / "dmy.csv").write_text("\n".join(rows) + "\n")
    # Integer-looking ids for the first MB (the sample), then empty ids and 07 / 007: the file is
    # read again as text, for every shard alike, and 7, 07, 007 stay three patients.
    rows = ["patient,visit,code"] + [f"{i // 6},{i // 2},A{i % 3 + 1}" for i in range(120_000)]
    rows += [
        f"{p},{900_000 + i // 2},A1" for i, p in enumerate(["07", "07", "07", "07", "", "", "007", "007"])
    ]
    rows += [f"007,{900_100 + i},A2" for i in range(3)]
    (folder / "ids.csv").write_text("\n".join(rows) + "\n")
    ontology = folder / "abc.csv"
    ontology.write_text("parent,child\nA,A1\nA,A2\nA,A3\n")
    return {
        "dmy": (folder / "dmy.csv", str(ontology)),
        "ids": (folder / "ids.csv", str(ontology)),
        "long-csv": (tiny[1], str(tiny[0])),
        "long-csv.gz": (gz, str(tiny[0])),
        "synth": (folder / "synth", "icd9-ccs"),
        "meds": (extract_form(folder / "meds", demo), "icd9-icd10"),
        "mimic3": (MIMIC3, "icd9-ccs"),
        "mimic4": (MIMIC4, "icd9-icd10"),
    }


def whole_from_shards(path: Path, ontology, count: int) -> tuple[list[VisitData], np.ndarray, np.ndarray]:
    """Each shard's data, and every patient's position in the whole data (concatenated in shard order)."""
    parts = [load_shard(path, ontology, PatientShard(rank, count)) for rank in range(count)]
    keys = np.concatenate([k for _, k in parts])
    positions = np.searchsorted(np.sort(keys), keys)
    return [data for data, _ in parts], positions, keys


@pytest.mark.parametrize(
    "kind", ["long-csv", "long-csv.gz", "dmy", "ids", "synth", "meds", "mimic3", "mimic4"]
)
@pytest.mark.parametrize("count", [2, 3])
def test_shards_together_are_the_one_process_data(kind: str, count: int, sources: dict, recwarn):
    path, ontology_name = sources[kind]
    ontology = hapnet.load_ontology(ontology_name)
    whole = load_visits(path, ontology)
    shards, positions, _ = whole_from_shards(path, ontology, count)
    sizes = [len(s.patient_ids) for s in shards]
    assert sum(sizes) == whole.num_patients and max(sizes) < whole.num_patients  # each holds a part
    # every patient once, at its one-process position, with its visits, times and codes
    ids = np.concatenate([s.patient_ids for s in shards])
    assert len(set(ids.tolist())) == len(ids)
    assert (whole.patient_ids[positions] == ids).all()
    start = 0
    for shard in shards:
        mine = positions[start : start + shard.num_patients]
        start += shard.num_patients
        assert (np.diff(mine) > 0).all()  # a shard keeps the one-process order
        expected = whole.subset(mine)
        for name in ("patient_offsets", "visit_offsets", "codes", "visit_times", "patient_splits"):
            got, want = getattr(shard, name), getattr(expected, name)
            if want is None:
                assert got is None, name
            else:
                np.testing.assert_array_equal(got, want, err_msg=name)
    # the whole data's report and fingerprint, from the shards' alone
    distinct = len(np.unique(np.concatenate([s.codes for s in shards])))
    merged = merge_reports([s.report for s in shards], distinct_codes=distinct)
    assert merged.as_dict() == whole.report.as_dict()
    offsets = np.cumsum([0, *sizes])
    sums = [
        fingerprint_sums(s, positions[a:b]) for s, a, b in zip(shards, offsets[:-1], offsets[1:], strict=True)
    ]
    assert fingerprint_from_sums(sums, whole.num_patients) == data_fingerprint(whole)


def test_shards_refuse_what_one_process_refuses(tmp_path: Path):
    """Plain numbers (days) for some patients, dates for others: one process refuses the file, so
    does every shard, even one whose own patients all have numbers."""
    numbers = PatientShard(0, 3).owns_ids(np.array([f"p{i}" for i in range(40)]))  # shard 0's patients
    rows = ["patient,time,code"] + [f"p{i},{'3' if numbers[i] else '2130-01-02'},A1" for i in range(40)]
    rows += [f"p{i},{'4' if numbers[i] else '2130-01-03'},A1" for i in range(40)]
    (tmp_path / "mixed.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "abc.csv").write_text("parent,child\nA,A1\n")
    ontology = hapnet.load_ontology(str(tmp_path / "abc.csv"))
    with pytest.raises(InputError, match="unparsable date"):
        load_visits(tmp_path / "mixed.csv", ontology)
    for rank in range(3):
        with pytest.raises(InputError, match="unparsable date"):
            load_shard(tmp_path / "mixed.csv", ontology, PatientShard(rank, 3))


def test_a_patients_rows_go_to_one_shard_whatever_the_id_type():
    ids = pa.array([17, 3, 17, 42, None, 3])
    text = pa.array(["17", " 3", "17 ", "42", "", "3"])
    for count in (2, 3, 7):
        owners = np.full(6, -1)
        for rank in range(count):
            shard = PatientShard(rank, count)
            np.testing.assert_array_equal(shard.owns(ids), shard.owns(text))  # integers hash as text
            owners[shard.owns(ids)] = rank
        assert (owners >= 0).all() and owners[0] == owners[2] and owners[1] == owners[5]


def test_a_shard_may_hold_no_patient(sources):
    path, ontology = sources["long-csv"]
    ontology = hapnet.load_ontology(ontology)
    sizes = [load_shard(path, ontology, PatientShard(rank, 200))[0].num_patients for rank in range(200)]
    assert 0 in sizes and sum(sizes) == 60


def test_run_data_local_finds_the_patients_a_rank_holds():
    data = RunData(
        data=None,
        index=np.array([1, 4, 5, 9]),
        num_patients=10,
        report=None,
        fingerprint="",
        nodes=np.arange(3),
        process=Process(0, 2),
    )  # type: ignore[arg-type]
    assert data.local(np.array([9, 0, 4, 8, 1])).tolist() == [3, 1, 0]  # in the order given
    assert data.local(np.array([], dtype=np.int64)).tolist() == []
    assert data.local(np.array([10, 2])).tolist() == []


def test_data_frames_and_merged_reports_keep_their_notes_apart():
    report = dataclasses.replace
    base = hapnet.data.visits.DataReport("s", "long-csv", "o", 1, 2, 3, 1, 4, notes=["same", "only 0"])
    other = report(base, notes=["same", "only 1"])
    merged = merge_reports([base, other], distinct_codes=1)
    assert merged.notes == ["same", "rank 0's patients: only 0", "rank 1's patients: only 1"]
    assert merged.patients == 2 and merged.input_rows == 8 and merged.min_visits == base.min_visits


def test_meds_notes_say_whose_rows_they_count(tmp_path: Path, recwarn):
    """Diagnoses of no subject are the file's (every shard counts them: one note); those without a
    time or visit id are a shard's patients', and its note says which shard (never two as one)."""
    from test_meds import write_meds

    rows = []
    for subject in range(30):
        for day in (1, 5, 9):
            rows.append((subject, pd.Timestamp(f"2100-01-{day:02d}"), "ICD9CM//401.9"))
        rows.append((subject, pd.Timestamp("2100-01-02"), "LAB//1//mg"))
        if subject % 4 == 0:
            rows.append((subject, None, "ICD9CM//250.0"))  # no time, no visit id
    rows += [(None, pd.Timestamp("2100-01-03"), "ICD9CM//250.0")] * 2 + [(None, None, "LAB//2//mg")]
    events = pd.DataFrame(rows, columns=["subject_id", "time", "code"]).astype({"subject_id": "Int64"})
    root = write_meds(tmp_path / "meds", events)
    ontology = hapnet.load_ontology("icd9-ccs")
    whole = load_visits(root, ontology)
    shards, positions, _ = whole_from_shards(root, ontology, 2)
    assert (whole.patient_ids[positions] == np.concatenate([s.patient_ids for s in shards])).all()
    merged = merge_reports([s.report for s in shards], distinct_codes=whole.report.distinct_codes)
    figures = {k: v for k, v in merged.as_dict().items() if k != "notes"}
    assert figures == {k: v for k, v in whole.report.as_dict().items() if k != "notes"}
    assert "2 diagnosis events without a subject_id left out" in whole.report.notes
    assert merged.notes.count("2 diagnosis events without a subject_id left out") == 1  # once, the file's
    timeless = [n for n in merged.notes if "neither a time nor a visit id" in n]
    assert len(timeless) == 2 and all("(the patients of shard" in n for n in timeless)
    counts = [int(n.split(": ")[-2].split()[0]) for n in timeless]
    assert sum(counts) == 8  # subjects 0, 4, ..., 28


def test_select_gives_rows_of_no_patient_to_one_shard_even_without_patients():
    rows = LongTable(
        "s",
        "k",
        np.array([], dtype=str),
        np.array([-1, -1]),
        np.array([0, 1]),
        None,
        ["A1"],
        np.array([0, 0]),
    )
    kept = [len(PatientShard(rank, 2).select(rows).code) for rank in range(2)]
    assert sorted(kept) == [0, 2]
