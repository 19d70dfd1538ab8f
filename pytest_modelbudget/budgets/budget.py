"""What a budget is, how users write one, and the one resolved budget of a measured call.

Pure functions and frozen values: no pytest, no torch, no files. The pytest layer parses
marker keywords with :func:`parse_budget` at collection time; budgets.yaml's ``limits:``
are parsed the same way when the file is loaded. For each measured call, :func:`resolve`
merges the marker, the file's limits and the run's settings once into a :class:`CallBudget`,
which is all the measuring and checking code looks at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any

from ..calls.metric import Metric
from ..errors import BudgetSpecError, UnitError, shown
from ..units import parse_device, parse_fraction, parse_positive_int, parse_stat
from .metrics import METRICS, METRICS_BY_KEYWORD, METRICS_BY_NAME

if TYPE_CHECKING:
    from ..core.timing.timer import TimingSettings

__all__ = ["METRICS_BY_NAME", "Budget", "CallBudget", "CallSettings", "Limit", "Source", "parse_budget"]

TOLERANCE_KEYWORD = "tolerance"


def _parse_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise UnitError(f"{shown(value)} is not True or False")
    return value


AUTOCAST_DTYPES = ("bfloat16", "float16")


def _parse_autocast(value: object) -> bool | str:
    if isinstance(value, bool) or value in AUTOCAST_DTYPES:
        return value
    raise UnitError(f"{shown(value)} is not True, False, 'bfloat16' or 'float16'")


def parse_compile(value: object) -> object:
    from ..core.compiling import parse_compile  # no torch: the keywords are checked by name and type

    return parse_compile(value)


def parse_hardware(value: object) -> object:
    from ..core.counting.roofline import hardware

    hardware(value)  # validates; the spec itself is built where it is used
    return value


@dataclass(frozen=True)
class _CallOption:
    """A keyword that shapes how a call is measured rather than limiting a metric."""

    parse: Callable[[object], object]
    kind: str  # for the reference table
    help: str


CALL_OPTIONS: Mapping[str, _CallOption] = {
    "timing": _CallOption(
        _parse_bool, "bool", "time this call and keep a latency baseline, even without a timed limit"
    ),
    "latency_stat": _CallOption(
        parse_stat, "median|p90", "the latency statistic judged against limits and baselines"
    ),
    "latency_tolerance": _CallOption(
        parse_fraction, "fraction", "slowdown over the latency baseline allowed (default 10%)"
    ),
    "cuda_graph": _CallOption(
        _parse_bool, "bool", "time CUDA-graph replays: latency without host launch overhead"
    ),
    "device": _CallOption(
        parse_device,
        "device",
        "time on this device ('cpu', 'cuda', 'cuda:1'); the model is moved there and back",
    ),
    "batch_size": _CallOption(
        parse_positive_int,
        "count",
        "items per call for min_throughput (default: the first input's leading dimension)",
    ),
    "autocast": _CallOption(
        _parse_autocast,
        "bool|dtype",
        "measure under torch.autocast: True (bfloat16 on CPU, float16 on CUDA), 'bfloat16' or 'float16'",
    ),
    "hardware": _CallOption(
        parse_hardware, "preset|mapping", "hardware for max_roofline_ms: 'h100', 'a100' or a custom spec"
    ),
    "compile": _CallOption(
        parse_compile,
        "bool|mapping",
        "measure the torch.compile'd model: True, or torch.compile keywords "
        "({'mode': 'max-autotune', 'backend': 'aot_eager', ...}); see docs/compile.md",
    ),
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


def _suggest(keyword: str) -> str:
    import difflib  # only on the error path

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
        metric = METRICS_BY_KEYWORD.get(keyword)
        if metric is None and keyword not in CALL_OPTIONS and keyword != TOLERANCE_KEYWORD:
            raise BudgetSpecError(
                f"unknown keyword {keyword!r}{_suggest(keyword)}; accepted keywords: {accepted}"
            )
        try:
            if keyword in CALL_OPTIONS:
                options[keyword] = CALL_OPTIONS[keyword].parse(value)
            elif keyword == TOLERANCE_KEYWORD:
                tolerance = parse_fraction(value)
            else:
                assert metric is not None
                limits[metric.name] = metric.parse(value)
        except UnitError as error:
            raise BudgetSpecError(f"{keyword}={shown(value)}: {error}") from None
        if metric is not None and (
            limits[metric.name] < 0 or (limits[metric.name] == 0 and not metric.zero_allowed)
        ):
            least = "zero or more" if metric.zero_allowed else "greater than zero"
            raise BudgetSpecError(f"{keyword}={shown(value)}: a limit must be {least}")
    return Budget(limits=limits, tolerance=tolerance, options=options)


def keyword_table() -> list[tuple[str, str, str]]:
    """(keyword, unit, meaning) rows, for docs and error messages."""
    rows = [(m.keyword, m.unit, m.description) for m in METRICS]
    rows.append(
        (TOLERANCE_KEYWORD, "fraction", "relative growth of MACs, params and size allowed over the baseline")
    )
    rows += [(keyword, option.kind, option.help) for keyword, option in CALL_OPTIONS.items()]
    return rows


# -- the resolved budget of one call ---------------------------------------------------


class Source(str, Enum):
    """Where a reference value comes from; the value is how reports name it."""

    MARKER = "marker"
    FILE = "budgets.yaml limits"
    BASELINE = "baseline"


@dataclass(frozen=True)
class Limit:
    """One hard limit on one metric, and who set it."""

    metric: str
    value: float
    source: Source

    @property
    def definition(self) -> Metric:
        return METRICS_BY_NAME[self.metric]


@dataclass(frozen=True)
class CallSettings:
    """The run-wide settings a measurement needs (resolved once by the pytest layer)."""

    update: bool = False
    strict: bool = False
    timing_enabled: bool = True
    timing: TimingSettings | None = None  # None: the defaults of TimingSettings
    latency_stat: str = "median"
    latency_tolerance: float = 0.10
    hardware: str | None = None  # roofline preset when the budget names none
    compile: bool = False  # --budget-compile: compile every budgeted call without compile=False


@dataclass(frozen=True)
class CallBudget:
    """Everything that decides how one call is measured and judged, merged once.

    Limits from the marker come before those from budgets.yaml; both apply. Options
    (device, latency statistic, ...) come from the marker, else the file, else the run.
    """

    limits: tuple[Limit, ...]
    tolerance: float  # growth allowed over the MACs/params/size baseline
    latency_tolerance: float
    latency_stat: str
    timing: TimingSettings  # with this call's device and CUDA-graph choice
    timed: bool  # the call asks for timing and the run allows it
    timing_enabled: bool  # the run measures on devices at all (not --budget-no-timing)
    hardware: object | None  # roofline spec (preset name or mapping), or None
    batch_size: int | None  # items per call for throughput; None: from the inputs
    autocast: bool | str = False  # measure under torch.autocast: True, or the dtype to cast to
    update: bool = False  # measured by --update-budgets: baselines are accepted, not enforced
    strict: bool = False  # --budget-strict (never while updating)
    # torch.compile keyword arguments when the call is compiled ({} for the defaults), else None;
    # an already compiled model is measured as given unless compile=False says eager.
    compile: Mapping[str, Any] | None = None
    eager: bool = False  # compile=False: an already compiled model is measured as its eager module
    # The call options the marker and the file's limits set (CALL_OPTIONS keywords), as
    # parsed: what a kind of call refuses is judged by these, not by run-wide settings.
    options: Mapping[str, Any] = field(default_factory=dict)

    def limits_of(self, metric: str) -> tuple[Limit, ...]:
        return tuple(limit for limit in self.limits if limit.metric == metric)

    def limited(self, metric: str) -> bool:
        return any(limit.metric == metric for limit in self.limits)


def resolve(marker: Budget, file_limits: Budget | None, settings: CallSettings) -> CallBudget:
    """The marker, the file's hand-written limits and the run's settings, as one value."""
    from ..core.timing.timer import TimingSettings

    sources = [(Source.MARKER, marker)] + ([(Source.FILE, file_limits)] if file_limits else [])
    limits = tuple(
        Limit(metric, value, source) for source, budget in sources for metric, value in budget.limits.items()
    )
    options = {**(file_limits.options if file_limits else {}), **marker.options}
    tolerance = marker.tolerance
    if tolerance is None and file_limits is not None:
        tolerance = file_limits.tolerance
    timing = settings.timing or TimingSettings()
    wants_timing = bool(options.get("timing")) or any(METRICS_BY_NAME[lim.metric].timed for lim in limits)
    return CallBudget(
        limits=limits,
        tolerance=tolerance or 0.0,
        latency_tolerance=float(options.get("latency_tolerance", settings.latency_tolerance)),
        latency_stat=str(options.get("latency_stat", settings.latency_stat)),
        timing=replace(
            timing,
            device=options.get("device", timing.device),
            cuda_graph=options.get("cuda_graph", timing.cuda_graph),
        ),
        timed=settings.timing_enabled and wants_timing,
        timing_enabled=settings.timing_enabled,
        hardware=options.get("hardware", settings.hardware),
        batch_size=options.get("batch_size"),
        autocast=options.get("autocast", False),
        update=settings.update,
        strict=settings.strict and not settings.update,
        compile=_compile_options(options.get("compile", settings.compile)),
        eager=options.get("compile") is False,
        options=options,
    )


def _compile_options(value: object) -> Mapping[str, Any] | None:
    if value is False:
        return None
    return dict(value) if isinstance(value, Mapping) else {}
