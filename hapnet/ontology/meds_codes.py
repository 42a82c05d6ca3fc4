"""MEDS codes: which events are diagnoses and the ontology id of each, and `meds:DIR` ontologies.

MEDS (Medical Event Data Standard) writes every event as a string `code`. Diagnoses come in the
forms MEDS ETLs write: `ICD9CM//428.0`, `ICD10CM//I50.9` (also with one `/`, as OMOP-derived
`parent_codes` are written), and MIMIC-IV MEDS-Extract's `DIAGNOSIS//ICD//9//4280` /
`DIAGNOSIS//ICD//10//I509`. `--code-pattern REGEX` reads other forms: the whole code must match,
group 1 (or the group named `code`) is the diagnosis code, and an optional group named `version`
(`9`, `10`, `ICD9CM`, ...) gives its system. The data loader (`hapnet.data.meds`) and the
`meds:DIR` ontology read codes through the same `MedsCodes`, so data and ontology ids match.

The file names and split names mirror the `meds` package's (a test holds them equal): importing
`meds` costs start-up time that every `hapnet` command would pay.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hapnet.errors import HapnetError, InputError, error_summary
from hapnet.ontology.codes import normalize_code
from hapnet.ontology.graph import Ontology
from hapnet.ontology.icd_systems import ICD9, ICD10, SYSTEM_NODE, UNDECIDED, system_by_shape, system_id
from hapnet.utils.textio import os_error_reason

# meds.data_subdirectory, meds.code_metadata_filepath, meds.subject_splits_filepath,
# meds.dataset_metadata_filepath, meds.train_split / tuning_split / held_out_split
DATA_FOLDER = "data"
CODES_FILE = "metadata/codes.parquet"
SPLITS_FILE = "metadata/subject_splits.parquet"
DATASET_FILE = "metadata/dataset.json"
TRAIN, TUNING, HELD_OUT = "train", "tuning", "held_out"

ONTOLOGY_PREFIX = "meds:"  # `--ontology meds:DIR`
SYSTEM_LABELS = {ICD9: "ICD-9-CM", ICD10: "ICD-10-CM"}

# The known diagnosis forms: [DIAGNOSIS//]ICD9CM//C, ICD10CM/C, ICD//9//C, ICD9//C, ...
KNOWN_FORMS = re.compile(r"(?:DIAGNOSIS//)?ICD(?://)?(?P<version>9|10)(?:CM)?//?(?P<code>[^/].*)")
KNOWN_FORMS_TEXT = "ICD9CM//428.0, ICD10CM//I50.9, DIAGNOSIS//ICD//9//4280 or DIAGNOSIS//ICD//10//I509"


def compile_code_pattern(text: str | None) -> re.Pattern[str] | None:
    """`--code-pattern`: a regular expression with a group for the code; None keeps the known forms."""
    if text is None or text == "":
        return None
    try:
        pattern = re.compile(text)
    except re.error as exc:
        raise HapnetError(f"--code-pattern {text!r}: not a regular expression ({exc})") from None
    if pattern.groups == 0:
        raise HapnetError(
            f"--code-pattern {text!r}: no group; group 1 (or the group named `code`) is the diagnosis "
            "code, e.g. 'DX//(.+)'"
        )
    return pattern


def _system_of_version(text: str | None) -> int:
    digits = "".join(ch for ch in text or "" if ch.isdigit())
    return {"9": ICD9, "10": ICD10}.get(digits, UNDECIDED)


@dataclass
class MedsCodes:
    """Reads MEDS codes: `diagnosis(raw)` is (system, normalised code) or None (not a diagnosis).

    Results are cached by raw code: a data set has far fewer distinct codes than events.
    """

    pattern: re.Pattern[str] | None = None
    _cache: dict[str, tuple[int, str] | None] = field(default_factory=dict, repr=False)

    @classmethod
    def from_option(cls, code_pattern: str | None) -> MedsCodes:
        return cls(compile_code_pattern(code_pattern))

    def diagnosis(self, raw: str) -> tuple[int, str] | None:
        found = self._cache.get(raw, False)
        if found is False:
            found = self._cache[raw] = self._read(raw)
        return found  # type: ignore[return-value]

    def _read(self, raw: str) -> tuple[int, str] | None:
        text = raw.strip()
        if self.pattern is None:
            match = KNOWN_FORMS.fullmatch(text)
            if match is None:
                return None
            return _system_of_version(match["version"]), normalize_code(match["code"])
        match = self.pattern.fullmatch(text)
        if match is None:
            return None
        names = self.pattern.groupindex
        code = match["code"] if "code" in names else match.group(1)
        if not code or not code.strip():
            return None
        version = match["version"] if "version" in names else None
        return _system_of_version(version), normalize_code(code)

    def describe(self) -> str:
        """The forms read, for messages."""
        if self.pattern is None:
            return f"diagnosis codes such as {KNOWN_FORMS_TEXT}"
        return f"codes matching --code-pattern {self.pattern.pattern!r}"


# ----------------------------------------------------------------------------- meds:DIR ontologies
def parse_meds_source(source: str) -> Path | None:
    """The folder of `meds:DIR`, None for any other ontology source."""
    return Path(source[len(ONTOLOGY_PREFIX) :]) if source.startswith(ONTOLOGY_PREFIX) else None


def parquet_schema(path: Path) -> pa.Schema:
    """The schema of a parquet file (MEDS and OMOP tables too); one line for anything that is not one."""
    try:
        return pq.read_schema(path)
    except OSError as exc:
        reason = os_error_reason(exc) if exc.errno else error_summary(exc)
        raise InputError(path, f"not a readable parquet file ({reason})") from None
    except pa.ArrowException as exc:
        raise InputError(path, f"not a parquet file ({error_summary(exc)})") from None


def _read_codes_table(path: Path) -> pa.Table:
    """code, description and parent_codes of a MEDS codes.parquet (columns checked one by one)."""
    schema = parquet_schema(path)
    if "code" not in schema.names:
        found = ", ".join(schema.names) or "no columns"
        reason = f"no column 'code' (a MEDS codes.parquet has code, description, parent_codes); found {found}"
        raise InputError(path, reason)
    expected = {
        "code": is_text,
        "description": is_text,
        "parent_codes": lambda t: (
            (pa.types.is_list(t) or pa.types.is_large_list(t)) and is_text(t.value_type)
        ),
    }
    wanted = [name for name in expected if name in schema.names]
    for name in wanted:
        kind = schema.field(name).type
        if not expected[name](kind):
            need = "list<string>" if name == "parent_codes" else "string"
            raise InputError(path, f"column {name!r} is {kind}, MEDS needs {need}")
    try:
        return pq.read_table(path, columns=wanted)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(path, f"unreadable parquet data ({error_summary(exc)})") from None


def is_text(kind: pa.DataType) -> bool:
    """A string column's type (string, large string, or a dictionary of either)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def read_meds_ontology(folder: Path, name: str, source: str, codes: MedsCodes) -> Ontology:
    """The diagnosis codes of `folder/metadata/codes.parquet` and their ancestors as an ontology.

    Each code and parent is read like the data's codes: a diagnosis becomes `ICD9:4280` /
    `ICD10:I509` (its system decided by its form, else by its shape) and hangs under the system
    node `ICD9` / `ICD10` when it has no parent; any other code keeps its own (normalised) id.
    Codes that are no diagnosis and no ancestor of one (labs, drugs, ...) are left out, and so is a
    parent that reads as the code itself (`DIAGNOSIS//ICD//9//4280` under `ICD9CM/428.0`).
    """
    path = folder / CODES_FILE
    table = _read_codes_table(path)

    def node_id(raw: str) -> tuple[str, bool]:
        found = codes.diagnosis(raw)
        if found is None:
            return normalize_code(raw), False
        system, code = found
        if system == UNDECIDED:
            system = system_by_shape(code)
        return normalize_code(system_id(system, code)), True

    raw_codes = table.column("code").to_pylist()
    raw_parents = table.column("parent_codes").to_pylist() if "parent_codes" in table.column_names else None
    raw_descriptions = (
        table.column("description").to_pylist() if "description" in table.column_names else None
    )
    parents: dict[str, list[str]] = {}
    descriptions: dict[str, str] = {}
    diagnoses: list[str] = []
    for row, raw in enumerate(raw_codes):
        if raw is None or not raw.strip():
            continue
        node, is_diagnosis = node_id(raw)
        if is_diagnosis:
            diagnoses.append(node)
        described = raw_descriptions[row] if raw_descriptions else None
        if described and described.strip() and not descriptions.get(node):
            descriptions[node] = described.strip()
        known = parents.setdefault(node, [])
        for parent_raw in (raw_parents[row] or []) if raw_parents else []:
            if parent_raw is None or not parent_raw.strip():
                continue
            parent, _ = node_id(parent_raw)
            if parent != node and parent not in known:
                known.append(parent)
    if not diagnoses:
        sample = ", ".join(repr(c) for c in raw_codes[:3] if c)
        raise InputError(
            path,
            f"no diagnosis code among its {len(raw_codes):,} codes (first: {sample or 'none'}); "
            f"expected {codes.describe()}, or name yours with --code-pattern",
        )
    kept = _ancestors_and_self(diagnoses, parents)
    edges: list[tuple[str, str]] = []
    for node in kept:
        above = parents.get(node, [])
        if above:
            edges.extend((parent, node) for parent in above)
            continue
        system = next((s for s, label in SYSTEM_NODE.items() if node.startswith(label + ":")), None)
        edges.append((SYSTEM_NODE[system] if system is not None else "", node))
    used_systems = {s for s, label in SYSTEM_NODE.items() if any(p == label for p, _ in edges)}
    for system in used_systems:
        descriptions[SYSTEM_NODE[system]] = SYSTEM_LABELS[system]
    kept_descriptions = {n: d for n, d in descriptions.items() if n in kept or n in SYSTEM_NODE.values()}
    return Ontology.from_edges(name, edges, kept_descriptions, source=source)


def _ancestors_and_self(start: Iterable[str], parents: dict[str, list[str]]) -> dict[str, None]:
    """The start nodes and every node above them, in first-seen order (an ordered set)."""
    kept: dict[str, None] = {}
    stack = list(start)[::-1]
    while stack:
        node = stack.pop()
        if node in kept:
            continue
        kept[node] = None
        stack.extend(reversed(parents.get(node, [])))
    return kept
