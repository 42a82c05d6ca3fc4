"""Ontology file formats, detected from the header: the AHRQ CCS multi-level CSV and the generic
`code,parent[,description]` CSV (several rows for one code = several parents)."""

from __future__ import annotations

import csv
import io
import re

from hapnet.errors import InputError
from hapnet.ontology.codes import normalize_code
from hapnet.ontology.graph import ROOT, Ontology

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
        # one line, though a quoted cell may hold line breaks
        shown = ",".join(" ".join(h.split()) for h in header[:6])[:120]
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
