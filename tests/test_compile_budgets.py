"""Compiled calls end to end: graph breaks, graphs, recompiles, compiled latency, isolation.

Every run is a subprocess (dynamo's state must not outlive an inner run), and the models
compile with the "eager" backend -- dynamo's graph capture without code generation -- so
the breaks and recompiles are dynamo's own and each compile takes a fraction of a second.
One test uses inductor, for its kernel count. No verdict depends on this machine's speed.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
import yaml
from conftest import write_test

COMPILED_MODELS = """
import os
import torch
from torch import nn

class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 8)

    def forward(self, x):
        x = torch.relu(self.fc1(x))
        if os.environ.get("BRANCH"):  # tests add a graph break to the clean model with BRANCH=1
            if x.sum() > 0:
                x = x * 2
        return self.fc2(x)

class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, x):
        x = self.fc(x)
        if x.abs().sum() > 0:  # a data-dependent branch: a graph break
            x = x * 2
        return x
"""

EAGER = '{"backend": "eager"}'


@pytest.fixture
def compiled_project(project: pytest.Pytester) -> pytest.Pytester:
    project.makepyfile(compiled_models=COMPILED_MODELS)
    return project


def _write(project: pytest.Pytester, body: str, name: str = "test_compiled") -> None:
    write_test(project, "from compiled_models import Mlp, Branchy\n" + textwrap.dedent(body), name=name)


def _entries(project: pytest.Pytester) -> dict[str, dict[str, object]]:
    data = yaml.safe_load((project.path / "budgets.yaml").read_text())
    return data["entries"]  # type: ignore[no-any-return]


def test_a_data_dependent_branch_fails_with_its_reason_and_line(compiled_project: pytest.Pytester) -> None:
    _write(
        compiled_project,
        f"""
        @pytest.mark.model_budget(compile={EAGER}, max_graph_breaks=0)
        def test_branchy(model_budget):
            model_budget(Branchy(), torch.randn(4, 16))
        """,
    )
    result = compiled_project.runpytest_subprocess("--model-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*model budget exceeded for test_compiled.py::test_branchy:",
            "*graph_breaks 1 > limit (marker) 0*",
            "*graph break 1 at */compiled_models.py:25: Data-dependent branching",
            "*if x.abs().sum() > 0:  # a data-dependent branch: a graph break",
            "*(Detected data-dependent branching*",
        ]
    )
    assert "site-packages/torch" not in result.stdout.str().split("graph break 1 at")[1].splitlines()[0]


def test_a_clean_model_records_zero_breaks_and_a_new_break_fails_against_it(
    compiled_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(
        compiled_project,
        f"""
        @pytest.mark.model_budget(compile={EAGER})
        def test_mlp(model_budget):
            measured = model_budget(Mlp(), torch.randn(4, 16))
            assert measured is None or measured.graph_breaks in (0, 1)
        """,
    )
    compiled_project.runpytest_subprocess("--update-budgets").assert_outcomes(passed=1)
    entry = _entries(compiled_project)["test_compiled.py::test_mlp"]
    assert entry["graph_breaks"] == 0
    assert entry["graphs"] == 1
    assert entry["recompiles"] == 0
    assert "kernels" not in entry  # only inductor generates kernels

    monkeypatch.setenv("BRANCH", "1")  # the edit: a data-dependent branch, no marker limit
    result = compiled_project.runpytest_subprocess("--model-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*graph_breaks 1 > baseline 0*",
            "*graph break 1 at */compiled_models.py:*: Data-dependent branching",
            "*if x.sum() > 0:*",
            "*pytest --model-budget --update-budgets test_compiled.py::test_mlp*",
        ]
    )


def test_two_input_shapes_show_the_recompile_and_its_guard(compiled_project: pytest.Pytester) -> None:
    _write(
        compiled_project,
        f"""
        @pytest.mark.model_budget(compile={EAGER}, max_recompiles=0)
        def test_shapes(model_budget):
            model = Mlp()
            first = model_budget(model, torch.randn(4, 16), name="batch4")
            assert first.recompiles == 0
            model_budget(model, torch.randn(8, 16), name="batch8")
        """,
    )
    result = compiled_project.runpytest_subprocess("--model-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*model budget exceeded for test_compiled.py::test_shapes [[]batch8[]]:",
            "*recompiles 1 > limit (marker) 0*",
            "*recompile of forward (*compiled_models.py:*): guard failed: *size mismatch at index 0*",
        ]
    )


def test_compiled_counts_equal_eager_counts_and_a_compiled_model_is_recognised(
    compiled_project: pytest.Pytester,
) -> None:
    _write(
        compiled_project,
        f"""
        @pytest.mark.model_budget(compile={EAGER})
        def test_compile_option(model_budget):
            eager = model_budget(Mlp(), torch.randn(4, 16), name="eager-counted")
            assert eager.macs == 4 * (16 * 32 + 32 * 8) and eager.params == 16 * 32 + 32 + 32 * 8 + 8
            assert eager.graph_breaks == 0 and eager.compiled.graphs == 1

        @pytest.mark.model_budget()
        def test_user_compiled(model_budget):
            model = Branchy()
            measured = model_budget(torch.compile(model, backend="eager"), torch.randn(4, 16))
            assert measured.macs == 4 * 16 * 8
            assert measured.graph_breaks == 1 and measured.compiled.label == "compiled:as-given"
            assert type(model).__name__ == "Branchy"

        @pytest.mark.model_budget(compile=False)
        def test_compile_false(model_budget):
            measured = model_budget(torch.compile(Branchy(), backend="eager"), torch.randn(4, 16))
            assert measured.compiled is None and measured.macs == 4 * 16 * 8
        """,
    )
    compiled_project.runpytest_subprocess("--model-budget").assert_outcomes(passed=3)


def test_compiled_latency_has_its_own_fingerprint(
    compiled_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_timing_budgets import FAKE_CLOCK

    compiled_project.makeconftest(FAKE_CLOCK)
    _write(
        compiled_project,
        f"""
        @pytest.mark.model_budget(timing=True)
        def test_eager(model_budget):
            model_budget(Mlp(), torch.randn(4, 16))

        @pytest.mark.model_budget(timing=True, compile={EAGER})
        def test_compiled(model_budget):
            model_budget(Mlp(), torch.randn(4, 16))
        """,
    )
    compiled_project.runpytest_subprocess("--update-budgets").assert_outcomes(passed=2)
    entries = _entries(compiled_project)
    (eager,) = entries["test_compiled.py::test_eager"]["timing"]  # type: ignore[misc]
    (compiled,) = entries["test_compiled.py::test_compiled"]["timing"]  # type: ignore[misc]
    assert eager.endswith("| eager") and compiled.endswith("| compiled:eager")
    assert eager.rsplit("|", 1)[0] == compiled.rsplit("|", 1)[0]
    assert "compile_s" not in entries["test_compiled.py::test_compiled"]  # wall time: never stored

    # The compiled baseline is compared with compiled timings only: 3x slower fails it.
    monkeypatch.setenv("FAKE_MS", "6")
    result = compiled_project.runpytest_subprocess("--model-budget", "test_compiled.py::test_compiled")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*latency_ms 6 ms > baseline 2 ms*"])


ORDER_TESTS = f"""
@pytest.mark.model_budget(compile={EAGER})
def test_branchy(model_budget):
    model_budget(Branchy(), torch.randn(4, 16))

@pytest.mark.model_budget(compile={EAGER})
def test_mlp(model_budget):
    model_budget(Mlp(), torch.randn(4, 16))
"""


@pytest.mark.parametrize("order", ["forward", "reversed", "xdist"])
def test_counts_do_not_depend_on_order_or_workers(compiled_project: pytest.Pytester, order: str) -> None:
    body = ORDER_TESTS
    if order == "reversed":
        first, second = body.split("\n\n@")
        body = "@" + second.rstrip() + "\n\n" + first.strip() + "\n"
    _write(compiled_project, body)
    args = ["-n", "2"] if order == "xdist" else ["-p", "no:xdist"]
    out = compiled_project.path / "report.json"
    result = compiled_project.runpytest_subprocess(*args, "--model-budget", f"--budget-json={out}")
    result.assert_outcomes(passed=2)
    calls = {call["key"]: call["metrics"] for call in json.loads(out.read_text())["calls"]}
    assert calls["test_compiled.py::test_branchy"] | {"compile_s": 0} == {
        **calls["test_compiled.py::test_branchy"],
        "graph_breaks": 1,
        "graphs": 2,
        "recompiles": 0,
        "compile_s": 0,
    }
    assert calls["test_compiled.py::test_mlp"]["graph_breaks"] == 0
    assert calls["test_compiled.py::test_mlp"]["graphs"] == 1
    assert calls["test_compiled.py::test_mlp"]["recompiles"] == 0


def test_bad_compile_options_are_clear_errors(compiled_project: pytest.Pytester) -> None:
    _write(
        compiled_project,
        """
        @pytest.mark.model_budget(compile={"backend": "no_such_backend"})
        def test_backend(model_budget):
            model_budget(Mlp(), torch.randn(4, 16))

        @pytest.mark.model_budget(compile={"backend": "eager", "fullgraph": True})
        def test_fullgraph(model_budget):
            model_budget(Branchy(), torch.randn(4, 16))
        """,
    )
    result = compiled_project.runpytest_subprocess("--model-budget")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "*model_budget: test_compiled.py::test_backend: torch.compile backend 'no_such_backend' is not "
            "available*installed: *eager*",
            "*model_budget: test_compiled.py::test_fullgraph: torch.compile failed on this model (*",
        ]
    )
    assert "Traceback" not in result.stdout.str()


def test_an_invalid_compile_keyword_is_a_collection_error(compiled_project: pytest.Pytester) -> None:
    _write(
        compiled_project,
        """
        @pytest.mark.model_budget(compile={"mode": "fastest"})
        def test_mode(model_budget):
            model_budget(Mlp(), torch.randn(4, 16))
        """,
    )
    result = compiled_project.runpytest_subprocess("--model-budget")
    assert result.ret != 0
    result.stderr.fnmatch_lines(
        [
            "*invalid budget marker",
            "*test_mode*compile={'mode': 'fastest'}: mode='fastest' is not one of default, reduce-overhead*",
        ]
    )


def test_inductor_counts_kernels_and_the_cli_compiles_every_call(compiled_project: pytest.Pytester) -> None:
    _write(
        compiled_project,
        """
        @pytest.mark.model_budget()
        def test_inductor(model_budget):
            measured = model_budget(Mlp(), torch.randn(4, 16))
            assert measured.compiled.label == "compiled"
            assert measured.compiled.kernels >= 1 and measured.compiled.compile_s > 0
        """,
    )
    compiled_project.runpytest_subprocess("--update-budgets", "--budget-compile").assert_outcomes(passed=1)
    kernels = _entries(compiled_project)["test_compiled.py::test_inductor"]["kernels"]
    # Again, now with inductor's on-disk cache warm: the same kernel count, nothing to update.
    result = compiled_project.runpytest_subprocess("--model-budget", "--budget-compile")
    result.assert_outcomes(passed=1)
    assert isinstance(kernels, int) and kernels >= 1


def test_compile_limits_need_a_compiled_call_and_no_autocast() -> None:
    from pytest_modelbudget.budgets.budget import CallSettings, parse_budget
    from pytest_modelbudget.budgets.measure import measure_call
    from pytest_modelbudget.errors import MeasurementError

    def measure(**marker: object) -> None:
        measure_call(
            torch.nn.Linear(4, 2),
            (torch.randn(1, 4),),
            {},
            nodeid="t.py::t",
            name=None,
            marker=parse_budget(marker),
            entry=None,
            settings=CallSettings(),
        )

    # Not compiled: a graph-break limit could never fail, so it is refused, not skipped.
    with pytest.raises(MeasurementError, match=r"max_graph_breaks limit.*compile=True.*--budget-compile"):
        measure(max_graph_breaks=0)
    with pytest.raises(MeasurementError, match="autocast and compile cannot be combined"):
        measure(compile={"backend": "eager"}, autocast="bfloat16")
