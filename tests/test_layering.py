"""Imports go one way (docs/DESIGN.md, "Map of the package"): the core knows nothing of data or training, data
knows no model, the training package knows no command line. Checked on the source, statically."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "racnn"
COMMANDS = {
    "racnn.cli",
    "racnn.cli_errors",
    "racnn.cli_flags",
    "racnn.export_cli",
    "racnn.verify_cli",
    "racnn.train",
    "racnn.evaluate",
    "racnn.predict",
    "racnn.demo",
    "racnn.export",
}
CORE = [
    "config",
    "config_checks",
    "safety",
    "hub_weights",
    "precision",
    "backbones",
    "crop",
    "regions",
    "model",
    "losses",
    "checkpoint",
    "distributed",
    "plots",
    "visualize",
    "region_pictures",
    "model_pictures",
]


def _imports(path: Path) -> set[str]:
    """Every racnn module a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:  # relative: resolve against the file's package
                parts = path.relative_to(PACKAGE.parent).with_suffix("").parts[: -node.level]
                names.add(".".join([*parts, node.module]))
            else:
                names.add(node.module)
    return {name for name in names if name == "racnn" or name.startswith("racnn.")}


def _reaches(imported: set[str], forbidden: set[str] | str) -> list[str]:
    prefixes = {forbidden} if isinstance(forbidden, str) else forbidden
    return sorted(n for n in imported if any(n == p or n.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("name", CORE)
def test_core_knows_no_data_training_or_commands(name):
    imported = _imports(PACKAGE / f"{name}.py")
    assert _reaches(imported, {"racnn.data", "racnn.training", "racnn.engine", "racnn.api", *COMMANDS}) == []
    assert "racnn" not in imported  # the package root re-exports the API: importing it would pull in everything


@pytest.mark.parametrize("path", sorted((PACKAGE / "data").glob("*.py")), ids=lambda p: p.name)
def test_data_knows_no_model_or_training(path):
    forbidden = {"racnn.model", "racnn.backbones", "racnn.crop", "racnn.losses", "racnn.training", "racnn.api"}
    assert _reaches(_imports(path), forbidden | COMMANDS | {"racnn.engine"}) == []


@pytest.mark.parametrize("path", sorted((PACKAGE / "training").glob("*.py")), ids=lambda p: p.name)
def test_training_knows_no_command_line(path):
    assert _reaches(_imports(path), COMMANDS | {"racnn.api", "racnn.engine"}) == []


def test_training_modules_fit_one_sitting():
    for path in (PACKAGE / "training").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 500, path.name
