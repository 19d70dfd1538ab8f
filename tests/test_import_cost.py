"""Importing and configuring the plugin must not import torch (pytest loads it on every run)."""

from __future__ import annotations

import pytest

RECORDER = """
import sys

def pytest_unconfigure(config):
    with open("modules.txt", "w") as handle:
        handle.write("\\n".join(sorted(sys.modules)))
"""


@pytest.mark.parametrize(
    "args", [["--co"], ["--co", "--model-budget"], ["--co", "--update-budgets"], ["--help"]]
)
def test_a_run_that_measures_nothing_imports_no_torch(pytester: pytest.Pytester, args: list[str]) -> None:
    pytester.makeconftest(RECORDER)
    result = pytester.runpytest_subprocess(*args)
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    modules = (pytester.path / "modules.txt").read_text().split()
    assert "pytest_modelbudget.plugin" in modules  # the plugin was loaded and configured
    assert "torch" not in modules
