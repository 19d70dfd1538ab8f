"""The model_budget marker: keywords, units and collection-time errors."""

from __future__ import annotations

import pytest
from conftest import write_test


@pytest.mark.parametrize(
    ("marker", "fragments"),
    [
        (
            "max_mac=1",
            [
                "unknown keyword 'max_mac' (did you mean 'max_macs'?)",
                "accepted keywords: max_macs, max_flops",
            ],
        ),
        ('max_macs="4.1X"', ["max_macs='4.1X'", "is not a number or a string with an SI suffix"]),
        ("max_params=0", ["max_params=0: a limit must be greater than zero"]),
        ("max_macs=-3", ["greater than zero"]),
        ('max_size="1.5 parsec"', ["max_size='1.5 parsec'", "'300 MiB'"]),
        ("tolerance=-0.1", ["tolerance=-0.1", "non-negative"]),
        ('"2G"', ["keyword arguments only, got positional ['2G']"]),
    ],
)
def test_bad_marker_is_a_collection_time_usage_error(
    project: pytest.Pytester, marker: str, fragments: list[str]
) -> None:
    write_test(
        project,
        f"""
        @pytest.mark.model_budget({marker})
        def test_bad(model_budget):
            model_budget(SimpleModel(), torch.randn(1, 1, 28, 28))

        def test_unrelated():
            pass
        """,
    )
    for args in (["--model-budget"], [], ["--co"]):
        result = project.runpytest(*args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(
            [
                "ERROR: pytest-modelbudget: invalid budget marker",
                "  test_model.py::test_bad: @pytest.mark.model_budget: *",
            ]
        )
        for fragment in fragments:
            assert fragment in result.stderr.str()
        assert "Traceback" not in result.stderr.str() + result.stdout.str()


def test_all_bad_markers_are_listed_at_once(project: pytest.Pytester) -> None:
    write_test(
        project,
        """
        @pytest.mark.model_budget(max_mac=1)
        def test_a(model_budget): pass

        @pytest.mark.model_budget(max_params="lots")
        def test_b(model_budget): pass
        """,
    )
    result = project.runpytest()
    result.stderr.fnmatch_lines(
        ["*test_model.py::test_a: *max_mac*", "*test_model.py::test_b: *max_params='lots'*"]
    )


def test_class_marker_merges_with_function_marker(project: pytest.Pytester) -> None:
    write_test(
        project,
        """
        @pytest.mark.model_budget(max_macs="1M", max_params="1M")
        class TestModels:
            @pytest.mark.model_budget(max_macs="2M")
            def test_simple(self, model_budget):
                model_budget(SimpleModel(), torch.randn(1, 1, 28, 28))
        """,
    )
    result = project.runpytest("--model-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*params 1.01 M > limit (marker) 1 M (+0.8%)", "A limit from marker*"])
    assert "macs 1.33 M >" not in result.stdout.str()  # the function's max_macs wins
