"""The documentation stays navigable: a short README, every page of docs/ reachable from
docs/index.md, and no relative link that points nowhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from testdata import TESTS

ROOT = TESTS.parent
DOCS = ROOT / "docs"
LINK = re.compile(r"\]\(([^)\s]+)\)")
README_LIMIT = 10_000


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "DEVELOPERS.md", *sorted(DOCS.rglob("*.md"))]


def relative_links(page: Path) -> list[str]:
    links = [m.group(1) for m in LINK.finditer(page.read_text(encoding="utf-8"))]
    return [
        link.split("#")[0] for link in links if not re.match(r"[a-z]+:", link) and not link.startswith("#")
    ]


def test_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8")) <= README_LIMIT


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    for link in relative_links(page):
        assert (page.parent / link).exists(), f"{page.name}: broken link {link}"


def test_every_docs_page_is_linked_from_the_index() -> None:
    index = DOCS / "index.md"
    linked = {(index.parent / link).resolve() for link in relative_links(index)}
    pages = {p.resolve() for p in DOCS.rglob("*") if p.is_file() and p != index}
    assert pages, "docs/ is empty"
    assert not pages - linked, f"not linked from docs/index.md: {sorted(str(p) for p in pages - linked)}"
