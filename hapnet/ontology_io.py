"""Ontology loaders: built-in ontologies by name, and files in the CCS multi-level or
`code,parent[,description]` CSV formats (auto-detected). Results are cached on disk.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from hapnet.codes import normalize_code
from hapnet.errors import HapnetError, InputError
from hapnet.ontology import ROOT, Ontology
from hapnet.textio import atomic_path, read_bytes, decode_text

CACHE_FORMAT = 1  # bump when the cached layout or a loader's output changes


@dataclass(frozen=True)
class BuiltinOntology:
    name: str
    description: str
    build: Callable[[], Ontology]
    cache_key: Callable[[], str]


def _bundled(filename: str) -> Path:
    return Path(str(resources.files("hapnet.ontologies").joinpath(filename)))


# ----------------------------------------------------------------------------- file formats
CCS_HEADER = "'ICD-9-CM CODE'"
_CCS_FIELD = re.compile(r"""\s*(?:'([^']*)'|"([^"]*)"|([^,]*))\s*(?:,|$)""")


def _ccs_fields(line: str) -> list[str]:
    """Split one CCS line: fields quoted with ' or " (labels may hold commas and apostrophes)."""
    fields = []
    pos = 0
    while pos < len(line):
        match = _CCS_FIELD.match(line, pos)
        if match is None or match.end() == pos:
            break
        fields.append(next(g for g in match.groups() if g is not None).strip())
        pos = match.end()
    return fields


def parse_ccs_multilevel(text: str, source: str, name: str = "ccs") -> Ontology:
    """AHRQ CCS multi-level: code, then (id, label) for levels 1-4; blank deeper levels skipped.

    CCS category ids are namespaced `CCS:1.2.3` so they never collide with ICD-9 codes.
    """
    lines = text.splitlines()
    edges: list[tuple[str, str]] = []
    descriptions: dict[str, str] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = _ccs_fields(line)
        if len(fields) < 9:
            raise InputError(source, f"truncated CCS row: expected 9 fields, found {len(fields)}", number)
        code = normalize_code(fields[0])
        if not code:
            raise InputError(source, "empty ICD-9-CM code", number)
        parent = ""
        for level in range(4):
            category, label = fields[1 + 2 * level], fields[2 + 2 * level]
            if not category:
                continue
            node = f"CCS:{category}"
            descriptions.setdefault(node, label)
            edges.append((parent, node))
            parent = node
        if not parent:
            raise InputError(source, f"code {code} has no CCS category", number)
        edges.append((parent, code))
        descriptions.setdefault(code, "")
    if not edges:
        raise InputError(source, "no data rows after the header")
    return Ontology.from_edges(name, edges, descriptions, source=source)


_DESCRIPTION_COLUMNS = ("description", "desc", "label", "name", "title")


def parse_parent_csv(text: str, source: str, name: str = "ontology") -> Ontology:
    """Generic `code,parent[,description]` CSV; several rows for one code = several parents."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(source, "empty file") from None
    except csv.Error as exc:
        raise InputError(source, f"unreadable CSV ({exc})", 1) from None
    columns = [h.strip().lower() for h in header]
    if "code" not in columns or "parent" not in columns:
        raise InputError(
            source,
            f"wrong columns {header[:6]}: expected a header code,parent[,description] "
            f"or the CCS multi-level header",
            1,
        )
    code_col, parent_col = columns.index("code"), columns.index("parent")
    desc_col = next((columns.index(c) for c in _DESCRIPTION_COLUMNS if c in columns), None)
    edges: list[tuple[str, str]] = []
    descriptions: dict[str, str] = {}
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            number = reader.line_num
            if len(row) <= max(code_col, parent_col):
                raise InputError(source, f"expected {len(header)} fields, found {len(row)}", number)
            code = normalize_code(row[code_col])
            if not code:
                raise InputError(source, "empty code", number)
            if code == ROOT:
                raise InputError(source, f"{ROOT!r} is reserved for the artificial root", number)
            parent = normalize_code(row[parent_col])
            if parent == code:
                raise InputError(source, f"self-loop: {code!r} is its own parent", number)
            edges.append((parent, code))
            description = row[desc_col].strip() if desc_col is not None and desc_col < len(row) else ""
            if description or code not in descriptions:
                descriptions[code] = description or descriptions.get(code, "")
    except csv.Error as exc:
        raise InputError(source, f"unreadable CSV ({exc})", reader.line_num) from None
    if not edges:
        raise InputError(source, "header only, no data rows")
    return Ontology.from_edges(name, edges, descriptions, source=source)


def parse_ontology_text(text: str, source: str, name: str) -> Ontology:
    """Detect the format from the header line and parse."""
    first = text.lstrip("\ufeff").split("\n", 1)[0].strip()
    if not first and not text.strip():
        raise InputError(source, "empty file")
    if first.startswith(CCS_HEADER) or "CCS LVL 1" in first.upper():
        return parse_ccs_multilevel(text, source, name)
    return parse_parent_csv(text, source, name)


# ----------------------------------------------------------------------------- built-ins
def _build_icd9_ccs() -> Ontology:
    path = _bundled("ccs_multi_dx_tool_2015.csv.gz")
    return parse_ccs_multilevel(decode_text(read_bytes(path), path), "icd9-ccs", "icd9-ccs")


def _build_icd9cm() -> Ontology:
    path = _bundled("icd9cm_2015.csv.gz")
    return parse_parent_csv(decode_text(read_bytes(path), path), "icd9cm", "icd9cm")


def _build_icd10cm_ccsr() -> Ontology:
    """CCSR categories and body systems are namespaced `CCSR:CIR007`, `CCSR:CIR`."""
    path = _bundled("icd10cm_ccsr_v2023_1.csv.gz")
    raw = parse_parent_csv(decode_text(read_bytes(path), path), "icd10cm-ccsr", "icd10cm-ccsr")
    has_children = raw.num_children > 0
    rename = {i: f"CCSR:{raw.ids[i]}" for i in np.flatnonzero(has_children) if i != 0}
    edges = [
        ("" if p == 0 else rename.get(p, raw.ids[p]), rename.get(c, raw.ids[c]))
        for p, c in zip(raw.edge_parent.tolist(), raw.edge_child.tolist())
    ]
    descriptions = {rename.get(i, raw.ids[i]): raw.descriptions[i] for i in range(1, len(raw))}
    return Ontology.from_edges("icd10cm-ccsr", edges, descriptions, source="icd10cm-ccsr")


def _build_icd10cm() -> Ontology:
    """ICD-10-CM chapter -> block -> category -> subcategory -> code from `simple-icd-10-cm`.

    Quirks handled: chapters and blocks are namespaced (`CHAPTER:9`, `BLOCK:I10-I1A`) because 39
    names are both a block and a category (`B10`), for which the package's get_parent is
    ambiguous; empty "header" blocks (`C00-C96`) with no children are dropped.
    """
    try:
        import simple_icd_10_cm as cm
    except ImportError:  # pragma: no cover - it is a declared dependency
        raise HapnetError("icd10cm needs the package simple-icd-10-cm (pip install simple-icd-10-cm)") from None
    edges: list[tuple[str, str]] = []
    descriptions: dict[str, str] = {}
    chapter = ""
    seen_blocks: set[str] = set()
    for item in cm.get_all_codes(True):
        if cm.is_chapter(item):
            chapter = f"CHAPTER:{item}"
            edges.append(("", chapter))
            descriptions[chapter] = cm.get_description(item)
        elif cm.is_block(item) and item not in seen_blocks:
            # First occurrence of an ambiguous name is the block, the second its category.
            seen_blocks.add(item)
            block = f"BLOCK:{item}"
            edges.append((chapter, block))
            descriptions[block] = cm.get_description(item)
        else:
            code = normalize_code(item)
            parent = cm.get_parent(item)
            parent_id = f"BLOCK:{parent}" if "." not in item else normalize_code(parent)
            edges.append((parent_id, code))
            descriptions[code] = cm.get_description(item)
    with_children = {p for p, _ in edges}
    edges = [(p, c) for p, c in edges if not (c.startswith("BLOCK:") and c not in with_children)]
    descriptions = {n: d for n, d in descriptions.items() if not (n.startswith("BLOCK:") and n not in with_children)}
    return Ontology.from_edges("icd10cm", edges, descriptions, source="icd10cm")


def _file_key(filename: str) -> Callable[[], str]:
    return lambda: _sha256(read_bytes(_bundled(filename)))


def _icd10cm_key() -> str:
    from importlib.metadata import version

    return "simple-icd-10-cm-" + version("simple-icd-10-cm")


BUILTINS: dict[str, BuiltinOntology] = {
    b.name: b
    for b in [
        BuiltinOntology(
            "icd9-ccs",
            "AHRQ CCS multi-level for ICD-9-CM diagnoses, 2015 (the HAP and GRAM papers' ontology)",
            _build_icd9_ccs,
            _file_key("ccs_multi_dx_tool_2015.csv.gz"),
        ),
        BuiltinOntology(
            "icd9cm",
            "ICD-9-CM chapter > section > 3-digit > 4-digit > 5-digit (CMS v32, FY2015)",
            _build_icd9cm,
            _file_key("icd9cm_2015.csv.gz"),
        ),
        BuiltinOntology(
            "icd10cm",
            "ICD-10-CM FY2026 chapter > block > category > subcategory > code (simple-icd-10-cm)",
            _build_icd10cm,
            _icd10cm_key,
        ),
        BuiltinOntology(
            "icd10cm-ccsr",
            "ICD-10-CM codes under AHRQ CCSR v2023.1 categories under body systems (a DAG)",
            _build_icd10cm_ccsr,
            _file_key("icd10cm_ccsr_v2023_1.csv.gz"),
        ),
    ]
}
DEFAULT_ONTOLOGY = "icd9-ccs"


# ----------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    """`$HAPNET_CACHE_DIR`, else `$XDG_CACHE_HOME/hapnet`, else `~/.cache/hapnet`."""
    if os.environ.get("HAPNET_CACHE_DIR"):
        return Path(os.environ["HAPNET_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hapnet"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:24]


def _join(strings: list[str]) -> np.ndarray:
    text = "\n".join(s.replace("\n", " ") for s in strings)
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def _split(array: np.ndarray) -> list[str]:
    return array.tobytes().decode("utf-8").split("\n")


def save_ontology(ontology: Ontology, path: Path) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                name=_join([ontology.name, ontology.source]),
                ids=_join(ontology.ids),
                descriptions=_join(ontology.descriptions),
                edge_parent=ontology.edge_parent,
                edge_child=ontology.edge_child,
                levels=ontology.levels,
            )


def read_cached_ontology(path: Path) -> Ontology:
    with np.load(path, allow_pickle=False) as data:
        name, source = _split(data["name"])
        return Ontology(
            name=name,
            ids=_split(data["ids"]),
            descriptions=_split(data["descriptions"]),
            edge_parent=data["edge_parent"],
            edge_child=data["edge_child"],
            levels=data["levels"],
            source=source,
        )


def _cached(key: str, build: Callable[[], Ontology]) -> Ontology:
    path = cache_dir() / f"ontology-v{CACHE_FORMAT}-{key}.npz"
    if path.exists():
        try:
            return read_cached_ontology(path)
        except Exception:  # noqa: BLE001 - a broken cache entry is rebuilt, never fatal
            pass
    ontology = build()
    try:
        save_ontology(ontology, path)
    except OSError:
        pass  # read-only home: work without a cache
    return ontology


# ----------------------------------------------------------------------------- entry point
def load_ontology(source: str | Path = DEFAULT_ONTOLOGY, *, levels: int | None = None) -> Ontology:
    """A built-in ontology by name (`icd9-ccs`, `icd9cm`, `icd10cm`, `icd10cm-ccsr`) or a file.

    Files may be the CCS multi-level CSV or a `code,parent[,description]` CSV, `.csv` or
    `.csv.gz`. `levels=K` keeps only the lowest K levels (see `Ontology.truncate`).
    """
    if isinstance(source, Ontology):
        return source.truncate(levels)
    text_source = str(source)
    if text_source in BUILTINS:
        builtin = BUILTINS[text_source]
        ontology = _cached(f"{builtin.name}-{builtin.cache_key()}", builtin.build)
    else:
        path = Path(text_source)
        if not path.exists():
            names = ", ".join(BUILTINS)
            raise InputError(path, f"no such file, and not a built-in ontology ({names})")
        raw = read_bytes(path)
        name = path.name.split(".")[0]

        def build() -> Ontology:
            return parse_ontology_text(decode_text(raw, path), str(path), name)

        ontology = _cached(f"file-{_sha256(raw)}", build)
        ontology.source = str(path)
    return ontology.truncate(levels)
