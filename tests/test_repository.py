"""The repository as a whole: no merge left half-done in its text files."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^(<{7}|>{7}) ", re.MULTILINE)  # what git writes around a conflict


def test_no_conflict_markers_in_code_or_docs():
    files = [REPO / "README.md", *REPO.glob("docs/*.md"), *REPO.glob("src/racnn/**/*.py"), *REPO.glob("tests/*.py")]
    files += [*REPO.glob("src/racnn/config/recipes/*.yaml"), *REPO.glob("benchmarks/*.py")]
    marked = [str(p.relative_to(REPO)) for p in files if MARKER.search(p.read_text(encoding="utf-8"))]
    assert marked == []
