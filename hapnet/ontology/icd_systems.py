"""ICD-9-CM or ICD-10-CM: which system a diagnosis code is of, and its id in an ontology.

A namespaced ontology (the built-in `icd9-icd10`, a `meds:DIR` ontology) writes codes with their
system, `ICD9:4280` / `ICD10:I509`, under the system nodes `ICD9` / `ICD10`. Sources that say the
system (MIMIC-IV's `icd_version`, MEDS codes such as `ICD10CM//I50.9`, OMOP's vocabulary) use it;
for a bare code, `system_by_shape` reads it from the code where only one system has that shape.
"""

from __future__ import annotations

import re

from hapnet.ontology.codes import SYSTEMS
from hapnet.ontology.graph import Ontology

ICD9, ICD10, UNDECIDED = 9, 10, 0  # a code's system, as small integers (numpy int8 arrays)
SYSTEM_NAMES = {ICD9: "ICD-9", ICD10: "ICD-10"}
SYSTEM_NODE = {ICD9: SYSTEMS[0], ICD10: SYSTEMS[1]}  # the node ids `ICD9`, `ICD10`

_DIGITS = re.compile(r"\d{3,5}")  # ICD-9-CM 001-999 (+ 1-2 digits): no ICD-10 code is all digits
_LETTER_DIGITS = re.compile(r"([A-Z])(\d+)")  # ICD-9 E / V codes and ICD-10 codes alike
_ICD10 = re.compile(r"[A-Z]\d[0-9A-Z]{1,5}")


def system_by_shape(code: str) -> int:
    """ICD9, ICD10 or UNDECIDED for a normalised code without its system (`4280`, `I509`, `E8798`).

    ICD-9-CM codes are 3-5 digits, `V` + 2-4 digits or `E` + 3-4 digits; ICD-10-CM codes are a
    letter, a digit and 1-5 letters or digits. Undecided: what both systems can write, `V` + 2-4
    digits (ICD-9 V01-V91, ICD-10 V00-V99), `E0` + 2-3 digits up to `E030` (ICD-9 E000-E030, ICD-10
    E00-E07) and `E8` + 2-3 digits (ICD-9 E800-E899, ICD-10 E80-E89), and any other shape.
    """
    if _DIGITS.fullmatch(code):
        return ICD9
    letter_digits = _LETTER_DIGITS.fullmatch(code)
    if letter_digits is None:
        return ICD10 if _ICD10.fullmatch(code) else UNDECIDED  # a letter after the first character
    letter, digits = letter_digits.groups()
    if letter == "V":
        return UNDECIDED if len(digits) <= 4 else ICD10
    if letter == "E":
        if len(digits) == 2 or len(digits) > 4:
            return ICD10  # `E11`: ICD-9 E codes have 3 digits before their decimal
        category = int(digits[:3])
        if category >= 900:
            return ICD9  # ICD-10-CM's E chapter ends at E89
        if category <= 30 or 800 <= category < 900:
            return UNDECIDED
        return ICD10  # E031-E799 are no ICD-9 code
    return ICD10 if len(digits) >= 2 else UNDECIDED


def is_namespaced(ontology: Ontology) -> bool:
    """Codes of this ontology carry their system (`ICD9:4019`): it has a system node."""
    return any(node in ontology for node in SYSTEMS)


def system_id(system: int, code: str) -> str:
    """`ICD9:4280` for (ICD9, `4280`); the code itself when its system is undecided."""
    return f"{SYSTEM_NODE[system]}:{code}" if system in SYSTEM_NODE else code
