"""Code normalisation shared by every loader: `038.9`, ` 0389 ` and `0389` are the same code."""

from __future__ import annotations

import re

# An ICD-9 or ICD-10 code written with its dot: 3 characters (or E + 3 digits), dot, 1-4 more.
_DOTTED_ICD = re.compile(r"^(E\d{3}|[A-Z0-9]{3})\.([A-Z0-9]{1,4})$")
MIN_ICD_PREFIX = 3  # an ICD category has 3 characters: truncation stops there


def normalize_code(code: object) -> str:
    """Strip, upper-case, and drop the dot of a dotted ICD code; other ids keep their dots."""
    text = str(code).strip().upper()
    match = _DOTTED_ICD.match(text)
    if match:
        return match.group(1) + match.group(2)
    return text


def icd_prefixes(code: str) -> list[str]:
    """Ancestor candidates of an ICD code by truncation, nearest first: T814XXA -> T814XX ... T81."""
    return [code[:n] for n in range(len(code) - 1, MIN_ICD_PREFIX - 1, -1)]
