from __future__ import annotations

import pytest

from pytest_modelbudget.budgets.budget import (
    KEYWORDS,
    Budget,
    CallSettings,
    Source,
    keyword_table,
    parse_budget,
    resolve,
)
from pytest_modelbudget.budgets.checks import Check, check_baseline, check_call
from pytest_modelbudget.errors import BudgetSpecError
from pytest_modelbudget.report.words import describe


def check(
    measured: dict[str, float], *, marker: Budget, file_limits: Budget | None, baseline: dict[str, int] | None
) -> tuple[Check, ...]:
    """Every check of a call with these budgets, as the measuring code makes them."""
    return check_call(measured, resolve(marker, file_limits, CallSettings()), baseline)


def test_parse_budget_reads_units() -> None:
    budget = parse_budget({"max_macs": "2G", "max_params": 12e6, "max_size": "50 MB", "tolerance": "5%"})
    assert budget.limits == {"macs": 2e9, "params": 12e6, "size": 50e6}
    assert budget.tolerance == pytest.approx(0.05)


def test_bare_marker_is_empty() -> None:
    assert parse_budget({}).empty


@pytest.mark.parametrize(
    ("kwargs", "args", "fragments"),
    [
        ({"max_mac": 1}, (), ["unknown keyword 'max_mac'", "did you mean 'max_macs'", "max_flops"]),
        ({"latency": 1}, (), ["unknown keyword 'latency'", "accepted keywords"]),
        ({"max_macs": "4.1X"}, (), ["max_macs='4.1X'", "SI suffix"]),
        ({"max_macs": 0}, (), ["greater than zero"]),
        ({"max_params": -5}, (), ["greater than zero"]),
        ({"max_size": "12 parsecs"}, (), ["max_size", "MiB"]),
        ({"tolerance": -0.1}, (), ["tolerance=-0.1", "percentage"]),
        ({}, ("2G",), ["keyword arguments only", "'2G'"]),
    ],
)
def test_parse_budget_errors_name_keyword_and_accepted(
    kwargs: dict[str, object], args: tuple[object, ...], fragments: list[str]
) -> None:
    with pytest.raises(BudgetSpecError) as info:
        parse_budget(kwargs, args=args)
    for fragment in fragments:
        assert fragment in str(info.value)


MEASURED = {"macs": 110.0, "flops": 220.0, "params": 50.0, "size": 200.0, "memory_traffic": 1000.0}


def test_limits_from_marker_and_file_both_apply() -> None:
    checks = check(
        MEASURED,
        marker=Budget(limits={"macs": 200.0}),
        file_limits=Budget(limits={"macs": 100.0, "params": 60.0}),
        baseline=None,
    )
    by_source = {(c.source, c.metric): c.status for c in checks}
    assert by_source == {
        ("marker", "macs"): "ok",
        ("budgets.yaml limits", "macs"): "over",
        ("budgets.yaml limits", "params"): "ok",
    }


def test_baseline_growth_fails_only_beyond_tolerance() -> None:
    baseline = {"macs": 100, "params": 50, "size": 200}
    strict = {c.metric: c.status for c in check_baseline(MEASURED, baseline, tolerance=0.0)}
    assert strict == {"macs": "over", "params": "ok", "size": "ok"}
    loose = {c.metric: c.status for c in check_baseline(MEASURED, baseline, tolerance=0.1)}
    assert loose["macs"] == "ok"


def test_baseline_shrink_is_reported_not_failed() -> None:
    checks = check_baseline({"macs": 90.0}, {"macs": 100}, tolerance=0.0)
    assert [(c.status, c.failed) for c in checks] == [("shrank", False)]


def test_tolerance_comes_from_marker_before_file() -> None:
    checks = check(
        MEASURED,
        marker=Budget(limits={}, tolerance=0.2),
        file_limits=Budget(limits={}, tolerance=0.0),
        baseline={"macs": 100},
    )
    assert [c.status for c in checks] == ["ok"]


def test_describe_has_units_reference_and_change() -> None:
    [macs] = check_baseline({"macs": 1_530_000.0}, {"macs": 1_329_000}, tolerance=0.0)
    assert describe(macs) == "macs 1.53 M > baseline 1.33 M (+15.1%)"
    [size] = check({"size": 3e6}, marker=Budget(limits={"size": 2**21}), file_limits=None, baseline=None)
    assert describe(size) == "size 2.86 MiB > limit (marker) 2 MiB (+43.1%)"


def test_the_keyword_table_has_one_row_per_keyword() -> None:
    rows = keyword_table()
    assert [keyword for keyword, _, _ in rows] == list(KEYWORDS)
    assert all(unit and meaning for _, unit, meaning in rows)


def test_a_call_budget_merges_marker_file_and_run_settings_once() -> None:
    marker = parse_budget({"max_macs": "2G", "latency_stat": "p90", "tolerance": "5%"})
    file_limits = parse_budget({"max_macs": "3G", "max_latency_ms": 5, "device": "cpu", "tolerance": "1%"})
    budget = resolve(marker, file_limits, CallSettings(latency_tolerance=0.2))
    assert [(limit.metric, limit.value, limit.source) for limit in budget.limits] == [
        ("macs", 2e9, Source.MARKER),
        ("macs", 3e9, Source.FILE),
        ("latency_ms", 5.0, Source.FILE),
    ]
    assert budget.tolerance == pytest.approx(0.05)  # the marker's, not the file's
    assert (budget.latency_stat, budget.latency_tolerance) == ("p90", 0.2)
    assert budget.timing.device == "cpu" and budget.timed  # a file limit asks for timing
    untimed = resolve(marker, file_limits, CallSettings(timing_enabled=False))
    assert not untimed.timed  # --budget-no-timing


def test_a_budget_of_zero_is_unused_until_exceeded() -> None:
    from pytest_modelbudget.budgets.checks import Status

    kept = Check("graph_breaks", 0, 0, Source.BASELINE, Status.OK)
    broken = Check("graph_breaks", 1, 0, Source.MARKER, Status.OVER)
    assert kept.usage == 0.0
    assert broken.usage == float("inf")


def test_latency_and_throughput_read_the_judged_statistic() -> None:
    from pytest_modelbudget.budgets.metrics import METRICS_BY_NAME
    from pytest_modelbudget.calls.metric import Readings
    from pytest_modelbudget.core.timing.timer import TimingStats

    timing = TimingStats(6.0, 20.0, 5.0, 8.0, 2.0, samples=20, calls=200, wall_s=1.0, batch_size=4)

    def read(name: str, stat: str) -> float | None:
        # These two read the timing alone, so no counts are needed.
        readings = Readings(counts=None, timing=timing, latency_stat=stat)  # type: ignore[arg-type]
        return METRICS_BY_NAME[name].read(readings)

    assert (read("latency_ms", "median"), read("throughput", "median")) == (6.0, pytest.approx(4e3 / 6))
    assert (read("latency_ms", "p90"), read("throughput", "p90")) == (20.0, pytest.approx(4e3 / 20))
