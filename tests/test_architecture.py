"""Imports point one way: protocols <- firmware, protocols <- gateway; hil uses the others."""

from __future__ import annotations

import ast
import pathlib

import pytest

from tests.conftest import ROOT

# What each top-level folder may import from the project's own folders.
ALLOWED = {
    "protocols": set(),
    "firmware": {"protocols", "firmware"},
    "gateway": {"protocols", "gateway"},
    "hil": {"protocols", "gateway", "firmware", "hil"},
}
PROJECT = set(ALLOWED) | {"tests"}
# No I/O in the sans-I/O core.
FORBIDDEN_IN_PROTOCOLS = {
    "socket",
    "asyncio",
    "uasyncio",
    "select",
    "os",
    "io",
    "logging",
    "time",
    "threading",
    "machine",
    "serial",
    "typing",
    "dataclasses",
    "enum",
}


def imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_imports_point_one_way(folder: str) -> None:
    for path in (ROOT / folder).rglob("*.py"):
        own = imported_roots(path) & PROJECT
        assert own <= ALLOWED[folder], "%s imports %s" % (path.relative_to(ROOT), sorted(own - ALLOWED[folder]))


def test_protocols_does_no_io() -> None:
    for path in (ROOT / "protocols").rglob("*.py"):
        bad = imported_roots(path) & FORBIDDEN_IN_PROTOCOLS
        assert not bad, "%s imports %s" % (path.relative_to(ROOT), sorted(bad))
