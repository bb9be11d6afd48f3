"""Imports go one way (docs/DESIGN.md, "Map of the package"): each folder of ``src/racnn`` is a layer and may import
only the layers below it. Checked on the source, statically, every import (at the top or inside a function)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "racnn"

# part of the package -> the parts it may import (besides itself). Lowest first; the root's shared modules are
# parts of their own. The package root (racnn/__init__.py) re-exports the API and is imported by no part but the
# command line (for __version__).
MAY_IMPORT = {
    "safety": set(),
    "config": {"safety"},
    "precision": {"config"},
    "distributed": set(),
    "modeling": {"config", "safety"},
    "checkpoint": {"config", "safety", "modeling"},
    "pictures": {"config", "safety", "modeling"},
    "data": {"config", "safety"},
    "training": {"config", "safety", "precision", "distributed", "modeling", "checkpoint", "pictures", "data"},
    "inference": {"config", "safety", "precision", "modeling", "checkpoint", "pictures", "data"},
    "app": {"config", "safety", "precision", "checkpoint", "pictures", "data", "inference", "cli"},
    "cli": {
        *("config", "safety", "precision", "distributed", "modeling", "checkpoint", "pictures", "data"),
        *("training", "inference", "racnn"),
    },
}
# The one import that runs upward: the config's check of train.best_metric asks the heads for their names
# (racnn.modeling.heads.head_names, inside the function).
UPWARD = {("racnn.config.checks", "racnn.modeling.heads")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "racnn"


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


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_down_the_layers(path):
    module = _module_name(path)
    if module == "racnn":  # the package root re-exports the public names, lazily
        return
    part = _part(module)
    assert part in MAY_IMPORT, f"{module}: a new part of the package; give it a layer in MAY_IMPORT and DESIGN.md"
    allowed = MAY_IMPORT[part] | {part}
    upward = sorted(name for name in _imports(path) if _part(name) not in allowed and (module, name) not in UPWARD)
    assert upward == [], f"{module} may import {sorted(allowed)} only"


def test_the_layers_have_no_cycle():
    """Each part's imports lead only down: the MAY_IMPORT graph is acyclic (so is the package, by the test above)."""
    done: set[str] = set()

    def visit(part: str, stack: tuple[str, ...]) -> None:
        assert part not in stack, f"cycle: {' -> '.join([*stack, part])}"
        if part in done or part == "racnn":
            return
        for lower in MAY_IMPORT[part]:
            visit(lower, (*stack, part))
        done.add(part)

    for part in MAY_IMPORT:
        visit(part, ())


def test_the_folders_are_the_parts():
    """Every folder and root module of the package is a part with a layer; no module is left at the old flat paths."""
    parts = {p.stem for p in PACKAGE.iterdir() if (p.suffix == ".py" or p.is_dir()) and not p.name.startswith("_")}
    parts -= {"static"}
    assert parts == set(MAY_IMPORT), sorted(parts ^ set(MAY_IMPORT))


def test_one_module_per_concept():
    """One precision module (the rule and training's autocast), and no import circle inside the config package."""
    assert [p.relative_to(PACKAGE) for p in PACKAGE.rglob("precision.py")] == [Path("precision.py")]
    order = ["schema", "device", "checks", "loading"]  # each may import only the ones before it
    for i, name in enumerate(order):
        imported = {
            n.rsplit(".", 1)[-1] for n in _imports(PACKAGE / "config" / f"{name}.py") if n.startswith("racnn.config.")
        }
        assert imported <= set(order[:i]), (name, imported)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_fit_one_sitting(path):
    assert len(path.read_text().splitlines()) <= 500, path.name


# The module paths before the folders (issue #24) -> their homes; README "Changes" lists the same.
MOVED = {
    "racnn.backbones": "racnn.modeling.backbones",
    "racnn.hub_weights": "racnn.modeling.hub_weights",
    "racnn.crop": "racnn.modeling.crop",
    "racnn.regions": "racnn.modeling.regions",
    "racnn.model": "racnn.modeling.model",
    "racnn.heads": "racnn.modeling.heads",
    "racnn.losses": "racnn.modeling.losses",
    "racnn.api": "racnn.inference.api",
    "racnn.export": "racnn.inference.export",
    "racnn.parity": "racnn.inference.parity",
    "racnn.plots": "racnn.pictures.plots",
    "racnn.visualize": "racnn.pictures.visualize",
    "racnn.model_pictures": "racnn.pictures.model_pictures",
    "racnn.region_pictures": "racnn.pictures.region_pictures",
    "racnn.cli_errors": "racnn.cli.errors",
    "racnn.cli_flags": "racnn.cli.flags",
    "racnn.train": "racnn.cli.train",
    "racnn.evaluate": "racnn.cli.evaluate",
    "racnn.predict": "racnn.cli.predict",
    "racnn.demo": "racnn.cli.demo",
    "racnn.export_cli": "racnn.cli.export",
    "racnn.verify_cli": "racnn.cli.verify",
    "racnn.config_checks": "racnn.config.checks",
    "racnn.training.precision": "racnn.precision",
    "racnn.engine": "racnn.training",
}


def test_old_module_paths_are_gone_and_listed_in_the_readme():
    readme = (PACKAGE.parents[1] / "README.md").read_text()
    for old, new in MOVED.items():
        assert importlib.util.find_spec(old) is None, old
        assert importlib.util.find_spec(new) is not None, new
        assert f"`{old}`" in readme and f"`{new}`" in readme, old


def test_the_public_names_stay_where_users_find_them():
    import racnn
    import racnn.data
    import racnn.training

    assert all(getattr(racnn, name) is not None for name in racnn.__all__)
    assert all(hasattr(racnn.training, name) for name in racnn.training.__all__)
    assert all(hasattr(racnn.data, name) for name in racnn.data.__all__)
    from racnn.cli import main  # the console script racnn = racnn.cli:main

    assert callable(main)
    assert racnn.RACNN.__module__ == "racnn.modeling.model" and racnn.load.__module__ == "racnn.inference.api"
