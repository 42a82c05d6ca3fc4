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
from hapnet.textio import atomic_path, decode_text, read_bytes

CACHE_FORMAT = 2  # bump when the cached layout or a loader's output changes


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
# One field: '...' or "..." (a doubled quote inside stands for one) or bare, then a comma or the end.
_CCS_FIELD = re.compile(r"""\s*(?:'((?:[^']|'')*)'|"((?:[^"]|"")*)"|([^,]*))\s*(?:,|$)""")


def _ccs_fields(line: str) -> list[str]:
    """Split one CCS line: fields quoted with ' or " (labels may hold commas and apostrophes)."""
    fields = []
    pos = 0
    while pos < len(line):
        match = _CCS_FIELD.match(line, pos)
        if match is None or match.end() == pos:
            break
        single, double, bare = match.groups()
        if single is not None:
            fields.append(single.replace("''", "'").strip())
        elif double is not None:
            fields.append(double.replace('""', '"').strip())
        else:
            fields.append(bare.strip())
        pos = match.end()
    return fields


def _first_line(lines: list[str]) -> int:
    """Index of the first non-blank line (the header), len(lines) when there is none."""
    return next((i for i, line in enumerate(lines) if line.strip()), len(lines))


def parse_ccs_multilevel(
    text: str, source: str, name: str = "ccs", code_descriptions: dict[str, str] | None = None
) -> Ontology:
    """AHRQ CCS multi-level: code, then (id, label) for levels 1-4; blank deeper levels skipped.

    CCS category ids are namespaced `CCS:1.2.3` so they never collide with ICD-9 codes. The CCS
    file has no code descriptions: `code_descriptions` (normalised code -> text) supplies them.
    """
    code_descriptions = code_descriptions or {}
    lines = text.splitlines()
    header = _first_line(lines)
    edges: list[tuple[str, str]] = []
    descriptions: dict[str, str] = {}
    for number, line in enumerate(lines[header + 1 :], start=header + 2):
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
        descriptions.setdefault(code, code_descriptions.get(code, ""))
    if not edges:
        raise InputError(source, "header only, no data rows")
    return Ontology.from_edges(name, edges, descriptions, source=source)


_CODE_COLUMNS = ("code", "id", "node", "child")
_PARENT_COLUMNS = ("parent", "parent_code", "parent_id")
_DESCRIPTION_COLUMNS = ("description", "desc", "label", "name", "title")


def _column(columns: list[str], names: tuple[str, ...]) -> int | None:
    return next((columns.index(c) for c in names if c in columns), None)


def parse_parent_csv(text: str, source: str, name: str = "ontology") -> Ontology:
    """Generic `code,parent[,description]` CSV; several rows for one code = several parents."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header: list[str] = []
        while not any(cell.strip() for cell in header):  # skip blank lines before the header
            header = next(reader)
    except StopIteration:
        raise InputError(source, "empty file") from None
    except csv.Error as exc:
        raise InputError(source, f"unreadable CSV ({exc})", reader.line_num) from None
    columns = [h.strip().lower() for h in header]
    code_col, parent_col = _column(columns, _CODE_COLUMNS), _column(columns, _PARENT_COLUMNS)
    if code_col is None or parent_col is None:
        shown = ",".join(h.strip() for h in header[:6])[:120]
        raise InputError(
            source,
            f"wrong columns '{shown}': expected a header code,parent[,description] "
            f"or the CCS multi-level header ('ICD-9-CM CODE','CCS LVL 1',...)",
            reader.line_num,
        )
    desc_col = _column(columns, _DESCRIPTION_COLUMNS)
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
    text = text.lstrip("\ufeff")
    if not text.strip():
        raise InputError(source, "empty file")
    first = text.lstrip().split("\n", 1)[0].strip()
    if first.startswith(CCS_HEADER) or "CCS LVL 1" in first.upper():
        return parse_ccs_multilevel(text, source, name)
    return parse_parent_csv(text, source, name)


# ----------------------------------------------------------------------------- built-ins
def _bundled_text(filename: str) -> str:
    path = _bundled(filename)
    return decode_text(read_bytes(path), path)


def _icd9cm_descriptions() -> dict[str, str]:
    """ICD-9-CM code -> description from the bundled CMS v32 file (chapters and sections too)."""
    reader = csv.DictReader(io.StringIO(_bundled_text("icd9cm_2015.csv.gz"), newline=""))
    return {normalize_code(row["code"]): row["description"].strip() for row in reader}


def _build_icd9_ccs() -> Ontology:
    """CCS multi-level; the CCS file has no code descriptions, so they come from ICD-9-CM v32.

    27 CCS codes retired before FY2015 (`0420`, `30510`, ...) are not in v32 and keep an empty one.
    """
    text = _bundled_text("ccs_multi_dx_tool_2015.csv.gz")
    return parse_ccs_multilevel(text, "icd9-ccs", "icd9-ccs", code_descriptions=_icd9cm_descriptions())


def _build_icd9cm() -> Ontology:
    return parse_parent_csv(_bundled_text("icd9cm_2015.csv.gz"), "icd9cm", "icd9cm")


def _build_icd10cm_ccsr() -> Ontology:
    """Body systems (level 1) and CCSR categories (level 2) are namespaced `CCSR:CIR`, `CCSR:CIR007`.

    Quirk handled: the body system `XXX` and its categories `XXX000` / `XXX111` mark codes that are
    unacceptable as a principal / first-listed diagnosis in the default-CCSR columns; the file has
    no code under them, so these three empty category nodes are dropped.
    """
    raw = parse_parent_csv(_bundled_text("icd10cm_ccsr_v2023_1.csv.gz"), "icd10cm-ccsr", "icd10cm-ccsr")
    is_code = raw.levels == raw.depth
    # Categories with at least one code, then body systems with at least one such category.
    kept = np.zeros(len(raw), dtype=bool)
    kept[is_code] = True
    for level in range(raw.depth - 1, 0, -1):
        has_kept_child = kept[raw.edge_child] & (raw.levels[raw.edge_parent] == level)
        kept[raw.edge_parent[has_kept_child]] = True
    node_id = [raw.ids[i] if is_code[i] else f"CCSR:{raw.ids[i]}" for i in range(len(raw))]
    edges = [
        ("" if p == 0 else node_id[p], node_id[c])
        for p, c in zip(raw.edge_parent.tolist(), raw.edge_child.tolist(), strict=True)
        if kept[c]
    ]
    descriptions = {node_id[i]: raw.descriptions[i] for i in range(1, len(raw)) if kept[i]}
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
        raise HapnetError("icd10cm needs simple-icd-10-cm: pip install simple-icd-10-cm") from None
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
    empty = {n for n in descriptions if n.startswith("BLOCK:") and n not in with_children}
    edges = [(p, c) for p, c in edges if c not in empty]
    descriptions = {n: d for n, d in descriptions.items() if n not in empty}
    return Ontology.from_edges("icd10cm", edges, descriptions, source="icd10cm")


def _build_icd9_icd10() -> Ontology:
    """ICD-9 CCS and ICD-10-CM under one root, for data that mixes both (MIMIC-IV).

    root -> `ICD9` (ICD-9-CM) -> the icd9-ccs tree, root -> `ICD10` (ICD-10-CM) -> the icd10cm tree;
    every other id carries its system: `ICD9:4019`, `ICD9:CCS:7.1`, `ICD10:I10`, `ICD10:CHAPTER:9`.
    """
    edges: list[tuple[str, str]] = []
    descriptions: dict[str, str] = {}
    for system, label, part in (("ICD9", "ICD-9-CM", "icd9-ccs"), ("ICD10", "ICD-10-CM", "icd10cm")):
        tree = load_ontology(part)
        node_id = [system] + [f"{system}:{node}" for node in tree.ids[1:]]
        descriptions[system] = label
        descriptions.update(zip(node_id[1:], tree.descriptions[1:], strict=True))
        edges.append(("", system))
        edges.extend((node_id[p], node_id[c]) for p, c in zip(tree.edge_parent, tree.edge_child, strict=True))
    return Ontology.from_edges("icd9-icd10", edges, descriptions, source="icd9-icd10")


def _file_key(*filenames: str) -> Callable[[], str]:
    """Cache key of a built-in made from bundled files: a hash of their contents."""
    return lambda: _sha256(b"".join(_sha256(read_bytes(_bundled(f))).encode() for f in filenames))


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
            _file_key("ccs_multi_dx_tool_2015.csv.gz", "icd9cm_2015.csv.gz"),
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
        BuiltinOntology(
            "icd9-icd10",
            "ICD9 (icd9-ccs) and ICD10 (icd10cm) under one root, ids ICD9:4019 / ICD10:I10 (MIMIC-IV)",
            _build_icd9_icd10,
            lambda: _sha256(
                (_file_key("ccs_multi_dx_tool_2015.csv.gz", "icd9cm_2015.csv.gz")() + _icd10cm_key()).encode()
            ),
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
    """A built-in ontology by name (`icd9-ccs`, `icd9cm`, `icd10cm`, `icd10cm-ccsr`, `icd9-icd10`) or a file.

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
        text = decode_text(raw, path)  # every time, cached or not: checks the data, warns on latin-1
        name = path.name.split(".")[0]

        def build() -> Ontology:
            return parse_ontology_text(text, str(path), name)

        # The name is part of the key: it is stored in the ontology (root description).
        ontology = _cached(f"file-{_sha256(name.encode() + b'/' + raw)}", build)
        ontology.source = str(path)
    return ontology.truncate(levels)
