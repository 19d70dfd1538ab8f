"""pytest-xdist: workers measure, the controller merges, writes once and summarises."""

from __future__ import annotations

import pytest
from conftest import write_test

pytest.importorskip("xdist")

TESTS = """
@pytest.mark.parametrize("hidden", [1, 2, 3, 4, 5, 6])
@pytest.mark.model_budget
def test_widths(model_budget, hidden):
    model_budget(torch.nn.Linear(10, hidden), torch.randn(1, 10))

@pytest.mark.model_budget
def test_simple(model_budget):
    model_budget(SimpleModel(), torch.randn(1, 1, 28, 28), name="b1")
    model_budget(SimpleModel(), torch.randn(2, 1, 28, 28), name="b2")
"""


@pytest.mark.parametrize("distribution", [["-n", "2"], ["--tx", "2*popen", "--dist", "load"]])
def test_parallel_update_is_byte_identical_to_serial(
    project: pytest.Pytester, distribution: list[str]
) -> None:
    write_test(project, TESTS)
    path = project.path / "budgets.yaml"
    project.runpytest_subprocess("-p", "no:xdist", "--update-budgets").assert_outcomes(passed=7)
    serial = path.read_bytes()
    path.unlink()
    result = project.runpytest_subprocess(*distribution, "--update-budgets")
    result.assert_outcomes(passed=7)
    assert path.read_bytes() == serial
    assert result.stdout.str().count("= model budgets =") == 1
    result.stdout.fnmatch_lines(
        [
            "8 measured call(s): 8 updated",
            "baselines: 8 written (8 new), 0 stale removed; budgets.yaml written",
        ]
    )


def test_workers_check_against_the_controllers_baselines(project: pytest.Pytester) -> None:
    write_test(project, TESTS)
    project.runpytest_subprocess("--update-budgets").assert_outcomes(passed=7)
    path = project.path / "budgets.yaml"
    path.write_text(path.read_text().replace("macs: 30\n", "macs: 29\n"))  # test_widths[3]
    result = project.runpytest_subprocess("-n", "2", "--model-budget")
    result.assert_outcomes(passed=6, failed=1)
    result.stdout.fnmatch_lines(["*macs 30 > baseline 29 (+3.4%)*", "8 measured call(s): 7 ok, 1 over"])


def test_a_crashed_worker_costs_only_its_own_entries(project: pytest.Pytester) -> None:
    write_test(
        project,
        TESTS
        + """
def test_crash():
    import os
    os._exit(1)
""",
    )
    (project.path / "budgets.yaml").write_text(
        "version: 1\nentries:\n  test_model.py::test_gone:\n    macs: 1\n"
    )
    result = project.runpytest_subprocess("-n", "2", "--update-budgets")
    result.stdout.fnmatch_lines(["*worker * crashed*"])
    text = (project.path / "budgets.yaml").read_text()
    # the crashed worker's results are lost, the other worker's are written
    written = [f"test_widths[{i}]" for i in range(1, 7) if f"test_widths[{i}]" in text]
    assert written
    assert "test_model.py::test_gone" in text  # nothing is deleted after a crash


def test_without_xdist(project: pytest.Pytester) -> None:
    write_test(project, TESTS)
    project.runpytest_subprocess("-p", "no:xdist", "--model-budget").assert_outcomes(passed=7)


def test_bad_marker_under_xdist_is_one_clear_error(project: pytest.Pytester) -> None:
    write_test(project, "@pytest.mark.model_budget(max_mac=1)\ndef test_x(model_budget): pass\n")
    result = project.runpytest_subprocess("-n", "2", "--model-budget")
    assert result.ret != 0
    output = result.stdout.str() + result.stderr.str()
    assert "unknown keyword 'max_mac' (did you mean 'max_macs'?)" in output
