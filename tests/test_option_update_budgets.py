"""--update-budgets: accepting growth, the ratchet, stale entries, hand-written limits."""

from __future__ import annotations

import pytest
from conftest import SIMPLE_MACS, write_test

from pytest_modelbudget.budgets import baselines

TESTS = """
@pytest.mark.model_budget
def test_simple(model_budget):
    model_budget(SimpleModel(), torch.randn(1, 1, 28, 28))

@pytest.mark.model_budget
def test_other(model_budget):
    model_budget(torch.nn.Linear(10, 10), torch.randn(1, 10))
"""


def _entries(pytester: pytest.Pytester) -> dict[str, baselines.Entry]:
    return baselines.load(pytester.path / "budgets.yaml").entries


def test_update_records_then_growth_fails_naming_the_modules(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_test(project, TESTS)
    result = project.runpytest("--update-budgets")  # implies --model-budget
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["baselines: 2 written (2 new), 0 stale removed; budgets.yaml written"])
    entry = _entries(project)["test_model.py::test_simple"]
    assert entry.metrics == {"macs": SIMPLE_MACS, "params": 1_007_590, "size": 4_030_360}
    assert entry.modules["fc1"] == {"macs": 1_000_000, "params": 1_000_500}
    assert entry.convention == "aten-macs/1"

    project.runpytest("--model-budget").assert_outcomes(passed=2)

    monkeypatch.setenv("HIDDEN", "600")
    result = project.runpytest("--model-budget")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*model budget exceeded for test_model.py::test_simple:",
            "*macs 1.53 M > baseline 1.33 M (+15.1%)",
            "*params 1.21 M > baseline 1.01 M (+20.0%)",
            "*size 4.61 MiB > baseline 3.84 MiB (+20.0%)",
            "*modules that grew (macs): fc1 1 M -> 1.2 M (+20.0%), fc2 5 k -> 6 k (+20.0%)",
            "*modules that grew (params): fc1 1 M -> 1.2 M (+20.0%), fc2 5.01 k -> 6.01 k (+20.0%)",
            "*If this growth is intended, accept it as the new baseline in budgets.yaml: "
            "pytest --model-budget --update-budgets test_model.py::test_simple",
        ]
    )
    before = (project.path / "budgets.yaml").read_text()
    project.runpytest("--model-budget", "--update-budgets", "test_model.py::test_simple").assert_outcomes(
        passed=1
    )
    after = (project.path / "budgets.yaml").read_text()
    changed = [line for line in after.splitlines() if line not in before.splitlines()]
    assert changed and all(line.strip().split(":")[0] in {"macs", "params", "size"} for line in changed)
    assert (
        _entries(project)["test_model.py::test_other"]
        == baselines.parse(before.encode(), "x")["test_model.py::test_other"]
    )
    project.runpytest("--model-budget").assert_outcomes(passed=2)


def test_tolerance_allows_some_growth(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    write_test(
        project,
        TESTS.replace(
            "@pytest.mark.model_budget\ndef test_simple",
            '@pytest.mark.model_budget(tolerance="25%")\ndef test_simple',
        ),
    )
    project.runpytest("--update-budgets").assert_outcomes(passed=2)
    monkeypatch.setenv("HIDDEN", "600")
    project.runpytest("--model-budget").assert_outcomes(passed=2)


def test_shrinking_is_reported_with_how_to_lock_it_in(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_test(project, TESTS)
    project.runpytest("--update-budgets").assert_outcomes(passed=2)
    monkeypatch.setenv("HIDDEN", "400")
    result = project.runpytest("--model-budget")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "test_model.py::test_simple*baseline*-*%*shrank",
            "*1 call(s) shrank below their baseline: lock that in with pytest --model-budget --update-budgets",
        ]
    )


def test_update_without_changes_leaves_the_file_alone(project: pytest.Pytester) -> None:
    write_test(project, TESTS)
    project.runpytest("--update-budgets")
    path = project.path / "budgets.yaml"
    stamp = path.stat().st_mtime_ns
    result = project.runpytest("--update-budgets")
    result.stdout.fnmatch_lines(["*budgets.yaml unchanged"])
    assert path.stat().st_mtime_ns == stamp


def test_hand_written_limits_apply_to_a_bare_marker_and_survive_updates(project: pytest.Pytester) -> None:
    write_test(project, TESTS)
    (project.path / "budgets.yaml").write_text(
        "version: 1\nentries:\n  test_model.py::test_simple:\n    limits:\n      max_macs: 1M\n"
    )
    result = project.runpytest("--model-budget")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*macs 1.33 M > limit (budgets.yaml limits) 1 M (+32.9%)",
            "*A limit from budgets.yaml limits is a hard contract: shrink the model or raise the limit in 'limits:' in budgets.yaml.",
        ]
    )
    project.runpytest("--update-budgets").assert_outcomes(passed=1, failed=1)  # limits still apply
    entry = _entries(project)["test_model.py::test_simple"]
    assert entry.limits == {"max_macs": "1M"} and entry.metrics["macs"] == SIMPLE_MACS


def test_marker_and_file_limits_both_apply(project: pytest.Pytester) -> None:
    write_test(
        project,
        TESTS.replace(
            "@pytest.mark.model_budget\ndef test_simple",
            '@pytest.mark.model_budget(max_params="1M")\ndef test_simple',
        ),
    )
    (project.path / "budgets.yaml").write_text(
        "version: 1\nentries:\n  test_model.py::test_simple:\n    limits:\n      max_macs: 1M\n"
    )
    result = project.runpytest("--model-budget")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*params 1.01 M > limit (marker) 1 M*", "*macs 1.33 M > limit (budgets.yaml limits) 1 M*"]
    )


def test_stale_entries_listed_and_removed_only_by_a_whole_suite_update(project: pytest.Pytester) -> None:
    write_test(project, TESTS)
    project.runpytest("--update-budgets")
    path = project.path / "budgets.yaml"
    text = path.read_text().replace("test_model.py::test_other:", "test_model.py::test_removed:")
    path.write_text(text)

    result = project.runpytest("--model-budget")
    result.stdout.fnmatch_lines(
        [
            "1 stale entry in budgets.yaml (no such test): test_model.py::test_removed",
            "*stale entries are removed only by --update-budgets over the whole suite",
        ]
    )
    for narrowed in (
        ["-k", "simple"],
        ["test_model.py::test_simple"],
        ["-m", "model_budget"],
        ["--deselect", "test_model.py::test_other"],
    ):
        project.runpytest("--update-budgets", *narrowed)
        assert "test_model.py::test_removed" in _entries(project), narrowed
    result = project.runpytest("--update-budgets")
    result.stdout.fnmatch_lines(
        [
            "baselines: 2 written (0 new), 1 stale removed; budgets.yaml written",
            "removed 1 stale entry from budgets.yaml (no such test): test_model.py::test_removed",
        ]
    )
    assert sorted(_entries(project)) == ["test_model.py::test_other", "test_model.py::test_simple"]


def test_entries_of_tests_that_did_not_run_are_kept(project: pytest.Pytester) -> None:
    write_test(project, TESTS)
    project.runpytest("--update-budgets")
    path = project.path / "budgets.yaml"
    entries = _entries(project)
    other = entries["test_model.py::test_other"]
    entries["test_model.py::test_other"] = baselines.Entry(
        {**other.metrics, "macs": 1}, other.modules, other.convention
    )
    path.write_text(baselines.render(entries))
    result = project.runpytest("--update-budgets", "-k", "simple")
    result.assert_outcomes(passed=1, deselected=1)
    assert _entries(project)["test_model.py::test_other"].metrics["macs"] == 1


def test_a_test_that_measures_without_a_marker_is_not_stale(project: pytest.Pytester) -> None:
    write_test(
        project,
        """
        def test_unmarked(model_budget):
            model_budget(SimpleModel(), torch.randn(1, 1, 28, 28))
        """,
    )
    project.runpytest("--model-budget", "--update-budgets").assert_outcomes(passed=1)
    assert "test_model.py::test_unmarked" in (project.path / "budgets.yaml").read_text()
    result = project.runpytest("--model-budget")
    result.assert_outcomes(passed=1)
    assert "stale entr" not in result.stdout.str()  # (the folder's name says "stale")
    project.runpytest("--model-budget", "--update-budgets").assert_outcomes(passed=1)
    assert "test_model.py::test_unmarked" in (project.path / "budgets.yaml").read_text()
