"""--budget-strict / ini budget_strict: no baseline and uncounted ops fail."""

from __future__ import annotations

import pytest
from conftest import write_test

TEST = """
@pytest.mark.model_budget
def test_simple(model_budget):
    model_budget(SimpleModel(), torch.randn(1, 1, 28, 28))

class Spectral(torch.nn.Module):
    def forward(self, x):
        return torch.fft.fft(x).real

@pytest.mark.model_budget
def test_spectral(model_budget):
    model_budget(Spectral(), torch.randn(4, 64))
"""


def test_missing_baseline_fails_in_strict_mode(project: pytest.Pytester) -> None:
    write_test(project, TEST)
    project.runpytest("--model-budget", "-k", "simple").assert_outcomes(passed=1, deselected=1)
    result = project.runpytest("--model-budget", "--budget-strict", "-k", "simple")
    result.assert_outcomes(failed=1, deselected=1)
    result.stdout.fnmatch_lines(
        [
            "*--budget-strict: test_model.py::test_simple has no baseline in budgets.yaml; record one with pytest --model-budget --update-budgets"
        ]
    )
    project.runpytest("--update-budgets", "-k", "simple")
    project.runpytest("--model-budget", "--budget-strict", "-k", "simple").assert_outcomes(
        passed=1, deselected=1
    )


SHOW_WARNINGS = ("-W", "default::pytest_modelbudget.plugin.ModelBudgetWarning")


def test_uncounted_ops_are_listed_and_fail_in_strict_mode(project: pytest.Pytester) -> None:
    write_test(project, TEST)
    result = project.runpytest("--model-budget", *SHOW_WARNINGS)
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "ops with arithmetic but no MAC formula (not counted): aten._fft_r2c x1",
            # A call that counted nothing says so loudly: its 0-MAC baseline would guard nothing.
            "WARNING: test_model.py::test_spectral counted 0 MACs, but ops with arithmetic ran uncounted"
            " (aten._fft_r2c x1): a baseline of 0 MACs guards nothing (--budget-strict fails such a call)",
        ]
    )
    project.runpytest("--update-budgets", *SHOW_WARNINGS).assert_outcomes(passed=2, warnings=1)
    project.makeini("[pytest]\nbudget_strict = true\n")
    result = project.runpytest("--model-budget")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*--budget-strict: ops with arithmetic the counter cannot count: aten._fft_r2c x1"]
    )
