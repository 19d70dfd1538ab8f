"""Reports: JSON, Markdown and GitHub step summary, JUnit properties, pytest-benchmark."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest
from conftest import write_test

TESTS = """
@pytest.mark.model_budget(max_macs="2M")
def test_simple(model_budget):
    model_budget(SimpleModel(), torch.randn(1, 1, 28, 28))

@pytest.mark.model_budget(max_params=100)
def test_over(model_budget):
    model_budget(torch.nn.Linear(10, 10), torch.randn(1, 10))

@pytest.mark.model_budget
def test_named(model_budget):
    model_budget(torch.nn.Linear(4, 4), torch.randn(1, 4), name="small")
"""


def _summary_rows(stdout: str) -> dict[str, str]:
    """Verdicts from the terminal table: key -> verdict."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("test_model.py::"):
            parts = line.split()
            rows[parts[0]] = parts[-1]
    return rows


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_json_markdown_junit_agree_with_the_terminal(project: pytest.Pytester, xdist: list[str]) -> None:
    write_test(project, TESTS)
    args = [
        "--model-budget",
        "--budget-json=out.json",
        "--budget-markdown=out.md",
        "--budget-html=out.html",
        "--junitxml=junit.xml",
        *xdist,
    ]
    result = project.runpytest_subprocess(*args) if xdist else project.runpytest(*args)
    result.assert_outcomes(passed=2, failed=1)
    terminal = _summary_rows(result.stdout.str())
    assert terminal == {
        "test_model.py::test_named#small": "new",
        "test_model.py::test_over": "over",
        "test_model.py::test_simple": "new",
    }

    document = json.loads((project.path / "out.json").read_text())
    # Version 2: each call carries its whole result, and the report what the run saw (for merge).
    assert document["schema"] == "pytest-modelbudget-report" and document["version"] == 2
    assert (
        document["run"]["collected"]
        == document["run"]["selected"]
        == sorted({"test_model.py::test_named", "test_model.py::test_over", "test_model.py::test_simple"})
    )
    assert all(call["result"]["nodeid"] == call["test"] for call in document["calls"])
    assert set(document["environment"]) == {"plugin", "torch", "python", "platform", "cpu"}
    assert document["summary"] == {
        "calls": 3,
        "ok": 0,
        "over": 1,
        "inconclusive": 0,
        "shrank": 0,
        "new": 2,
        "updated": 0,
    }
    calls = {c["key"]: c for c in document["calls"]}
    assert {k: c["verdict"] for k, c in calls.items()} == terminal
    over = calls["test_model.py::test_over"]
    assert over["metrics"]["params"] == 110 and over["metrics"]["macs"] == 100
    assert over["checks"] == [
        {
            "metric": "params",
            "measured": 110,
            "reference": 100.0,
            "source": "marker",
            "status": "over",
            "tolerance": 0.0,
            "note": "",
            "change": "+10.0%",
            "usage": 1.1,
        }
    ]
    assert calls["test_model.py::test_simple"]["modules"]["fc1"] == {"macs": 1000000, "params": 1000500}
    assert calls["test_model.py::test_named#small"]["name"] == "small"
    assert calls["test_model.py::test_simple"]["device"] == "meta"  # counted without arithmetic

    markdown = (project.path / "out.md").read_text()
    assert "**2 within budget, 1 over, 0 inconclusive**" in markdown
    assert (
        "| `test_model.py::test_over` | params | 110 | limit (marker) 100 | +10.0% | ██████████ 110% | over |"
        in markdown
    )
    assert markdown.count("| `test_model.py::") == 3

    html = (project.path / "out.html").read_text()
    for key in terminal:
        nodeid, _, name = key.partition("#")
        assert nodeid in html and name in html
    assert html.count("<svg") >= 3  # a module chart per call

    properties = {}
    for case in ET.parse(project.path / "junit.xml").getroot().iter("testcase"):
        for prop in case.iter("property"):
            properties[(case.get("name"), prop.get("name"))] = prop.get("value")
    assert properties[("test_over", "model_budget.params")] == "110"
    assert properties[("test_over", "model_budget.verdict")] == "over"
    assert properties[("test_simple", "model_budget.macs")] == "1329000"
    assert properties[("test_named", "model_budget[small].verdict")] == "new"


def test_github_step_summary_is_appended(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    summary = project.path / "step_summary.md"
    summary.write_text("## Earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    write_test(project, TESTS)
    project.runpytest("--model-budget")
    text = summary.read_text()
    assert text.startswith("## Earlier step\n### Model budgets\n")
    assert re.search(r"\*\*2 within budget, 1 over, 0 inconclusive\*\*", text)


def test_unwritable_report_path_is_a_clear_error(project: pytest.Pytester) -> None:
    write_test(project, TESTS)
    result = project.runpytest("--model-budget", "--budget-json=missing/dir/out.json")
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-modelbudget: cannot write a report to *missing/dir/out.json: No such file or directory"
        ]
    )
    assert "Traceback" not in result.stderr.str()


def test_pytest_benchmark_gets_the_metrics_and_a_synchronizing_timer(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pytest_benchmark")
    # When this suite runs under xdist, the inner run inherits the worker's environment,
    # and pytest-benchmark switches itself off in any xdist worker.
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    write_test(
        project,
        """
        @pytest.mark.model_budget
        def test_both(model_budget, benchmark):
            model = SimpleModel().eval()
            x = torch.randn(1, 1, 28, 28)
            model_budget(model, x)
            with torch.inference_mode():
                benchmark.pedantic(model, args=(x,), rounds=3, iterations=1)
        """,
    )
    result = project.runpytest_subprocess(
        "--model-budget",
        "--benchmark-json=bench.json",
        "--benchmark-timer=pytest_modelbudget.benchmark_timer.synchronized_perf_counter",
        "-W",
        "error",
    )
    result.assert_outcomes(passed=1)
    bench = json.loads((project.path / "bench.json").read_text())
    [entry] = bench["benchmarks"]
    assert entry["extra_info"]["model_budget"]["macs"] == 1329000
    assert entry["extra_info"]["model_budget"]["verdict"] == "new"
    assert bench["benchmarks"][0]["options"]["timer"].endswith("synchronized_perf_counter")


def test_synchronized_timer_without_cuda_is_perf_counter() -> None:
    import time

    from pytest_modelbudget.benchmark_timer import synchronized_perf_counter

    before = time.perf_counter()
    assert before <= synchronized_perf_counter() <= time.perf_counter()


def test_the_json_report_is_strict_json_when_a_zero_budget_is_exceeded(project: pytest.Pytester) -> None:
    # A limit of 0 that is exceeded has no finite budget use: null, not Infinity.
    write_test(
        project,
        """
        @pytest.mark.model_budget(max_float_macs=0)
        def test_float(model_budget):
            model_budget(SimpleModel(), torch.randn(1, 1, 28, 28))
        """,
    )
    project.runpytest("--model-budget", "--budget-json=report.json").assert_outcomes(failed=1)
    text = (project.path / "report.json").read_text()
    report = json.loads(text, parse_constant=lambda name: pytest.fail(f"not JSON: {name}"))
    [check] = report["calls"][0]["checks"]
    assert (check["metric"], check["status"], check["usage"]) == ("float_macs", "over", None)
