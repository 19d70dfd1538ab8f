"""A pull request's budget diff: ``python -m pytest_modelbudget compare BASE.json HEAD.json``.

Real runs of a small suite for what a reviewer sees (a bloated model, two identical runs),
and results built by hand for the rules (timing across devices, the comment's size limit).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_merge_shards import pytest_in, write_suite

from pytest_modelbudget.budgets.budget import Source
from pytest_modelbudget.budgets.checks import Check, Status, Verdict
from pytest_modelbudget.budgets.compare import Change, compare
from pytest_modelbudget.budgets.results import CallResult
from pytest_modelbudget.cli.main import main
from pytest_modelbudget.core.timing.timer import TimingStats
from pytest_modelbudget.report import compare as words


def run_compare(*args: str | Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(["compare", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The suite's reports: base, the same code again, and a head whose test_linear is wider."""
    root = tmp_path_factory.mktemp("runs")
    base = write_suite(root / "base", None)
    done = pytest_in(base, "--model-budget", "--update-budgets", "--budget-json", str(root / "base.json"))
    assert done.returncode == 0, done.stdout + done.stderr
    budgets = (base / "budgets.yaml").read_bytes()
    again = write_suite(root / "again", budgets)
    assert pytest_in(again, "--model-budget", "--budget-json", str(root / "again.json")).returncode == 0
    head = write_suite(root / "head", budgets)
    done = pytest_in(head, "--model-budget", "--budget-json", str(root / "head.json"), env={"WIDTH": "16"})
    assert done.returncode == 1, done.stdout  # over its baseline
    return {name: root / f"{name}.json" for name in ("base", "again", "head")}


def test_a_bloated_model_shows_its_base_and_head_macs_and_the_module_that_grew(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    comment, document = tmp_path / "comment.md", tmp_path / "diff.json"
    status, out, _ = run_compare(
        runs["base"], runs["head"], "--markdown", comment, "--json", document, capsys=capsys
    )
    assert status == 1  # head has a failed budget
    assert out.splitlines()[-1] == "1 grew, 0 shrank, 1 over budget, 0 new, 0 removed, 7 unchanged"
    markdown = comment.read_text()
    assert "| `test_b.py::test_linear` | macs | 320 | 640 | +100.0% | over |" in markdown
    assert "|  | params | 172 | 340 | +97.7% |  |" in markdown
    assert "float_macs" not in markdown  # a float model's float MACs repeat its MACs
    # The modules that grew, folded: both linears of the Sequential are wider.
    details = markdown[markdown.index("<details>") :]
    assert "<summary><code>test_b.py::test_linear</code>" in details
    assert "| `0` | macs | 256 | 512 | +100.0% |" in details
    assert "| `1` | macs | 64 | 128 | +100.0% |" in details
    diff = json.loads(document.read_text())
    assert diff["summary"] == {"grew": 1, "shrank": 0, "new": 0, "removed": 0, "unchanged": 7, "over": 1}
    (linear,) = [c for c in diff["calls"] if c["key"] == "test_b.py::test_linear"]
    assert {"metric": "macs", "base": 320, "head": 640} in linear["metrics"]


def test_two_identical_runs_report_no_change(runs: dict[str, Path], tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    comment = tmp_path / "comment.md"
    status, out, _ = run_compare(runs["base"], runs["again"], "--markdown", comment, capsys=capsys)
    assert status == 0
    assert out.strip() == "0 grew, 0 shrank, 0 over budget, 0 new, 0 removed, 8 unchanged"
    assert "No budgeted call changed." in comment.read_text()
    status, out, _ = run_compare(runs["base"], runs["again"], "--all", capsys=capsys)
    assert status == 0
    row = next(line for line in out.splitlines() if line.startswith("test_a.py::test_simple[1]"))
    assert row.split()[1:] == ["macs", "1.33", "M", "1.33", "M", "+0%", "ok"]


def test_bad_or_mismatched_files_exit_2(runs: dict[str, Path], tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    status, _, err = run_compare(tmp_path / "missing.json", runs["head"], capsys=capsys)
    assert status == 2 and "missing.json: cannot be read" in err
    other = tmp_path / "other.json"
    document = json.loads(runs["head"].read_text())
    for call in document["calls"]:
        call["result"]["convention"] = "macs-v0"
    other.write_text(json.dumps(document))
    status, _, err = run_compare(runs["base"], other, capsys=capsys)
    assert status == 2 and "base and head counted with different conventions" in err


# -- the rules, on results built by hand ---------------------------------------------------


def result(
    key: str,
    macs: float = 100,
    *,
    modules: dict[str, dict[str, int]] | None = None,
    latency: float | None = None,
    fingerprint: str = "cpu | X | 1 thread | float32 | eager",
    failed: bool = False,
) -> CallResult:
    metrics = {"macs": macs, "params": 10, "size": 40}
    timing = None
    if latency is not None:
        metrics["latency_ms"] = latency
        timing = TimingStats(latency, latency, latency, latency, 0.0, 10, 100, 1.0, fingerprint=fingerprint)
    checks = (Check("macs", macs, 100, Source.BASELINE, Status.OVER),) if failed else ()
    return CallResult(
        nodeid=key,
        name=None,
        metrics=metrics,
        modules=modules or {"(root)": {"macs": int(macs), "params": 10}},
        uncounted={},
        convention="c1",
        executed_on="meta",
        checks=checks,
        verdict=Verdict.OVER if failed else Verdict.OK,
        has_baseline=True,
        timing=timing,
    )


def test_new_removed_grew_and_shrank() -> None:
    comparison = compare(
        [result("t::grew"), result("t::shrank"), result("t::removed"), result("t::same")],
        [result("t::grew", 150), result("t::shrank", 50), result("t::new"), result("t::same")],
    )
    changes = {c.key: c.change for c in comparison.calls}
    assert changes == {
        "t::grew": Change.GREW,
        "t::shrank": Change.SHRANK,
        "t::removed": Change.REMOVED,
        "t::new": Change.NEW,
        "t::same": Change.UNCHANGED,
    }
    text = words.markdown(comparison)
    assert "| `t::new` | macs | - | 100 | new | ok |" in text
    assert "| `t::removed` | macs | 100 | - | removed | removed |" in text
    assert "t::same" not in text


def test_latency_compares_only_on_the_same_kind_of_device() -> None:
    same = compare([result("t::a", latency=2.0)], [result("t::a", latency=3.0)])
    (call,) = same.calls
    assert [(m.metric, m.base, m.head) for m in call.timed] == [("latency_ms", 2.0, 3.0)]
    assert call.change == Change.UNCHANGED  # counts decide growth; the latency is shown
    other = compare([result("t::a", latency=2.0)], [result("t::a", latency=3.0, fingerprint="cuda | H100")])
    (call,) = other.calls
    assert call.timed == () and call.timing_not_comparable
    rows = "\n".join(words.terminal_lines(other, every_call=True))
    assert "not comparable: another kind of device" in rows and " x " in rows


def test_a_call_over_budget_is_shown_even_when_nothing_changed() -> None:
    comparison = compare([result("t::a")], [result("t::a", failed=True)])
    assert comparison.head_failed and comparison.over == 1
    assert "| `t::a` | - | - | - | no change | over |" in words.markdown(comparison)


def test_five_thousand_calls_fit_a_github_comment() -> None:
    modules = {f"layer{i}.block": {"macs": 100 * i, "params": i} for i in range(20)}
    grown = {path: {"macs": stats["macs"] * 2, "params": stats["params"]} for path, stats in modules.items()}
    base = [result(f"tests/test_zoo.py::test_model[{i:04d}]", modules=modules) for i in range(5000)]
    head = [result(f"tests/test_zoo.py::test_model[{i:04d}]", 200, modules=grown) for i in range(5000)]
    text = words.markdown(compare(base, head))
    assert len(text) <= words.COMMENT_LIMIT
    assert text.count("| `tests/test_zoo.py::test_model[") > 100  # as many rows as fit
    last = text.rstrip().splitlines()[-1]
    assert last.startswith("*Left out to fit a comment:") and "call(s) not in the table" in last
    assert "5000 grew" in text
