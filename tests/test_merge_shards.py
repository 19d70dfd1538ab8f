"""Sharded runs merged: ``python -m pytest_modelbudget merge shard-*.json``.

Real shard runs -- pytest-split, each job in a directory of its own with its own copy of the
suite and of an older budgets.yaml, as CI jobs have -- merged into one summary and one
budgets.yaml, held against one serial ``--update-budgets`` over the whole suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import SIMPLE_MODEL

from pytest_modelbudget.budgets import baselines
from pytest_modelbudget.budgets.shards import load_shard
from pytest_modelbudget.cli.main import main

SUITE = {
    "mymodels.py": SIMPLE_MODEL,
    "test_a.py": """
import pytest
import torch
from mymodels import SimpleModel

@pytest.mark.model_budget
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_simple(model_budget, batch):
    model_budget(SimpleModel(), torch.randn(batch, 1, 28, 28))

@pytest.mark.model_budget
def test_two_calls(model_budget):
    model_budget(SimpleModel(), torch.randn(1, 1, 28, 28), name="small")
    model_budget(SimpleModel(), torch.randn(4, 1, 28, 28), name="large")

def test_not_budgeted():
    pass
""",
    "test_b.py": """
import os
import pytest
import torch

@pytest.mark.model_budget
def test_linear(model_budget):
    width = int(os.environ.get("WIDTH", "8"))  # WIDTH=16 bloats it
    model_budget(torch.nn.Sequential(torch.nn.Linear(16, width), torch.nn.Linear(width, 4)), torch.randn(2, 16))

@pytest.mark.model_budget
@pytest.mark.parametrize("features", [4, 8])
def test_features(model_budget, features):
    model_budget(torch.nn.Linear(features, 2), torch.randn(1, features))
""",
    "pytest.ini": "[pytest]\nfilterwarnings = error\n",
}
STALE = "test_gone.py::test_old"
CALLS = 8  # budgeted calls in SUITE


def write_suite(folder: Path, budgets: bytes | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in SUITE.items():
        (folder / name).write_text(text.lstrip())
    if budgets is not None:
        (folder / "budgets.yaml").write_bytes(budgets)
    return folder


def pytest_in(
    folder: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """pytest in ``folder`` as a CI job runs it: its own process, its own rootdir."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def merge(*args: str | Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(["merge", *map(str, args)])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def older_budgets(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A budgets.yaml of an earlier state of the suite: one call's entry missing, one call's
    values out of date, an entry of a test that no longer exists, and a hand-written limit."""
    folder = write_suite(tmp_path_factory.mktemp("older"), None)
    done = pytest_in(folder, "--model-budget", "--update-budgets")
    assert done.returncode == 0, done.stdout + done.stderr
    entries = baselines.load(folder / "budgets.yaml").entries
    entries = dict(entries)
    del entries["test_b.py::test_features[8]"]
    old = entries["test_a.py::test_simple[2]"]
    entries["test_a.py::test_simple[2]"] = baselines.Entry(
        {**old.metrics, "macs": old.metrics["macs"] - 1}, old.modules, old.convention
    )
    entries["test_b.py::test_linear"] = baselines.Entry(
        entries["test_b.py::test_linear"].metrics,
        entries["test_b.py::test_linear"].modules,
        entries["test_b.py::test_linear"].convention,
        limits={"max_params": "1k"},
    )
    entries[STALE] = baselines.Entry({"macs": 10, "params": 10, "size": 40})
    return baselines.render(entries).encode()


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory, older_budgets: bytes) -> bytes:
    """What one serial update over the whole suite writes."""
    folder = write_suite(tmp_path_factory.mktemp("serial"), older_budgets)
    done = pytest_in(folder, "--model-budget", "--update-budgets")
    assert done.returncode == 0, done.stdout + done.stderr
    return (folder / "budgets.yaml").read_bytes()


def run_shards(
    root: Path, older: bytes, splits: int, *extra: str, env: dict[str, str] | None = None
) -> list[Path]:
    reports = []
    for group in range(1, splits + 1):
        folder = write_suite(root / f"job-{group}", older)
        report = root / f"shard-{group}.json"
        done = pytest_in(
            folder,
            "--model-budget",
            *extra,
            "--splits",
            str(splits),
            "--group",
            str(group),
            "--budget-json",
            str(report),
            env=env,
        )
        assert done.returncode in (0, 1), done.stdout + done.stderr
        reports.append(report)
    return reports


@pytest.fixture(scope="module")
def check_shards(tmp_path_factory: pytest.TempPathFactory, serial: bytes) -> list[Path]:
    """Two shards of a check run (no update) of the unchanged suite."""
    return run_shards(tmp_path_factory.mktemp("check"), serial, 2)


@pytest.fixture(scope="module")
def bloated_shards(tmp_path_factory: pytest.TempPathFactory, serial: bytes) -> list[Path]:
    """Two shards of a check run in which test_linear's model is twice as wide."""
    return run_shards(tmp_path_factory.mktemp("bloated"), serial, 2, env={"WIDTH": "16"})


def test_three_update_shards_merged_write_what_one_serial_update_writes(
    tmp_path: Path, older_budgets: bytes, serial: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    assert serial != older_budgets
    reports = run_shards(tmp_path, older_budgets, 3, "--update-budgets")
    target = write_suite(tmp_path / "merge-job", older_budgets) / "budgets.yaml"
    status, out, _ = merge(*reports, "--update-budgets", "--budgets-file", target, capsys=capsys)
    assert status == 0, out
    assert target.read_bytes() == serial
    assert STALE not in target.read_text()  # the shards together ran the whole suite
    assert f"{CALLS} measured call(s)" in out
    assert f"removed 1 stale entry from {target}" in out


def test_check_shards_merged_with_update_write_the_same_bytes(
    tmp_path: Path,
    older_budgets: bytes,
    serial: bytes,
    check_shards: list[Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The shards checked (against a newer file); the merge job updates its own older copy.
    target = write_suite(tmp_path / "merge-job", older_budgets) / "budgets.yaml"
    status, out, _ = merge(*check_shards, "--update-budgets", "--budgets-file", target, capsys=capsys)
    assert status == 0, out
    assert target.read_bytes() == serial


def test_shards_with_xdist_workers_merge_to_the_same_bytes(
    tmp_path: Path, older_budgets: bytes, serial: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    reports = run_shards(tmp_path, older_budgets, 2, "--update-budgets", "-n", "2")
    target = write_suite(tmp_path / "merge-job", older_budgets) / "budgets.yaml"
    status, out, _ = merge(*reports, "--update-budgets", "--budgets-file", target, capsys=capsys)
    assert status == 0, out
    assert target.read_bytes() == serial


def test_one_shard_alone_keeps_every_other_entry(
    tmp_path: Path, older_budgets: bytes, check_shards: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    first = check_shards[0]
    target = write_suite(tmp_path / "merge-job", older_budgets) / "budgets.yaml"
    before = baselines.load(target).entries
    status, out, _ = merge(first, "--update-budgets", "--budgets-file", target, capsys=capsys)
    assert status == 0
    after = baselines.load(target).entries
    assert set(before) <= set(after)  # nothing deleted, the stale entry included
    measured = measured_in(first)
    assert {k: v for k, v in after.items() if k not in measured} == {
        k: v for k, v in before.items() if k not in measured
    }
    assert "no stale entry was removed" in out


def measured_in(report: Path) -> set[str]:
    return {result.key for result in load_shard(report).results}


def test_a_bloated_model_fails_the_merged_check_and_is_named(
    tmp_path: Path, serial: bytes, bloated_shards: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    reports = bloated_shards
    target = write_suite(tmp_path / "merge-job", serial) / "budgets.yaml"
    status, out, _ = merge(
        *reports, "--budgets-file", target, "--markdown", tmp_path / "summary.md", capsys=capsys
    )
    assert status == 1
    row = next(line for line in out.splitlines() if line.startswith("test_b.py::test_linear"))
    assert row.split()[-1] == "over" and "+100.0%" in row
    assert "1 over" in out
    assert target.read_bytes() == serial  # a check writes nothing
    assert "`test_b.py::test_linear`" in (tmp_path / "summary.md").read_text()


def test_overlapping_shards_with_different_values_are_an_error(
    tmp_path: Path,
    serial: bytes,
    check_shards: list[Path],
    bloated_shards: list[Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    # test_linear is in one shard of each run: measured twice, with different widths.
    narrow = next(p for p in check_shards if "test_b.py::test_linear" in measured_in(p))
    wide = next(p for p in bloated_shards if "test_b.py::test_linear" in measured_in(p))
    target = write_suite(tmp_path / "merge-job", serial) / "budgets.yaml"
    status, _, err = merge(narrow, wide, "--update-budgets", "--budgets-file", target, capsys=capsys)
    assert status == 2
    assert f"test_b.py::test_linear was measured by {narrow} and {wide} with different values (metrics" in err
    assert target.read_bytes() == serial
    # The same shard twice (a job retried) is fine: the same values.
    status, _, _ = merge(narrow, narrow, "--budgets-file", target, capsys=capsys)
    assert status == 0


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda text: text[: len(text) // 2], "is not a complete JSON report"),
        (lambda text: "", "is not a complete JSON report"),
        (lambda text: json.dumps({"schema": "other"}), "is not a pytest-modelbudget --budget-json report"),
        (
            lambda text: json.dumps({**json.loads(text), "version": 1}),
            "is a report of version 1, this pytest-modelbudget reads version 2",
        ),
        (
            lambda text: json.dumps({**json.loads(text), "run": {"collected": 3}}),
            "is damaged",
        ),
        (
            lambda text: json.dumps(
                {**json.loads(text), "environment": {**json.loads(text)["environment"], "plugin": "0.0.1"}}
            ),
            "written by another pytest-modelbudget than this one",
        ),
    ],
    ids=["truncated", "empty", "not-ours", "old-version", "damaged", "other-plugin"],
)
def test_a_bad_shard_is_a_clear_error_and_writes_nothing(
    tmp_path: Path,
    serial: bytes,
    check_shards: list[Path],
    damage: object,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good, bad = check_shards[0], tmp_path / "shard-2.json"
    bad.write_text(damage(check_shards[1].read_text()))  # type: ignore[operator]
    target = write_suite(tmp_path / "merge-job", serial) / "budgets.yaml"
    status, out, err = merge(good, bad, "--update-budgets", "--budgets-file", target, capsys=capsys)
    assert status == 2
    assert (
        err.startswith("python -m pytest_modelbudget merge: error: ") and str(bad) in err and message in err
    ), err
    assert "Traceback" not in out + err
    assert target.read_bytes() == serial
    assert list(target.parent.glob(".budgets.yaml.*.tmp")) == []


def test_a_missing_shard_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = merge(tmp_path / "shard-9.json", capsys=capsys)
    assert status == 2
    assert f"{tmp_path / 'shard-9.json'}: cannot be read" in err


def test_merged_reports_are_written_and_merge_again(
    tmp_path: Path, serial: bytes, check_shards: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    reports = check_shards
    target = write_suite(tmp_path / "merge-job", serial) / "budgets.yaml"
    merged, html = tmp_path / "merged.json", tmp_path / "merged.html"
    status, _, _ = merge(*reports, "--budgets-file", target, "--json", merged, "--html", html, capsys=capsys)
    assert status == 0
    document = json.loads(merged.read_text())
    assert document["summary"]["calls"] == CALLS and document["summary"]["ok"] == CALLS
    assert document["run"]["selected"] == document["run"]["collected"]
    assert "<html" in html.read_text()
    # A merged report is a report like any other: it merges (and compares) again.
    status, out, _ = merge(merged, "--budgets-file", target, capsys=capsys)
    assert status == 0 and f"{CALLS} measured call(s): {CALLS} ok" in out
    assert yaml.safe_load(target.read_text())["version"] == 2


def test_the_merge_needs_no_torch(tmp_path: Path, serial: bytes, check_shards: list[Path]) -> None:
    reports = check_shards
    target = write_suite(tmp_path / "merge-job", serial) / "budgets.yaml"
    code = (
        "import sys; from pytest_modelbudget.cli.main import main; "
        f"status = main(['merge', {str(reports[0])!r}, {str(reports[1])!r}, '--budgets-file', {str(target)!r}]); "
        "print('torch' in sys.modules); sys.exit(status)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


# -- docs/ci.md's recipes run as written ---------------------------------------------------

CI_DOC = Path(__file__).resolve().parents[1] / "docs" / "ci.md"


def recipe_commands(section: str) -> list[str]:
    """The `run:` lines of one section of docs/ci.md that call pytest or this package."""
    text = CI_DOC.read_text().split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip().removeprefix("- ").removeprefix("run: ") for line in text.splitlines()]
    return [
        line
        for line in lines
        if line.startswith(("pytest ", "python -m pytest_modelbudget ", "cd ../base && pytest "))
    ]


def run_recipe(command: str, cwd: Path) -> int:
    # The job's shell, with this environment's python and pytest first on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True).returncode


def test_the_sharded_recipe_runs_as_written(tmp_path: Path, serial: bytes) -> None:
    commands = recipe_commands("A suite split over a matrix of jobs (pytest-split)")
    shard_command, merge_command = commands
    job = write_suite(tmp_path / "repo", serial)
    for group in (1, 2, 3):
        assert run_recipe(shard_command.replace("${{ matrix.group }}", str(group)), job) == 0
    assert run_recipe(merge_command, job) == 0
    assert "<html" in (job / "budgets.html").read_text()
    assert f"{CALLS} within budget" in (job / "budgets.md").read_text()
    (job / "test_b.py").write_text(SUITE["test_b.py"].replace('"8"', '"16"'))  # a bloated model
    for group in (1, 2, 3):
        run_recipe(shard_command.replace("${{ matrix.group }}", str(group)), job)
    assert run_recipe(merge_command, job) == 1  # the gate fails


def test_the_pull_request_recipe_runs_as_written(tmp_path: Path, serial: bytes) -> None:
    commands = recipe_commands("A pull request's budget diff")
    base_run, head_run, compare_command = commands
    base = write_suite(tmp_path / "base", serial)
    head = write_suite(tmp_path / "head", serial)
    (head / "test_b.py").write_text(SUITE["test_b.py"].replace('"8"', '"16"'))  # the pull request
    run_recipe(base_run, head)  # `cd ../base && ...`: run from the head's checkout
    run_recipe(head_run, head)
    assert run_recipe(compare_command, head) == 1  # the head is over budget
    comment = (tmp_path / "comment.md").read_text()
    assert "**1 grew, 0 shrank, 1 over budget, 0 new, 0 removed, 7 unchanged**" in comment
    assert "| `test_b.py::test_linear` | macs | 320 | 640 | +100.0% | over |" in comment
    assert base.is_dir()
