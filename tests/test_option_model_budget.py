"""--model-budget / ini model_budget: measuring, enforcing, the fixture and its messages."""

from __future__ import annotations

import pytest
from conftest import SIMPLE_MACS, SIMPLE_PARAMS, write_test

PASSING = f"""
@pytest.mark.model_budget(max_macs="2M", max_params="1.5M")
def test_simple(model_budget):
    measured = model_budget(SimpleModel(), torch.randn(1, 1, 28, 28))
    if measured is not None:
        assert (measured.macs, measured.flops, measured.params) == ({SIMPLE_MACS}, {2 * SIMPLE_MACS}, {SIMPLE_PARAMS})
"""


def test_measures_and_summarises(project: pytest.Pytester) -> None:
    write_test(project, PASSING)
    result = project.runpytest("--model-budget")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*= model budgets =*",
            "test*MACs*params*size*closest budget*change*verdict",
            "test_model.py::test_simple*1.33 M*1.01 M*3.84 MiB*params limit 1.5 M*-32.8%*new",
            "1 measured call(s): 1 new",
            "*no baseline in budgets.yaml: record them with pytest --model-budget --update-budgets",
        ]
    )


def test_without_the_option_runs_a_plain_forward_and_checks_nothing(project: pytest.Pytester) -> None:
    write_test(
        project,
        """
        @pytest.mark.model_budget(max_macs=1)
        def test_simple(model_budget):
            assert model_budget(SimpleModel(), torch.randn(1, 1, 28, 28)) is None

        @pytest.mark.model_budget(max_macs=1)
        def test_forward_really_runs(model_budget):
            with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
                model_budget(SimpleModel(), torch.randn(1, 1, 30, 30))
        """,
    )
    result = project.runpytest()
    result.assert_outcomes(passed=2)
    assert "model budgets" not in result.stdout.str()


def test_ini_option_turns_it_on(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nmodel_budget = true\n")
    write_test(project, PASSING.replace('max_macs="2M"', "max_macs=1000"))
    result = project.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*macs 1.33 M > limit (marker) 1 k (+132800.0%)*"])


def test_marker_limit_failure_says_value_limit_change_and_remedy(project: pytest.Pytester) -> None:
    write_test(
        project,
        """
        @pytest.mark.model_budget(max_params="1M", max_size="3 MiB")
        def test_simple(model_budget):
            model_budget(SimpleModel(), torch.randn(1, 1, 28, 28))
        """,
    )
    result = project.runpytest("--model-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*model budget exceeded for test_model.py::test_simple:",
            "*params 1.01 M > limit (marker) 1 M (+0.8%)",
            "*size 3.84 MiB > limit (marker) 3 MiB (+28.1%)",
            "*A limit from marker is a hard contract: shrink the model or raise the limit in @pytest.mark.model_budget(...).",
        ]
    )
    assert "pytest_modelbudget" not in result.stdout.str()  # no plugin frames


def test_marker_without_measurement_fails(project: pytest.Pytester) -> None:
    write_test(
        project,
        """
        @pytest.mark.model_budget(max_macs="1G")
        def test_forgot(model_budget):
            SimpleModel()

        @pytest.mark.model_budget(max_macs="1G")
        def test_no_fixture():
            pass
        """,
    )
    for args in (["--model-budget"], []):
        result = project.runpytest(*args)
        result.assert_outcomes(failed=2)
        result.stdout.fnmatch_lines(
            [
                "*test_forgot is marked @pytest.mark.model_budget but never measured a model: call the model_budget fixture*"
            ]
        )


def test_several_named_calls_and_parametrized_tests_get_their_own_entries(project: pytest.Pytester) -> None:
    write_test(
        project,
        """
        @pytest.mark.model_budget
        def test_sizes(model_budget):
            model_budget(SimpleModel(), torch.randn(1, 1, 28, 28), name="b1")
            model_budget(SimpleModel(), torch.randn(4, 1, 28, 28), name="b4")

        @pytest.mark.parametrize("batch", [1, 2])
        @pytest.mark.model_budget
        def test_param(model_budget, batch):
            model_budget(SimpleModel(), torch.randn(batch, 1, 28, 28))
        """,
    )
    result = project.runpytest("--model-budget")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [
            "test_model.py::test_param?1?  *1.33 M*",
            "test_model.py::test_param?2?  *2.66 M*",
            "test_model.py::test_sizes#b1  *1.33 M*",
            "test_model.py::test_sizes#b4  *5.32 M*",
        ]
    )


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            "model_budget(SimpleModel(), x); model_budget(SimpleModel(), x)",
            "*called twice for the same budget entry in test_model.py::test_bad: give each call its own name=*",
        ),
        (
            'model_budget(SimpleModel(), x, name="a"); model_budget(SimpleModel(), x, name="a")',
            "*name='a' is already used*",
        ),
        ('model_budget("resnet", x)', "*expects a torch.nn.Module as first argument, got str*"),
        (
            "model_budget(SimpleModel())",
            "*needs the forward's inputs: model_budget(model, torch.randn(1, 3, 224, 224))*",
        ),
        ('model_budget(SimpleModel(), x, name="a#b")', "*a name is a non-empty string without '#'*"),
    ],
)
def test_fixture_misuse_gives_one_clear_message(project: pytest.Pytester, call: str, message: str) -> None:
    write_test(
        project,
        f"""
        @pytest.mark.model_budget
        def test_bad(model_budget):
            x = torch.randn(1, 1, 28, 28)
            {call}
        """,
    )
    result = project.runpytest("--model-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([message])
    assert "pytest_modelbudget/" not in result.stdout.str()


def test_forward_that_raises_shows_the_models_error_and_leaves_it_unchanged(project: pytest.Pytester) -> None:
    project.makepyfile(
        broken="""
        import torch
        from torch import nn

        class Broken(nn.Module):
            def __init__(self):
                super().__init__()
                self.bn = nn.BatchNorm1d(4)
                self.fc = nn.Linear(5, 2)

            def forward(self, x):
                return self.fc(self.bn(x))  # 4 features into a 5-input layer
        """
    )
    write_test(
        project,
        """
        from broken import Broken

        @pytest.mark.model_budget
        def test_broken(model_budget):
            model = Broken()
            before = {k: v.clone() for k, v in model.state_dict().items()}
            try:
                model_budget(model, torch.randn(3, 4))
            finally:
                after = model.state_dict()
                assert before.keys() == after.keys()
                assert all(torch.equal(before[k], after[k]) for k in before)
                assert model.training
        """,
    )
    result = project.runpytest("--model-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*model_budget: the model's forward raised RuntimeError: mat1 and mat2 shapes cannot be multiplied*",
            "*at *broken.py:11 in forward",
            "*(while measuring test_model.py::test_broken; the model was left as it was)",
        ]
    )


def test_strict_markers_knows_the_marker(project: pytest.Pytester) -> None:
    write_test(project, PASSING)
    project.runpytest("--strict-markers", "--model-budget").assert_outcomes(passed=1)
    result = project.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.model_budget(max_macs=*"])


def test_functional_ops_count_like_modules(project: pytest.Pytester) -> None:
    write_test(
        project,
        """
        class Functional(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.randn(64, 32))

            def forward(self, x):
                y = x @ self.w.T                        # 8*32*64 = 16384
                z = torch.einsum("bi,bj->ij", y, y)     # 64*8*64 = 32768
                return torch.nn.functional.linear(z, self.w.T)  # 64*64*32 = 131072

        @pytest.mark.model_budget
        def test_functional(model_budget):
            assert model_budget(Functional(), torch.randn(8, 32)).macs == 16384 + 32768 + 131072
        """,
    )
    project.runpytest("--model-budget").assert_outcomes(passed=1)
