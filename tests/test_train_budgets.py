"""Training-step budgets end to end: ``model_budget.train_step`` in real pytest runs.

Limits from the marker, baselines in budgets.yaml (train MACs, train memory, backward MACs
per module), the message that names the module whose backward grew, timed steps judged with
a fake clock, xdist workers, reports, and a plain run without ``--model-budget``.
"""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import write_test
from test_timing_budgets import FAKE_CLOCK

from pytest_modelbudget.core.training.count import count_train_step
from pytest_modelbudget.core.training.step import TrainSpec

TRAIN_TEST = """
from torch import nn

@pytest.mark.model_budget(MARKER)
def test_train(model_budget):
    model = SimpleModel()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    measured = model_budget.train_step(model, x, target=y, loss=nn.CrossEntropyLoss(), optimizer="adamw")
    assert model.fc1.weight.grad is None
    if measured is not None:
        print("TRAIN", measured.train_macs, measured.train_memory, measured.macs)
"""


def _write(project: pytest.Pytester, marker: str = "") -> None:
    write_test(project, TRAIN_TEST.replace("MARKER", marker))


def _entry(project: pytest.Pytester, key: str = "test_model.py::test_train") -> dict[str, object]:
    return yaml.safe_load((project.path / "budgets.yaml").read_text())["entries"][key]  # type: ignore[no-any-return]


def _simple_counts() -> object:
    import torch
    from conftest import SIMPLE_MODEL
    from torch import nn

    namespace: dict[str, object] = {}
    exec(SIMPLE_MODEL, namespace)
    model = namespace["SimpleModel"]()  # type: ignore[operator]
    spec = TrainSpec(torch.randint(0, 10, (8,)), nn.CrossEntropyLoss(), "adamw")
    return count_train_step(model, (torch.randn(8, 1, 28, 28),), spec=spec)


def test_a_marker_limit_on_train_macs(project: pytest.Pytester) -> None:
    counts = _simple_counts()
    _write(project, f"max_train_macs={counts.macs - 1}")  # type: ignore[attr-defined]
    result = project.runpytest("--model-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*model budget exceeded for test_model.py::test_train:", "*train_macs * > limit (marker) *"]
    )
    _write(project, f"max_train_macs={counts.macs}, max_train_memory={counts.memory}")  # type: ignore[attr-defined]
    project.runpytest("--model-budget").assert_outcomes(passed=1)


def test_update_stores_the_step_and_a_wider_model_names_the_backward_that_grew(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(project)
    project.runpytest("--model-budget", "--update-budgets").assert_outcomes(passed=1)
    entry = _entry(project)
    counts = _simple_counts()
    assert entry["train_macs"] == counts.macs  # type: ignore[attr-defined]
    assert entry["train_memory"] == counts.memory  # type: ignore[attr-defined]
    assert entry["macs"] == 8 * 1_329_000  # the forward, as a forward call counts it
    modules = entry["modules"]
    assert isinstance(modules, dict)
    # conv1's input needs no gradient: its backward is the weight gradient alone.
    assert modules["conv1"] == {"macs": 8 * 144_000, "params": 260, "backward_macs": 8 * 144_000}
    assert modules["fc1"]["backward_macs"] == 2 * 8 * 1_000_000

    monkeypatch.setenv("HIDDEN", "600")
    result = project.runpytest("--model-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*train_macs * > baseline *",
            "*train_memory * > baseline *",
            "*modules that grew (macs): fc1 *",
            "*modules that grew (backward_macs): fc1 16 M -> 19.2 M (+20.0%), fc2 *",
            "*the estimated peak holds: params *, grads *, optimizer state *, activations *, temporaries *",
            "*pytest --model-budget --update-budgets*",
        ]
    )


def test_a_forward_and_a_training_step_of_one_test_are_separate_entries(project: pytest.Pytester) -> None:
    write_test(
        project,
        """
        @pytest.mark.model_budget
        def test_both(model_budget):
            model = SimpleModel()
            x = torch.randn(2, 1, 28, 28)
            model_budget(model, x, name="forward")
            model_budget.train_step(model, x, name="train", optimizer="sgd")
        """,
    )
    project.runpytest("--model-budget", "--update-budgets").assert_outcomes(passed=1)
    forward = _entry(project, "test_model.py::test_both#forward")
    train = _entry(project, "test_model.py::test_both#train")
    assert "train_macs" not in forward
    assert train["macs"] == forward["macs"]
    assert train["train_macs"] > 2 * forward["macs"]  # type: ignore[operator]


def test_without_model_budget_the_step_really_runs_and_leaves_the_model(project: pytest.Pytester) -> None:
    write_test(
        project,
        """
        from torch import nn

        CALLS = []

        def loss(out, target):
            CALLS.append(out.shape)
            return nn.functional.cross_entropy(out, target)

        @pytest.mark.model_budget(max_train_macs=1)
        def test_plain(model_budget):
            model = SimpleModel()
            before = {k: v.clone() for k, v in model.state_dict().items()}
            assert model_budget.train_step(model, torch.randn(2, 1, 28, 28), target=torch.tensor([1, 2]),
                                           loss=loss, optimizer="adam") is None
            assert CALLS == [(2, 10)]
            assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
            assert all(p.grad is None for p in model.parameters())
        """,
    )
    project.runpytest().assert_outcomes(passed=1)


def test_a_timed_step_is_judged_with_its_own_baseline(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makeconftest(FAKE_CLOCK)
    write_test(
        project,
        """
        @pytest.mark.model_budget(max_train_step_ms=5)
        def test_step(model_budget):
            model_budget.train_step(SimpleModel(), torch.randn(2, 1, 28, 28), optimizer="sgd")
        """,
    )
    monkeypatch.setenv("FAKE_MS", "2")
    project.runpytest("--model-budget", "--update-budgets").assert_outcomes(passed=1)
    timing = _entry(project, "test_model.py::test_step")["timing"]
    assert isinstance(timing, dict)
    (fingerprint,) = timing
    assert fingerprint.endswith("| 1 thread | float32 | train step")

    monkeypatch.setenv("FAKE_MS", "8")  # over the limit, and 4x the baseline
    result = project.runpytest("--model-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*train_step_ms 8 ms > limit (marker) 5 ms*", "*train_step_ms 8 ms > baseline 2 ms*"]
    )


def test_run_wide_compile_and_cuda_graphs_leave_a_training_step_eager(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --budget-compile and --budget-cuda-graphs apply to the calls that can be compiled or
    # replayed; a training step is measured eagerly beside them, under its own fingerprint.
    project.makeconftest(FAKE_CLOCK)
    write_test(
        project,
        """
        @pytest.mark.model_budget(max_train_step_ms=5)
        def test_step(model_budget):
            measured = model_budget.train_step(SimpleModel(), torch.randn(2, 1, 28, 28), optimizer="sgd")
            assert measured.compiled is None and measured.train is not None
        """,
    )
    monkeypatch.setenv("FAKE_MS", "2")
    result = project.runpytest("--model-budget", "--budget-compile", "--budget-cuda-graphs", "-s")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("compile=True", "a training step is counted and timed eagerly: drop compile= from the budget"),
        ("cuda_graph=True", "a training step is timed eagerly: drop cuda_graph= from the budget"),
        ("autocast=True", "autocast is not supported for training steps yet: drop autocast= from the budget"),
    ],
)
def test_a_training_step_refuses_what_its_own_budget_cannot_have(
    project: pytest.Pytester, option: str, message: str
) -> None:
    write_test(
        project,
        f"""
        @pytest.mark.model_budget({option})
        def test_step(model_budget):
            model_budget.train_step(SimpleModel(), torch.randn(2, 1, 28, 28))
        """,
    )
    result = project.runpytest("--model-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [f"*model_budget: {message}*", "*(while measuring test_model.py::test_step)*"]
    )


def test_training_steps_through_xdist_workers_and_the_json_report(project: pytest.Pytester) -> None:
    write_test(
        project,
        """
        import pytest

        @pytest.mark.model_budget
        @pytest.mark.parametrize("optimizer", ["sgd", "adam"])
        def test_train(model_budget, optimizer):
            model_budget.train_step(SimpleModel(), torch.randn(2, 1, 28, 28), optimizer=optimizer)
        """,
    )
    result = project.runpytest_subprocess(
        "--model-budget",
        "--update-budgets",
        "-n",
        "2",
        "--budget-json",
        "report.json",
        "--budget-html",
        "r.html",
    )
    result.assert_outcomes(passed=2)
    sgd = _entry(project, "test_model.py::test_train[sgd]")
    adam = _entry(project, "test_model.py::test_train[adam]")
    assert sgd["train_macs"] == adam["train_macs"]
    assert adam["train_memory"] > sgd["train_memory"]  # type: ignore[operator]
    calls = {c["key"]: c for c in json.loads((project.path / "report.json").read_text())["calls"]}
    kinds = calls["test_model.py::test_train[adam]"]["memory_by_kind"]
    assert list(kinds) == ["params", "grads", "optimizer_state", "activations", "temporaries"]
    assert kinds["optimizer_state"] == 2 * 4 * 1_007_590 + 4 * 8
    html = (project.path / "r.html").read_text()
    assert "train MACs" in html and "training peak holds" in html
