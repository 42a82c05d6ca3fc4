"""Code normalisation shared by every loader: `038.9`, ` 0389 ` and `0389` are the same code.

A code may carry a coding-system prefix (`ICD9:4019`, `ICD10:I10`, as in the built-in
`icd9-icd10` ontology for MIMIC-IV, which mixes both systems): the prefix is upper-cased and kept,
and the part after it is normalised like any other code.
"""

from __future__ import annotations

import re

# An ICD-9 or ICD-10 code written with its dot: 3 characters (or E + 3 digits), dot, 1-4 more.
_DOTTED_ICD = re.compile(r"^(E\d{3}|[A-Z0-9]{3})\.([A-Z0-9]{1,4})$")
# A coding-system prefix: `ICD9:` or `ICD10:` (already upper-cased), spaces around the colon allowed.
SYSTEMS = ("ICD9", "ICD10")  # the coding systems of a combined ontology (`icd9-icd10`, MIMIC-IV)
_SYSTEM = re.compile(rf"^({'|'.join(SYSTEMS)})\s*:\s*")
MIN_ICD_PREFIX = 3  # an ICD category has 3 characters: truncation stops there


def split_system(code: str) -> tuple[str, str]:
    """`ICD10:T814XXA` -> (`ICD10:`, `T814XXA`); a code without a system prefix -> (``, code)."""
    match = _SYSTEM.match(code)
    if match is None:
        return "", code
    return match.group(1) + ":", code[match.end() :]


def normalize_code(code: object) -> str:
    """Strip, upper-case, and drop the dot of a dotted ICD code; other ids keep their dots.

    `038.9` -> `0389`, `e980.3` -> `E9803`, `icd10:t81.4xxa` -> `ICD10:T814XXA`.
    """
    system, text = split_system(str(code).strip().upper())
    text = text.strip()
    match = _DOTTED_ICD.match(text)
    if match:
        text = match.group(1) + match.group(2)
    return system + text


def icd_prefixes(code: str) -> list[str]:
    """Ancestor candidates of a normalised ICD code by truncation, nearest first.

    `T814XXA` -> `T814XX`, `T814X`, `T814`, `T81`; `ICD10:T814XXA` -> `ICD10:T814XX` ... `ICD10:T81`
    (the system prefix is kept; truncation stops at 3 characters of the code part). Ids that are
    not plain letters and digits (`CCS:7.1`, `BLOCK:A00-A09`) have no prefixes.
    """
    system, body = split_system(code)
    if not (body.isascii() and body.isalnum()):
        return []
    return [system + body[:n] for n in range(len(body) - 1, MIN_ICD_PREFIX - 1, -1)]
