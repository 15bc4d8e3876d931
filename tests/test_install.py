"""The install says which Python the code needs: pyproject's `requires-python`, its classifiers and ruff's
target agree with the newest language feature the code uses, and the running interpreter is inside the range.
(pip then refuses an older Python at install time, with the declared range in its message, instead of the
package failing at its first import.)"""

from __future__ import annotations

import re
import sys
import tomllib

from conftest import REPO
from packaging.specifiers import SpecifierSet

# Standard-library names that need a given Python: what the code may use, and from which version.
NEEDS = {
    r"\bStrEnum\b": (3, 11),
    r"^\s*import tomllib|^\s*from tomllib": (3, 11),
    r"\bExceptionGroup\b|\bexcept\*": (3, 11),
    r"from typing import [^\n]*\bSelf\b": (3, 11),
    r"\bTaskGroup\b": (3, 11),
    r"^\s*type \w+ = |\bfrom typing import [^\n]*\boverride\b": (3, 12),
}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _sources() -> list:
    return [*(REPO / "perft_exp").rglob("*.py"), *(REPO / "scripts").glob("*.py"), REPO / "train.py"]


def _needed() -> tuple[tuple[int, int], list[str]]:
    """The newest Python version the sources need, and which files need it."""
    newest, where = (3, 8), []
    for path in _sources():
        text = path.read_text()
        for pattern, version in NEEDS.items():
            if re.search(pattern, text, flags=re.M):
                if version > newest:
                    newest, where = version, []
                if version == newest:
                    where.append(str(path.relative_to(REPO)))
    return newest, where


def _minimum(spec: str) -> tuple[int, int]:
    match = re.fullmatch(r">=\s*3\.(\d+)", spec.split(",")[0].strip())
    assert match, f"requires-python should start with a lower bound such as '>=3.11', got {spec!r}"
    return 3, int(match.group(1))


def test_requires_python_is_the_oldest_python_the_code_runs_on():
    spec = _pyproject()["project"]["requires-python"]
    needed, where = _needed()
    assert needed >= (3, 11), "the code uses enum.StrEnum (3.11+): the scan below must find it"
    assert _minimum(spec) == needed, (
        f"requires-python {spec!r}, but {', '.join(sorted(set(where)))} need Python {needed[0]}.{needed[1]}"
    )
    assert not SpecifierSet(spec).contains("3.10")
    assert SpecifierSet(spec).contains(f"{sys.version_info.major}.{sys.version_info.minor}")


def test_ruff_targets_and_classifiers_match_the_declared_range():
    project = _pyproject()
    spec = SpecifierSet(project["project"]["requires-python"])
    minimum = _minimum(project["project"]["requires-python"])
    assert project["tool"]["ruff"]["target-version"] == f"py{minimum[0]}{minimum[1]}"
    versions = [
        c.rsplit(" :: ", 1)[1]
        for c in project["project"].get("classifiers", [])
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    ]
    assert versions and all(spec.contains(v) for v in versions), versions
