"""The fingerprint of loaded visit data: which data a run trained on, whatever the files looked like.

It is a sum over the data's parts (patients, their visits' times and codes, split labels), each
hashed with its patient's position, so the shards of a distributed run add their sums up to the
fingerprint of the whole data (`fingerprint_sums` on each, `fingerprint_from_sums` on the total)
without any rank holding it. One changed, added, removed or re-ordered patient, visit, code,
time or label changes it; a re-compressed or re-formatted file with the same visits does not.

The hashes are SplitMix64 finalisers (pandas' SipHash for the id text), summed modulo 2**64 under
two salts: 128 bits, then sha256 for the text. Not a cryptographic commitment: a check that the
data did not change by accident.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from hapnet.data.visits import VisitData
from hapnet.utils.arrays import range_owners, range_positions

_SALTS = (0x9E3779B97F4A7C15, 0xD1B54A32D192ED03)
_KINDS = {"patient": 1, "visit": 2, "code": 3, "time": 4, "label": 5}  # keep the parts apart


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 (wrapping arithmetic): a well-spread 64-bit hash."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def text_hashes(values: np.ndarray) -> np.ndarray:
    """A stable 64-bit hash of each text (pandas' SipHash with its fixed key): the same on every
    machine and in every process, for fingerprints and patient shards."""
    return pd.util.hash_array(np.asarray(values, dtype=object), categorize=False)


def fingerprint_sums(data: VisitData, index: np.ndarray | None = None) -> list[int]:
    """The two 64-bit sums of `data`'s parts, its patients at positions `index` of the whole data
    (default: 0..P-1, the whole data). Shards' sums add up (modulo 2**64) to the whole's."""
    positions = np.arange(data.num_patients) if index is None else np.asarray(index)
    positions = positions.astype(np.uint64)
    visits_per_patient = np.diff(data.patient_offsets)
    visit_patient = positions[range_owners(visits_per_patient)]
    visit_number = range_positions(visits_per_patient).astype(np.uint64)
    codes_per_visit = np.diff(data.visit_offsets)
    parts: list[tuple[str, np.ndarray, np.ndarray]] = [  # (kind, owner key, value) of each item
        ("patient", positions, text_hashes(data.patient_ids)),
        ("visit", positions, visits_per_patient.astype(np.uint64)),
    ]
    visit_key = _mix(visit_patient * np.uint64(0x100000001B3) + visit_number)
    parts.append(("code", visit_key[range_owners(codes_per_visit)], data.codes.astype(np.uint64)))
    if data.visit_times is not None:
        parts.append(("time", visit_key, np.nan_to_num(data.visit_times, nan=-1.5e300).view(np.uint64)))
    if data.patient_splits is not None:
        parts.append(("label", positions, text_hashes(data.patient_splits)))
    sums = []
    with np.errstate(over="ignore"):
        for salt in _SALTS:
            total = np.uint64(0)
            for kind, owner, value in parts:
                key = _mix(owner ^ np.uint64(salt) ^ np.uint64(_KINDS[kind] << 56))
                total += _mix(key + value).sum(dtype=np.uint64)
            sums.append(int(total))
    return sums


def fingerprint_from_sums(sums: list[list[int]], num_patients: int) -> str:
    """The fingerprint of data whose parts' sums are `sums` (one pair per shard)."""
    total = [sum(pair[i] for pair in sums) % 2**64 for i in range(len(_SALTS))]
    return hashlib.sha256(f"hapnet-data-v2 {num_patients} {total[0]} {total[1]}".encode()).hexdigest()


def data_fingerprint(data: VisitData) -> str:
    """The fingerprint of the whole `data` (64 hex digits)."""
    return fingerprint_from_sums([fingerprint_sums(data)], data.num_patients)


def legacy_data_fingerprint(data: VisitData) -> str:
    """The fingerprint runs recorded before data-parallel training (sha256 of the ids, offsets and
    codes, which no shard can compute), so that their folders still match their data."""
    digest = hashlib.sha256()
    ids = "\x00".join(str(p) for p in data.patient_ids).encode()
    for part in (ids, data.patient_offsets, data.visit_offsets, data.codes):
        raw = part if isinstance(part, bytes) else np.ascontiguousarray(part, dtype=np.int64).tobytes()
        digest.update(len(raw).to_bytes(8, "little") + raw)  # lengths keep the parts apart
    return digest.hexdigest()


def fingerprint_matches(recorded: str, data: VisitData, now: str | None = None) -> bool:
    """Whether a recorded fingerprint (of this version or an older one) is `data`'s; `now`: its
    current fingerprint when already computed."""
    now = data_fingerprint(data) if now is None else now
    return recorded == now or recorded == legacy_data_fingerprint(data)
