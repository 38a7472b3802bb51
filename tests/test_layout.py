"""The house rules that keep one home per concept: tests mirror the packages, and the light packages keep their
import boundaries (``rewards/`` imports no project package; ``data_recipes/`` imports no ``align`` or ``stages``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("align", "rewards", "stages", "data_recipes")
# End-to-end and cross-cutting tests live at the top of tests/: they exercise run_pipeline as a whole.
TOP_LEVEL = {"test_pipeline.py", "test_faults.py", "test_layout.py", "test_doctests.py"}


def _module_for(test: Path) -> Path | None:
    """``tests/<pkg>/test_<module>[_<aspect>].py`` -> ``<pkg>/<module>.py`` (the longest module name that exists)."""
    parts = test.stem[len("test_"):].split("_")
    for n in range(len(parts), 0, -1):
        candidate = REPO / test.parent.name / ("_".join(parts[:n]) + ".py")
        if candidate.is_file():
            return candidate
    return None


def test_tests_mirror_the_packages():
    problems = []
    for test in sorted((REPO / "tests").rglob("test_*.py")):
        rel = test.relative_to(REPO / "tests")
        if len(rel.parts) == 1:
            if rel.name not in TOP_LEVEL:
                problems.append(f"tests/{rel}: top-level tests are end-to-end only ({sorted(TOP_LEVEL)})")
            continue
        if rel.parts[0] not in PACKAGES or len(rel.parts) != 2:
            problems.append(f"tests/{rel}: not under tests/<package>/ for a package in {PACKAGES}")
        elif _module_for(test) is None:
            problems.append(f"tests/{rel}: no module {rel.parts[0]}/<name>.py matches test_<name>[_<aspect>].py")
    assert not problems, "\n".join(problems)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package, forbidden", [
    ("rewards", {"align", "stages", "data_recipes"}),
    ("data_recipes", {"align", "stages"}),
])
def test_import_boundaries(package, forbidden):
    bad = {str(p.relative_to(REPO)): sorted(_imports(p) & forbidden) for p in (REPO / package).rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}
