"""text_table: the one plain-text table layout, bare (the run summary) and ruled (the profile command)."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import pytest

from pytest_modelbudget.report.text_table import text_table

# The end-of-run summary of `pytest --model-budget` (report.summary_lines) before it used
# text_table, copied from a real run: left-aligned, two spaces apart, no rules, no total.
SUMMARY_HEADERS = ("test", "MACs", "params", "size", "closest budget", "change", "verdict")
SUMMARY_ROWS = [
    ("test_m.py::test_simple", "1.3 M", "1.3 M", "4.96 MiB", "params limit 1.5 M", "-13.2%", "new"),
    ("test_m.py::test_tiny", "8", "10", "40 B", "-", "-", "new"),
]
SUMMARY_LINES = [
    "test                    MACs   params  size      closest budget      change  verdict",
    "test_m.py::test_simple  1.3 M  1.3 M   4.96 MiB  params limit 1.5 M  -13.2%  new",
    "test_m.py::test_tiny    8      10      40 B      -                   -       new",
]

# `python -m pytest_modelbudget profile torchvision.models:resnet18 --input 1x3x224x224`
# before it used text_table (a few of its rows): number columns right-aligned, dashed rules
# under the header and above the total.
PROFILE_HEADERS = ("module", "type", "params", "MACs", "% MACs", "memory traffic")
PROFILE_ROWS = [
    ("conv1", "Conv2d", "9.41 k", "118 M", "6.5%", "3.67 MiB"),
    ("bn1", "BatchNorm2d", "128", "0", "0.0%", "6.13 MiB"),
    ("avgpool", "AdaptiveAvgPool2d", "0", "0", "0.0%", "100 KiB"),
    ("fc", "Linear", "513 k", "512 k", "0.0%", "1.96 MiB"),
]
PROFILE_TOTAL = ("total", "", "11.7 M", "1.81 G", "100.0%", "113 MiB")
PROFILE_LINES = [
    "module   type               params    MACs  % MACs  memory traffic",
    "-------  -----------------  ------  ------  ------  --------------",
    "conv1    Conv2d             9.41 k   118 M    6.5%        3.67 MiB",
    "bn1      BatchNorm2d           128       0    0.0%        6.13 MiB",
    "avgpool  AdaptiveAvgPool2d       0       0    0.0%         100 KiB",
    "fc       Linear              513 k   512 k    0.0%        1.96 MiB",
    "-------  -----------------  ------  ------  ------  --------------",
    "total                       11.7 M  1.81 G  100.0%         113 MiB",
]


def test_reproduces_the_run_summary_layout() -> None:
    assert list(text_table(SUMMARY_HEADERS, SUMMARY_ROWS)) == SUMMARY_LINES


def test_reproduces_the_profile_layout() -> None:
    lines = text_table(
        PROFILE_HEADERS, PROFILE_ROWS, right_aligned=range(2, 6), total=PROFILE_TOTAL, rules=True
    )
    assert list(lines) == PROFILE_LINES


@pytest.mark.parametrize(
    ("headers", "rows", "right_aligned", "total", "rules", "expected"),
    [
        pytest.param(("a", "b"), [], (), None, False, ["a  b"], id="no rows: the header alone"),
        pytest.param(("a", "b"), [], (), None, True, ["a  b", "-  -"], id="no rows, ruled"),
        pytest.param(
            ("name", "n"),
            [("x", "1"), ("longer", "22")],
            (),
            None,
            False,
            ["name    n", "x       1", "longer  22"],
            id="widest cell sets the width; last column not padded",
        ),
        pytest.param(
            ("name", "n"),
            [("x", "1"), ("longer", "22")],
            (1,),
            None,
            False,
            ["name     n", "x        1", "longer  22"],
            id="right-aligned column",
        ),
        pytest.param(
            ("a", "b", "c"),
            [("1", "", "")],
            (),
            None,
            False,
            ["a  b  c", "1"],
            id="empty trailing cells are stripped",
        ),
        pytest.param(
            ("k", "v"),
            [("a", "1")],
            (1,),
            ("total", "1000"),
            False,
            ["k         v", "a         1", "total  1000"],
            id="total without rules: the total row widens the columns",
        ),
        pytest.param(
            ("k", "v"),
            [("a", "1")],
            (1,),
            ("total", "1000"),
            True,
            ["k         v", "-----  ----", "a         1", "-----  ----", "total  1000"],
            id="total with rules",
        ),
    ],
)
def test_layouts(
    headers: Sequence[str],
    rows: list[tuple[str, ...]],
    right_aligned: Collection[int],
    total: Sequence[str] | None,
    rules: bool,
    expected: list[str],
) -> None:
    assert list(text_table(headers, rows, right_aligned=right_aligned, total=total, rules=rules)) == expected


def test_no_line_ends_in_a_space() -> None:
    lines = list(text_table(("a", "b"), [("x" * 9, ""), ("", "y")], total=("", ""), rules=True))
    assert lines == ["a          b", "---------  -", "xxxxxxxxx", "           y", "---------  -", ""]
    assert not any(line.endswith(" ") for line in lines)


@pytest.mark.parametrize(
    ("rows", "total"),
    [([("1", "2", "3")], None), ([("1",)], None), ([("1", "2")], ("total",))],
)
def test_a_row_with_the_wrong_number_of_cells_is_an_error(
    rows: list[tuple[str, ...]], total: tuple[str, ...] | None
) -> None:
    with pytest.raises(ValueError, match=r"a table row has \d cells for 2 columns"):
        list(text_table(("a", "b"), rows, total=total))
