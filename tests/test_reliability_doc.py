"""docs/reliability.md cannot rot: every test it names exists, and every row names one."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "reliability.md"
_REF = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
    }


def _rows() -> list[str]:
    lines = DOC.read_text().splitlines()
    return [
        line
        for line in lines
        if line.startswith("| ") and not line.startswith(("| fault", "| input", "| mistake"))
    ]


def test_every_test_named_in_reliability_md_exists() -> None:
    refs = _REF.findall(DOC.read_text())
    assert len(refs) > 50
    missing = []
    found: dict[str, set[str]] = {}
    for file, name in refs:
        path = REPO / file
        if not path.exists():
            missing.append(f"{file} (no such file)")
            continue
        if name not in found.setdefault(file, _tests_in(path)):
            missing.append(f"{file}::{name}")
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"


def test_every_row_of_reliability_md_names_a_test() -> None:
    rows = _rows()
    assert len(rows) > 40
    bare = [row.split("|")[1].strip() for row in rows if not _REF.search(row)]
    assert not bare, f"rows of docs/reliability.md without a test: {bare}"
    # fault | what happens | proven by | figure: a test named in another column is a typo
    misplaced = [row for row in rows if _REF.search("|".join(row.split("|")[:3]))]
    assert not misplaced
    assert all(row.count("|") == 5 for row in rows), [r for r in rows if r.count("|") != 5]
