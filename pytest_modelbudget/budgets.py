"""What a budget is, how users write one, and how a measurement is judged against it.

Pure functions and frozen values: no pytest, no torch, no files. The pytest layer
parses marker keywords with :func:`parse_budget` at collection time and applies
:func:`check` to each measurement.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import BudgetSpecError, UnitError
from .units import format_bytes, format_change, format_count, parse_bytes, parse_count, parse_fraction


@dataclass(frozen=True)
class Metric:
    """A measured quantity that a budget can limit."""

    name: str
    keyword: str
    unit: str  # "count" or "bytes"
    description: str
    ratcheted: bool  # kept as a baseline in budgets.yaml and never allowed to grow

    def parse(self, value: object) -> float:
        return parse_bytes(value) if self.unit == "bytes" else parse_count(value)

    def format(self, value: float) -> str:
        return format_bytes(value) if self.unit == "bytes" else format_count(value)


METRICS: tuple[Metric, ...] = (
    Metric("macs", "max_macs", "count", "multiply-accumulates of one forward pass", True),
    Metric("flops", "max_flops", "count", "floating-point operations, 2 x MACs", False),
    Metric("params", "max_params", "count", "parameters, shared tensors counted once", True),
    Metric("size", "max_size", "bytes", "bytes of parameters and buffers, by dtype", True),
    Metric(
        "memory_traffic",
        "max_memory_traffic",
        "bytes",
        "bytes read plus written by every op (no caching or fusion)",
        False,
    ),
)
METRICS_BY_NAME = {m.name: m for m in METRICS}
METRICS_BY_KEYWORD = {m.keyword: m for m in METRICS}
RATCHETED = tuple(m.name for m in METRICS if m.ratcheted)

TOLERANCE_KEYWORD = "tolerance"
KEYWORDS: tuple[str, ...] = (*METRICS_BY_KEYWORD, TOLERANCE_KEYWORD)


@dataclass(frozen=True)
class Budget:
    """Limits written by a user (marker keywords or ``limits:`` in budgets.yaml)."""

    limits: Mapping[str, float]  # metric name -> largest allowed value
    tolerance: float | None = None  # relative growth allowed over the baseline

    @property
    def empty(self) -> bool:
        return not self.limits and self.tolerance is None


def _suggest(keyword: str) -> str:
    close = difflib.get_close_matches(keyword, KEYWORDS, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_budget(kwargs: Mapping[str, object], *, args: Iterable[object] = ()) -> Budget:
    """Marker keywords -> :class:`Budget`; errors name the keyword and what is accepted."""
    accepted = ", ".join(KEYWORDS)
    positional = list(args)
    if positional:
        raise BudgetSpecError(
            f"model_budget takes keyword arguments only, got positional {positional!r}; "
            f"accepted keywords: {accepted}"
        )
    limits: dict[str, float] = {}
    tolerance: float | None = None
    for keyword, value in kwargs.items():
        if keyword == TOLERANCE_KEYWORD:
            try:
                tolerance = parse_fraction(value)
            except UnitError as error:
                raise BudgetSpecError(f"tolerance={value!r}: {error}") from None
            continue
        metric = METRICS_BY_KEYWORD.get(keyword)
        if metric is None:
            raise BudgetSpecError(
                f"unknown keyword {keyword!r}{_suggest(keyword)}; accepted keywords: {accepted}"
            )
        try:
            limit = metric.parse(value)
        except UnitError as error:
            raise BudgetSpecError(f"{keyword}={value!r}: {error}") from None
        if limit <= 0:
            raise BudgetSpecError(f"{keyword}={value!r}: a limit must be greater than zero")
        limits[metric.name] = limit
    return Budget(limits=limits, tolerance=tolerance)


@dataclass(frozen=True)
class Check:
    """One metric judged against one reference (a limit or a baseline)."""

    metric: str
    measured: float
    reference: float
    source: str  # "marker", "budgets.yaml limits" or "baseline"
    status: str  # "ok", "over" or "shrank"
    tolerance: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status == "over"

    @property
    def is_baseline(self) -> bool:
        return self.source == "baseline"

    @property
    def change(self) -> str:
        return format_change(self.measured, self.reference)

    def describe(self) -> str:
        """``macs 1.46 M > baseline 1.33 M (+9.9%)``, with units."""
        metric = METRICS_BY_NAME[self.metric]
        relation = {"over": ">", "shrank": "<"}.get(self.status, "<=")
        what = "baseline" if self.is_baseline else f"limit ({self.source})"
        allowed = f", tolerance {self.tolerance:.0%}" if self.is_baseline and self.tolerance else ""
        return (
            f"{self.metric} {metric.format(self.measured)} {relation} {what} "
            f"{metric.format(self.reference)} ({self.change}{allowed})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "measured": self.measured,
            "reference": self.reference,
            "source": self.source,
            "status": self.status,
            "tolerance": self.tolerance,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Check:
        return cls(**data)


def check_limits(measured: Mapping[str, float], budget: Budget, source: str) -> list[Check]:
    """Hard limits: over when the measured value exceeds the limit."""
    return [
        Check(metric, measured[metric], limit, source, "over" if measured[metric] > limit else "ok")
        for metric, limit in budget.limits.items()
        if metric in measured
    ]


def check_baseline(
    measured: Mapping[str, float], baseline: Mapping[str, float], tolerance: float
) -> list[Check]:
    """The ratchet: over when a metric grew beyond ``tolerance``; shrank when it fell."""
    checks = []
    for metric in RATCHETED:
        if metric not in measured or metric not in baseline:
            continue
        value, reference = measured[metric], baseline[metric]
        if value > reference * (1.0 + tolerance):
            status = "over"
        elif value < reference:
            status = "shrank"
        else:
            status = "ok"
        checks.append(Check(metric, value, reference, "baseline", status, tolerance))
    return checks


def check(
    measured: Mapping[str, float],
    *,
    marker: Budget,
    file_limits: Budget | None,
    baseline: Mapping[str, float] | None,
) -> list[Check]:
    """Every check for one measurement: marker limits, file limits, then the baseline.

    The tolerance for the baseline comes from the marker, else from the file, else 0.
    """
    checks = check_limits(measured, marker, "marker")
    if file_limits is not None:
        checks += check_limits(measured, file_limits, "budgets.yaml limits")
    if baseline is not None:
        tolerance = marker.tolerance
        if tolerance is None and file_limits is not None:
            tolerance = file_limits.tolerance
        checks += check_baseline(measured, baseline, tolerance or 0.0)
    return checks


def keyword_table() -> list[tuple[str, str, str]]:
    """(keyword, unit, meaning) rows, for docs and error messages."""
    rows = [(m.keyword, m.unit, m.description) for m in METRICS]
    rows.append((TOLERANCE_KEYWORD, "fraction", "relative growth allowed over the baseline"))
    return rows
