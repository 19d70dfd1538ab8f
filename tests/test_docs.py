"""The reference documents every option and marker keyword the code accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_modelbudget.budgets import budget as budgets
from pytest_modelbudget.plugin import options

DOCS = Path(__file__).resolve().parents[1] / "docs"
REFERENCE = (DOCS / "reference.md").read_text()
OPTIONS = [(flag, ini) for flag, ini, _, _ in options.OPTIONS] + [("--update-budgets", None)]


@pytest.mark.parametrize(("flag", "ini"), OPTIONS, ids=[flag for flag, _ in OPTIONS])
def test_every_option_is_documented(flag: str, ini: str | None) -> None:
    assert f"`{flag}" in REFERENCE
    if ini:
        assert f"`{ini}`" in REFERENCE


@pytest.mark.parametrize("keyword", budgets.KEYWORDS)
def test_every_marker_keyword_is_documented(keyword: str) -> None:
    assert f"| `{keyword}` |" in REFERENCE


def test_the_reference_names_nothing_that_does_not_exist() -> None:
    import re

    # The command line's own flags (profile, merge, compare) have their section and --help.
    sections = re.split(r"^## ", REFERENCE, flags=re.MULTILINE)
    pytest_part = "".join(section for section in sections if not section.startswith("The command line"))
    documented_flags = set(re.findall(r"`(--[a-z-]+)", pytest_part)) - {
        "--junitxml",
        "--benchmark-timer",
        "--benchmark-json",
    }
    assert documented_flags == {flag for flag, _ in OPTIONS}
    documented_keywords = set(re.findall(r"^\| `([a-z_]+)` \|", REFERENCE, re.MULTILINE))
    assert documented_keywords == set(budgets.KEYWORDS)


def test_every_option_is_in_pytest_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    for flag, ini in OPTIONS:
        result.stdout.fnmatch_lines([f"*{flag}*"])
        if ini:
            result.stdout.fnmatch_lines([f"*{ini} (*"])


def test_the_architecture_page_names_every_module() -> None:
    # docs/architecture.md is the map of the tree: a module it does not name is a room
    # missing from the map (subpackages' __init__.py only say what their folder holds).
    page = (DOCS / "architecture.md").read_text()
    package = DOCS.parent / "pytest_modelbudget"
    modules = [
        path.relative_to(package).as_posix()
        for path in sorted(package.rglob("*.py"))
        if not (path.name == "__init__.py" and path.parent != package)
    ]
    assert [m for m in modules if f"`{m}`" not in page] == []
