"""What a budget is, how users write one, and how a measurement is judged against it.

Pure functions and frozen values: no pytest, no torch, no files. The pytest layer
parses marker keywords with :func:`parse_budget` at collection time and applies
:func:`check` to each measurement.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import BudgetSpecError, UnitError, shown
from .units import (
    format_bytes,
    format_change,
    format_count,
    format_duration,
    format_rate,
    parse_bytes,
    parse_count,
    parse_duration_ms,
    parse_fraction,
    parse_rate,
)

_PARSERS = {"count": parse_count, "bytes": parse_bytes, "ms": parse_duration_ms, "rate": parse_rate}
_FORMATTERS = {"count": format_count, "bytes": format_bytes, "ms": format_duration, "rate": format_rate}


@dataclass(frozen=True)
class Metric:
    """A measured quantity that a budget can limit."""

    name: str
    keyword: str
    unit: str  # "count", "bytes", "ms" or "rate"
    description: str
    ratcheted: bool = False  # kept as a baseline in budgets.yaml and never allowed to grow
    timed: bool = False  # needs the model to be timed, not only counted
    higher_is_better: bool = False  # the limit is a minimum (throughput), not a maximum

    def parse(self, value: object) -> float:
        return _PARSERS[self.unit](value)

    def format(self, value: float) -> str:
        return _FORMATTERS[self.unit](value)

    def exceeds(self, measured: float, limit: float) -> bool:
        return measured < limit if self.higher_is_better else measured > limit


METRICS: tuple[Metric, ...] = (
    Metric("macs", "max_macs", "count", "multiply-accumulates of one forward pass", ratcheted=True),
    Metric("flops", "max_flops", "count", "floating-point operations, 2 x MACs"),
    Metric("params", "max_params", "count", "parameters, shared tensors counted once", ratcheted=True),
    Metric("size", "max_size", "bytes", "bytes of parameters and buffers, by dtype", ratcheted=True),
    Metric(
        "memory_traffic",
        "max_memory_traffic",
        "bytes",
        "bytes read plus written by every op (no caching or fusion)",
    ),
    Metric(
        "latency_ms",
        "max_latency_ms",
        "ms",
        "latency of one forward (median, or p90 with latency_stat)",
        timed=True,
    ),
    Metric(
        "throughput",
        "min_throughput",
        "rate",
        "items per second (batch / latency)",
        timed=True,
        higher_is_better=True,
    ),
    Metric(
        "roofline_ms",
        "max_roofline_ms",
        "ms",
        "roofline estimate of latency on the given hardware (deterministic)",
    ),
    Metric(
        "memory", "max_memory", "bytes", "peak memory of one forward: CUDA allocator peak, or a CPU estimate"
    ),
    Metric(
        "max_batch",
        "min_max_batch",
        "count",
        "largest batch that fits in CUDA memory",
        timed=True,
        higher_is_better=True,
    ),
)
METRICS_BY_NAME = {m.name: m for m in METRICS}
METRICS_BY_KEYWORD = {m.keyword: m for m in METRICS}
RATCHETED = tuple(m.name for m in METRICS if m.ratcheted)

TOLERANCE_KEYWORD = "tolerance"


def _parse_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise UnitError(f"{shown(value)} is not True or False")
    return value


def _parse_stat(value: object) -> str:
    if value not in ("median", "p90"):
        raise UnitError(f"{shown(value)} is not 'median' or 'p90'")
    return str(value)


def _parse_device(value: object) -> str:
    if not isinstance(value, str) or value.split(":")[0] not in ("cpu", "cuda", "mps", "xpu"):
        raise UnitError(f"{shown(value)} is not a device name such as 'cpu', 'cuda' or 'cuda:1'")
    return value


def _parse_positive_int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UnitError(f"{shown(value)} is not a whole number >= 1")
    return value


def _parse_hardware(value: object) -> object:
    from .roofline import hardware

    hardware(value)  # validates; the spec itself is built where it is used
    return value


# Keywords that shape how a call is measured rather than limiting a metric.
CALL_OPTIONS: Mapping[str, Callable[[object], object]] = {
    "timing": _parse_bool,  # time this call even without a timed limit (records a latency baseline)
    "latency_stat": _parse_stat,
    "latency_tolerance": parse_fraction,
    "cuda_graph": _parse_bool,
    "device": _parse_device,
    "batch_size": _parse_positive_int,
    "hardware": _parse_hardware,  # for max_roofline_ms
}
KEYWORDS: tuple[str, ...] = (*METRICS_BY_KEYWORD, TOLERANCE_KEYWORD, *CALL_OPTIONS)


@dataclass(frozen=True)
class Budget:
    """Limits written by a user (marker keywords or ``limits:`` in budgets.yaml)."""

    limits: Mapping[str, float]  # metric name -> largest (or, for throughput, smallest) allowed value
    tolerance: float | None = None  # relative growth allowed over the baseline
    options: Mapping[str, Any] = field(default_factory=dict)  # CALL_OPTIONS keywords

    @property
    def empty(self) -> bool:
        return not self.limits and self.tolerance is None and not self.options

    @property
    def wants_timing(self) -> bool:
        return bool(self.options.get("timing")) or any(METRICS_BY_NAME[m].timed for m in self.limits)


def _suggest(keyword: str) -> str:
    close = difflib.get_close_matches(keyword, KEYWORDS, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_budget(kwargs: Mapping[str, object], *, args: Iterable[object] = ()) -> Budget:
    """Marker keywords -> :class:`Budget`; errors name the keyword and what is accepted."""
    accepted = ", ".join(KEYWORDS)
    positional = list(args)
    if positional:
        raise BudgetSpecError(
            f"model_budget takes keyword arguments only, got positional {shown(positional)}; "
            f"accepted keywords: {accepted}"
        )
    limits: dict[str, float] = {}
    tolerance: float | None = None
    options: dict[str, Any] = {}
    for keyword, value in kwargs.items():
        if keyword in CALL_OPTIONS:
            try:
                options[keyword] = CALL_OPTIONS[keyword](value)
            except UnitError as error:
                raise BudgetSpecError(f"{keyword}={shown(value)}: {error}") from None
            continue
        if keyword == TOLERANCE_KEYWORD:
            try:
                tolerance = parse_fraction(value)
            except UnitError as error:
                raise BudgetSpecError(f"tolerance={shown(value)}: {error}") from None
            continue
        metric = METRICS_BY_KEYWORD.get(keyword)
        if metric is None:
            raise BudgetSpecError(
                f"unknown keyword {keyword!r}{_suggest(keyword)}; accepted keywords: {accepted}"
            )
        try:
            limit = metric.parse(value)
        except UnitError as error:
            raise BudgetSpecError(f"{keyword}={shown(value)}: {error}") from None
        if limit <= 0:
            raise BudgetSpecError(f"{keyword}={shown(value)}: a limit must be greater than zero")
        limits[metric.name] = limit
    return Budget(limits=limits, tolerance=tolerance, options=options)


@dataclass(frozen=True)
class Check:
    """One metric judged against one reference (a limit or a baseline)."""

    metric: str
    measured: float
    reference: float
    source: str  # "marker", "budgets.yaml limits" or "baseline"
    status: str  # "ok", "over", "shrank" or "inconclusive"
    tolerance: float = 0.0
    note: str = ""  # why a timing verdict is inconclusive, and what to do

    @property
    def failed(self) -> bool:
        return self.status == "over"

    @property
    def is_baseline(self) -> bool:
        return self.source == "baseline"

    @property
    def usage(self) -> float:
        """How much of the budget is used: above 1 means over (inverted for minimums)."""
        metric = METRICS_BY_NAME[self.metric]
        if metric.higher_is_better:
            return self.reference / self.measured if self.measured else float("inf")
        return self.measured / self.reference if self.reference else float("inf")

    @property
    def change(self) -> str:
        return format_change(self.measured, self.reference)

    def describe(self) -> str:
        """``macs 1.46 M > baseline 1.33 M (+9.9%)``, with units."""
        metric = METRICS_BY_NAME[self.metric]
        relation = {"over": ">", "shrank": "<", "inconclusive": "~>"}.get(self.status, "<=")
        if self.status == "over" and metric.higher_is_better:
            relation = "<"
        what = "baseline" if self.is_baseline else f"limit ({self.source})"
        allowed = f", tolerance {self.tolerance:.0%}" if self.is_baseline and self.tolerance else ""
        prefix = "inconclusive: " if self.status == "inconclusive" else ""
        note = f"; {prefix}{self.note}" if self.note else ""
        return (
            f"{self.metric} {metric.format(self.measured)} {relation} {what} "
            f"{metric.format(self.reference)} ({self.change}{allowed}){note}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "measured": self.measured,
            "reference": self.reference,
            "source": self.source,
            "status": self.status,
            "tolerance": self.tolerance,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Check:
        return cls(**data)


def check_limits(measured: Mapping[str, float], budget: Budget, source: str) -> list[Check]:
    """Hard limits: over when the measured value exceeds the limit."""
    return [
        Check(
            metric,
            measured[metric],
            limit,
            source,
            "over" if METRICS_BY_NAME[metric].exceeds(measured[metric], limit) else "ok",
        )
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
    rows.append(
        (TOLERANCE_KEYWORD, "fraction", "relative growth of MACs, params and size allowed over the baseline")
    )
    rows += [(keyword, *OPTION_HELP[keyword]) for keyword in CALL_OPTIONS]
    return rows


OPTION_HELP: Mapping[str, tuple[str, str]] = {
    "timing": ("bool", "time this call and keep a latency baseline, even without a timed limit"),
    "latency_stat": ("median|p90", "the latency statistic judged against limits and baselines"),
    "latency_tolerance": ("fraction", "slowdown over the latency baseline allowed (default 10%)"),
    "cuda_graph": ("bool", "time CUDA-graph replays: latency without host launch overhead"),
    "device": ("device", "time on this device ('cpu', 'cuda', 'cuda:1'); the model is moved there and back"),
    "batch_size": (
        "count",
        "items per call for min_throughput (default: the first input's leading dimension)",
    ),
}
