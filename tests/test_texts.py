"""Text that states facts about the code: the version number and the ``--amp`` help agree with what they describe."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import racnn
from racnn.cli import main
from racnn.config import RECIPES

REPO = Path(__file__).resolve().parents[1]


def test_version_is_one_number_everywhere(capsys):
    pyproject = re.search(r'^version = "([^"]+)"$', (REPO / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"racnn {pyproject}" == f"racnn {racnn.__version__}"


def test_docs_claim_no_version_newer_than_the_package():
    """A "since 0.x" or "before racnn 0.x" in the docs names a version that exists (this one or an older one)."""
    current = tuple(int(part) for part in racnn.__version__.split(".")[:2])
    claims = re.compile(r"\b(?:since|before|until) (?:racnn )?(\d+)\.(\d+)(?![\d.]*\s*%)")
    for path in [REPO / "README.md", *REPO.glob("docs/*.md")]:
        for major, minor in claims.findall(path.read_text(encoding="utf-8")):
            assert (int(major), int(minor)) <= current, f"{path.name} names racnn {major}.{minor}"


def test_train_amp_help_says_what_the_recipes_set(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    said = re.search(r"the recipes set (\w+), but ([\w, ]+?) (\w+)\)", text)
    assert said is not None, "train --help no longer says what the recipes set: update this test with it"
    usual, exceptions, other = said.group(1), said.group(2).split(", "), said.group(3)
    amp = {path.stem: yaml.safe_load(path.read_text())["train"]["amp"] for path in RECIPES.glob("*.yaml")}
    assert {name for name, value in amp.items() if value != usual} == set(exceptions)
    assert {amp[name] for name in exceptions} == {other}
