"""A metric row: one quantity a budget can limit, and how to parse, read, compare and name it.

Each kind of call declares the rows it measures (:mod:`.forward`, :mod:`.train_step`,
:mod:`.compiled`; :mod:`.common` for what every kind has); the metric table
(:mod:`~..budgets.metrics`) is their sum. A row says

* how users write its limit (``keyword`` and ``unit``: the parser and the formatter),
* where its value comes from in a measured call (``read`` from :class:`Readings`),
* how a limit is compared (``higher_is_better`` for minimums such as throughput),
* whether ``budgets.yaml`` keeps it as a ratcheted baseline, and whether it needs timing,
* which kind of call measures it (``call``), its short name in reports (``label``), the
  per-module figure that says where it grew (``module_figure``), and the timed figure of the
  call it is read from (``timed_by``: a generation times its first token and all of it).

No torch here, and no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..units import (
    format_bytes,
    format_count,
    format_duration,
    format_rate,
    format_seconds,
    parse_bytes,
    parse_count,
    parse_duration_ms,
    parse_duration_s,
    parse_rate,
)

if TYPE_CHECKING:
    from ..core.counting.count import Counts
    from ..core.timing.timer import TimingStats

_PARSERS: dict[str, Callable[[object], float]] = {
    "count": parse_count,
    "bytes": parse_bytes,
    "ms": parse_duration_ms,
    "rate": parse_rate,
    "s": parse_duration_s,
}
_FORMATTERS: dict[str, Callable[[float], str]] = {
    "count": format_count,
    "bytes": format_bytes,
    "ms": format_duration,
    "rate": format_rate,
    "s": format_seconds,
}


@dataclass(frozen=True)
class Readings:
    """What the measuring core produced for one call; each metric reads its value from here."""

    counts: Counts  # the forward's (a training step's: its forward in train mode)
    timing: TimingStats | None = None  # when the call was timed
    roofline_ms: float | None = None  # when a hardware spec was given
    cuda_memory: int | None = None  # CUDA allocator peak of one call, when measured there
    on_cuda: bool = False
    max_batch: int | None = None  # when min_max_batch asked for the search
    latency_stat: str = "median"  # the statistic latency is judged by: "median" or "p90"
    # What this kind of call measured beyond a forward's counts (a training step's
    # TrainCounts, a compiled call's CompileStats); only that kind's rows read it.
    figures: Any = None
    # Every timed figure's measurement, by name (``timing`` is the "call" one's).
    timings: Mapping[str, TimingStats] = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    """A measured quantity that a budget can limit."""

    name: str
    keyword: str
    unit: str  # "count", "bytes", "ms", "s" or "rate"
    description: str
    read: Callable[[Readings], float | None]  # None: not measured in this call
    ratcheted: bool = False  # kept as a baseline in budgets.yaml and never allowed to grow
    timed: bool = False  # needs the model to be timed, not only counted
    higher_is_better: bool = False  # the limit is a minimum (throughput), not a maximum
    # A ratcheted metric is stored only where this holds of the call's values (default: always).
    stored_if: Callable[[Mapping[str, float]], bool] | None = None
    zero_allowed: bool = False  # a limit of 0 means "none at all" (graph breaks), not a mistake
    # The kind of call that measures it (a CallKind's name: "forward", "train", "compiled",
    # "generate"), "pass" (every kind that runs the model once) or "any". A limit on a call
    # of another kind is an error.
    call: str = "any"
    label: str = ""  # its short name in reports ("train MACs"); the name where empty
    # Measured on CUDA only; a limit on a call that runs on the CPU is an error that names
    # this keyword, the CPU's estimate of the same thing.
    cpu_twin: str | None = None
    # The per-module figure (under `modules:` in budgets.yaml) that explains its growth: a
    # failure names the modules where that figure grew most.
    module_figure: str | None = None
    wall_time: bool = False  # a wall-clock figure measured without timing (compile time)
    # The timed figure of the call a timed metric is judged on (:class:`~.kind.Timed`):
    # "call" (the forward, the step), "ttft" or "generation" (a generation).
    timed_by: str = "call"

    @property
    def judged_while_timing(self) -> bool:
        """A time or a rate of a timed figure: judged as the time it allows while the call is
        timed, so that a slow-looking measurement is repeated before it is believed."""
        return self.timed and self.unit in ("ms", "rate")

    def parse(self, value: object) -> float:
        return _PARSERS[self.unit](value)

    def format(self, value: float) -> str:
        return _FORMATTERS[self.unit](value)

    def exceeds(self, measured: float, limit: float) -> bool:
        return measured < limit if self.higher_is_better else measured > limit

    @property
    def shown_as(self) -> str:
        return self.label or self.name

    @property
    def noisy(self) -> bool:
        """Whether two runs of the same code may measure it differently (timed, or wall time):
        such a figure is compared between runs only on the same kind of device."""
        return self.timed or self.wall_time


def timed_statistic(readings: Readings, figure: str = "call") -> float | None:
    """The judged statistic (median or p90) of a timed figure, when it was timed: a forward's
    latency, a training step's time, a generation's time to first token."""
    timing = readings.timing if figure == "call" else readings.timings.get(figure)
    return timing.stat(readings.latency_stat) if timing else None
