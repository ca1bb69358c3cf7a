"""Imports point one way: each floor of the package imports only from the floors below it.

The floors (docs/architecture.md, "Layout"): 0 errors and packaged defaults, 1 schemas,
2 core (settings, tokens, metrics, redaction, the Kafka layer, the router's model),
3 providers, 4 operators, 5 flows, 6 app (CLI, demo, replay, reports, runner). A module
on floor n that imports a module on a floor above n fails this test, wherever the import
sits (module level or inside a function).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import splitpin

PACKAGE = Path(splitpin.__file__).resolve().parent
FLOORS: dict[str, int] = {
    "splitpin": 0,
    "splitpin.errors": 0,
    "splitpin.defaults": 0,
    "splitpin.schemas": 1,
    "splitpin.core": 2,
    "splitpin.providers": 3,
    "splitpin.operators": 4,
    "splitpin.flows": 5,
    "splitpin.app": 6,
    "splitpin.__main__": 6,
}


def floor_of(module: str) -> int:
    """The floor of the longest FLOORS prefix of `module`."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in FLOORS:
            return FLOORS[prefix]
    msg = f"{module} is on no floor"
    raise AssertionError(msg)


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    # os.walk follows the package's links to flows/, operators/ and schemas/.
    for folder, _, files in os.walk(PACKAGE, followlinks=True):
        for file in files:
            if not file.endswith(".py"):
                continue
            path = Path(folder, file)
            relative = path.relative_to(PACKAGE).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            found[".".join(["splitpin", *parts])] = path
    return found


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name for name in names if name == "splitpin" or name.startswith("splitpin.")}


def test_every_module_sits_on_a_floor() -> None:
    assert len(modules()) > 50
    for module in modules():
        floor_of(module)


def test_no_import_points_upward() -> None:
    upward = [
        f"{module} (floor {floor_of(module)}) imports {name} (floor {floor_of(name)})"
        for module, path in sorted(modules().items())
        for name in sorted(imported(path))
        if floor_of(name) > floor_of(module)
    ]
    assert upward == []


def test_no_generic_top_level_name_is_imported() -> None:
    generic = {"flows", "operators", "schemas", "providers"}
    offenders = [
        f"{module} imports {name}"
        for module, path in sorted(modules().items())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        )
        if name.split(".")[0] in generic
    ]
    assert offenders == []
