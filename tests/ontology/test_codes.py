"""Code normalisation and ICD prefix truncation (hapnet.ontology.codes)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hapnet.ontology.codes import icd_prefixes, normalize_code, split_system


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("038.9", "0389"),
        (" 0389 ", "0389"),
        ("0389", "0389"),
        ("E980.3", "E9803"),
        ("e980.3", "E9803"),
        ("V10.01", "V1001"),
        ("t81.4xxa", "T814XXA"),
        ("I10", "I10"),
        ("i10\t", "I10"),
        (4019, "4019"),
        # ids that are not dotted ICD codes keep their dots and colons
        ("CCS:7.1", "CCS:7.1"),
        ("ccs:7.1.2", "CCS:7.1.2"),
        ("1.2.3", "1.2.3"),
        ("BLOCK:A00-A09", "BLOCK:A00-A09"),
        # system prefixes for mixed ICD-9 / ICD-10 data
        ("icd10:t81.4xxa", "ICD10:T814XXA"),
        ("ICD10 : I10", "ICD10:I10"),
        ("icd9:038.9", "ICD9:0389"),
        ("ICD9:E980.3", "ICD9:E9803"),
        ("ICD9:CCS:7.1", "ICD9:CCS:7.1"),
        ("ICD10:BLOCK:I10-I1A", "ICD10:BLOCK:I10-I1A"),
    ],
)
def test_normalize_code(raw: object, expected: str) -> None:
    assert normalize_code(raw) == expected


def test_split_system() -> None:
    assert split_system("ICD10:T814XXA") == ("ICD10:", "T814XXA")
    assert split_system("ICD9:4019") == ("ICD9:", "4019")
    assert split_system("T814XXA") == ("", "T814XXA")
    assert split_system("CCS:7.1") == ("", "CCS:7.1")


def test_icd_prefixes_nearest_first_and_stop_at_three() -> None:
    assert icd_prefixes("T814XXA") == ["T814XX", "T814X", "T814", "T81"]
    assert icd_prefixes("0389") == ["038"]
    assert icd_prefixes("038") == []
    assert icd_prefixes("I1") == []


def test_icd_prefixes_keep_the_system_prefix() -> None:
    assert icd_prefixes("ICD10:T814XXA") == ["ICD10:T814XX", "ICD10:T814X", "ICD10:T814", "ICD10:T81"]
    assert icd_prefixes("ICD9:4019") == ["ICD9:401"]
    assert icd_prefixes("ICD9:401") == []


def test_icd_prefixes_never_truncate_category_ids() -> None:
    assert icd_prefixes("CCS:7.1.2") == []
    assert icd_prefixes("BLOCK:A00-A09") == []
    assert icd_prefixes("ICD9:CCS:7.1") == []


_icd_body = st.from_regex(r"\A[A-Z0-9]{3}\Z") | st.from_regex(r"\AE[0-9]{3}\Z")


@given(
    head=_icd_body,
    tail=st.from_regex(r"\A[A-Za-z0-9]{1,4}\Z"),
    system=st.sampled_from(["", "icd9:", "ICD10:"]),
)
def test_dotted_equals_undotted_and_idempotent(head: str, tail: str, system: str) -> None:
    dotted = normalize_code(f" {system}{head.lower()}.{tail} ")
    assert dotted == normalize_code(system + head + tail)
    assert dotted == system.upper() + head + tail.upper()
    assert normalize_code(dotted) == dotted
