"""`load_ontology`: the built-in ontologies by name (made from the bundled files in
`hapnet.ontologies`, or from simple-icd-10-cm), or any ontology file; compiled once and cached."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from importlib.metadata import version
from pathlib import Path

import numpy as np

from hapnet.errors import HapnetError, InputError
from hapnet.ontology.codes import normalize_code
from hapnet.ontology.formats import parse_ccs_multilevel, parse_ontology_text, parse_parent_csv
from hapnet.ontology.graph import Ontology
from hapnet.ontology.meds_codes import CODES_FILE, MedsCodes, parse_meds_source, read_meds_ontology
from hapnet.utils.cache import cache_dir
from hapnet.utils.textio import atomic_path, decode_text, entry_exists, read_bytes

CACHE_FORMAT = 2  # bump when the cached layout or a loader's output changes
MEDS_FORMAT = 1  # bump when `meds:DIR` ontologies are read otherwise (hapnet.ontology.meds_codes)


@dataclass(frozen=True)
class BuiltinOntology:
    name: str
    description: str
    build: Callable[[], Ontology]
    cache_key: Callable[[], str]


def _bundled(filename: str) -> Path:
    return Path(str(resources.files("hapnet.ontologies").joinpath(filename)))


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
    try:  # a heavy import (the whole ICD-10-CM XML): only when this built-in is first built
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
def load_ontology(
    source: str | Path = DEFAULT_ONTOLOGY, *, levels: int | None = None, code_pattern: str | None = None
) -> Ontology:
    """A built-in ontology by name (`icd9-ccs`, `icd9cm`, `icd10cm`, `icd10cm-ccsr`, `icd9-icd10`), a
    MEDS dataset's codes (`meds:DIR`: DIR/metadata/codes.parquet) or a file.

    Files may be the CCS multi-level CSV or a `code,parent[,description]` CSV, `.csv` or
    `.csv.gz`. `levels=K` keeps only the lowest K levels (see `Ontology.truncate`).
    `code_pattern` (`--code-pattern`) reads the diagnosis codes of a `meds:DIR` ontology as the
    MEDS data loader does; other sources ignore it.
    """
    if isinstance(source, Ontology):
        return source.truncate(levels)
    text_source = str(source)
    meds_folder = parse_meds_source(text_source)
    if text_source in BUILTINS:
        builtin = BUILTINS[text_source]
        ontology = _cached(f"{builtin.name}-{builtin.cache_key()}", builtin.build)
    elif meds_folder is not None:
        ontology = _load_meds_ontology(meds_folder, text_source, code_pattern)
    else:
        path = Path(text_source)
        if not entry_exists(path):  # else read_bytes says what is wrong (a folder, a link loop, ...)
            names = ", ".join(BUILTINS)
            raise InputError(path, f"no such file, and not a built-in ontology ({names}) or meds:DIR")
        raw = read_bytes(path)
        text = decode_text(raw, path)  # every time, cached or not: checks the data, warns on 8-bit or UTF-16
        name = path.name.split(".")[0]

        def build() -> Ontology:
            return parse_ontology_text(text, str(path), name)

        # The name is part of the key: it is stored in the ontology (root description).
        ontology = _cached(f"file-{_sha256(name.encode() + b'/' + raw)}", build)
        ontology.source = str(path)
    return ontology.truncate(levels)


def _load_meds_ontology(folder: Path, source: str, code_pattern: str | None) -> Ontology:
    """`meds:DIR`: the diagnosis codes of DIR/metadata/codes.parquet, cached by its content."""
    if not entry_exists(folder):
        raise InputError(source, f"no such folder (expected a MEDS dataset folder with {CODES_FILE})")
    codes = MedsCodes.from_option(code_pattern)
    path = folder / CODES_FILE
    raw = read_bytes(path)  # one line for a missing, unreadable or folder-shaped file
    name = f"meds:{folder.resolve().name or folder}"
    key = f"{MEDS_FORMAT}\n{name}\n{code_pattern or ''}\n".encode() + raw
    ontology = _cached(f"meds-{_sha256(key)}", lambda: read_meds_ontology(folder, name, source, codes))
    ontology.source = source
    return ontology
