"""Patient shards: which patients one rank of a distributed run keeps when it reads the data.

Every rank reads the same source and keeps only the rows of its own patients, so no rank holds
the whole data (docs/scaling.md). A patient belongs to rank hash(patient id) mod ranks: the hash
is pandas' SipHash of the id as text (fixed key), so every rank, on every machine, agrees
without talking, and all of a patient's rows land on one rank whatever the file's order.

The patients of a shard keep an order key (`LongTable.patient_order`): the position at which a
one-process read would have met the patient (its first row in the file, or its index in the full
table). Sorting every shard's keys together gives the one-process patient order, hence the same
split, batches and run folder whatever the number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hapnet.data.fingerprint import text_hashes
from hapnet.data.table import LongTable


@dataclass(frozen=True)
class PatientShard:
    """Shard `index` of `count`: the patients whose id hashes to `index` modulo `count`."""

    index: int
    count: int

    def owns_ids(self, ids: np.ndarray) -> np.ndarray:
        """Which of these patient ids are this shard's (ids as text, already stripped of spaces)."""
        return text_hashes(ids) % np.uint64(self.count) == np.uint64(self.index)

    def owns(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Which rows of a block's patient column are this shard's. Integers and text hash alike
        (as text, stripped); a missing id counts as the empty id (a row of no patient)."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        encoded = pc.dictionary_encode(values)  # each distinct id of the block hashed once
        distinct = encoded.dictionary
        text = distinct if pa.types.is_string(distinct.type) else pc.cast(distinct, pa.string())
        text = pc.fill_null(pc.utf8_trim_whitespace(text), "")
        ids = np.append(np.asarray(text.to_numpy(zero_copy_only=False), dtype=object), "")  # [-1]: null
        mine = self.owns_ids(ids)
        indices = pc.fill_null(encoded.indices, len(distinct)).to_numpy(zero_copy_only=False)
        return mine[indices]

    def select(self, rows: LongTable) -> LongTable:
        """A whole source's table -> the rows of this shard's patients (for sources read at once:
        MIMIC, OMOP, data frames). Patients keep their index in the full table as order key."""
        mine = self.owns_ids(rows.patient_names) if len(rows.patient_names) else np.zeros(0, dtype=bool)
        kept_patients = np.flatnonzero(mine)
        new_index = np.full(len(mine) + 1, -1, dtype=np.int64)  # [-1]: rows of no patient stay -1
        new_index[kept_patients] = np.arange(len(kept_patients))
        own_orphans = bool(self.owns_ids(np.array([""]))[0])  # rows of no patient: one shard has them
        has_patient = rows.patient >= 0
        keep = (rows.patient < 0) & own_orphans
        keep[has_patient] = mine[rows.patient[has_patient]]
        order = np.arange(len(mine)) if rows.patient_order is None else rows.patient_order
        return replace(
            rows,
            patient_names=rows.patient_names[kept_patients],
            patient=new_index[rows.patient[keep]],
            visit=rows.visit[keep],
            time=None if rows.time is None else rows.time[keep],
            code=rows.code[keep],
            first_line=None,  # rows are no longer the file's: no line numbers
            orphan_rows=rows.orphan_rows if own_orphans else 0,
            admissions_without_diagnoses=rows.admissions_without_diagnoses if own_orphans else 0,
            other_events=rows.other_events if own_orphans else 0,
            other_kinds=rows.other_kinds if own_orphans else {},
            patient_splits=None if rows.patient_splits is None else rows.patient_splits[kept_patients],
            patient_order=order[kept_patients],
        )


def first_rows(row_patient: np.ndarray, row_numbers: np.ndarray, num_patients: int) -> np.ndarray:
    """Each patient's first row number (patients numbered in order of first appearance; rows of
    no patient are -1): the order key of a shard read block by block."""
    first = np.full(num_patients, np.iinfo(np.int64).max, dtype=np.int64)
    has = row_patient >= 0
    np.minimum.at(first, row_patient[has], row_numbers[has])
    return first
