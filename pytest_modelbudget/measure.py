"""One measured call, start to finish: count, time if asked, judge, and describe the outcome.

Plain Python, no pytest: the fixture calls :func:`measure_call` and only turns the
outcome into a pass, a failure or a warning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from . import budgets, report
from .baselines import Entry
from .budgets import Budget, Check
from .results import CallResult, Measurement, entry_key, shallow_modules
from .timing import LatencyBaseline, TimingSettings, TimingStats, TimingVerdict

if TYPE_CHECKING:
    from .counting import Counts
    from .timing import Progress

MODULE_DEPTH = 2  # levels of the module tree kept in budgets.yaml for failure messages


@dataclass(frozen=True)
class CallSettings:
    """The run-wide settings a measurement needs (resolved once by the plugin)."""

    update: bool = False
    strict: bool = False
    timing_enabled: bool = True
    timing: TimingSettings = field(default_factory=TimingSettings)
    latency_stat: str = "median"
    latency_tolerance: float = 0.10
    hardware: str | None = None  # roofline preset when the budget names none


@dataclass(frozen=True)
class Outcome:
    result: CallResult
    measurement: Measurement
    failures: tuple[str, ...]  # lines of the failure message; empty when the call passed
    warnings: tuple[str, ...]  # inconclusive timing verdicts (failures under strict)


def measure_call(
    model: Any,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    nodeid: str,
    name: str | None,
    marker: Budget,
    entry: Entry | None,
    settings: CallSettings,
    budgets_file: str,
    progress: Progress | None = None,
) -> Outcome:
    """Count (and time, when the budget asks for it) one forward pass and judge it.

    Raises :class:`~.errors.MeasurementError` when the model cannot be measured; an
    exception from the model's own forward propagates unchanged.
    """
    from .counting import count  # imports torch: only when a model is measured

    counts = count(model, args, kwargs)
    measured: dict[str, float] = _counted_metrics(counts)
    file_budget = entry.budget if entry else None
    roofline_ms = _roofline_ms(counts, marker, file_budget, settings)
    if roofline_ms is not None:
        measured["roofline_ms"] = roofline_ms
    # Peak memory: on CUDA the allocator's peak from a real forward (below); elsewhere the
    # estimate from the dispatch trace.
    on_cuda = _runs_on_cuda(model, args, marker, file_budget, settings)
    if not on_cuda:
        measured["memory"] = counts.peak_memory
    has_baseline = entry is not None and bool(entry.metrics)
    checks = budgets.check(
        measured,
        marker=marker,
        file_limits=file_budget,
        baseline=entry.metrics if entry is not None and has_baseline else None,
    )
    timing: TimingStats | None = None
    probes: Mapping[str, float] = {}
    wants_timing = marker.wants_timing or (file_budget is not None and file_budget.wants_timing)
    if settings.timing_enabled and wants_timing:
        timing, timing_checks, probes = _time_and_judge(
            model, args, kwargs, marker, file_budget, entry, settings, progress
        )
        checks += timing_checks
        measured.update(latency_ms=timing.median_ms, throughput=timing.throughput)
        if timing.peak_memory is not None:
            measured["memory"] = timing.peak_memory
            checks += _memory_checks(measured, marker, file_budget)
        batch_checks = _max_batch_checks(model, args, kwargs, marker, file_budget, settings)
        if batch_checks:
            measured["max_batch"] = batch_checks[0].measured
            checks += batch_checks
    if on_cuda and "memory" not in measured and _limits(marker, file_budget, "memory"):
        from .timing import cuda_peak_memory

        measured["memory"] = cuda_peak_memory(model, args, kwargs)
        checks += _memory_checks(measured, marker, file_budget)
    result = CallResult(
        nodeid=nodeid,
        name=name,
        metrics=measured,
        modules=shallow_modules(counts.by_module(MODULE_DEPTH)),
        uncounted=dict(counts.uncounted),
        convention=counts.convention,
        executed_on=counts.executed_on,
        checks=tuple(checks),
        baseline_modules=entry.modules if entry else {},
        has_baseline=has_baseline,
        updating=settings.update,
        timing=timing.to_dict() if timing else None,
        probes=dict(probes),
    )
    failures = list(report.failure_lines(result, budgets_file)) if result.failed_checks else []
    inconclusive = [
        c for c in result.checks if c.status == "inconclusive" and not (settings.update and c.is_baseline)
    ]
    warnings = [f"{result.key}: {c.describe()}. {report.TIMING_HINT}" for c in inconclusive]
    if settings.strict and not settings.update:
        if not has_baseline:
            failures.append(
                f"--budget-strict: {result.key} has no baseline in {budgets_file}; "
                "record one with pytest --model-budget --update-budgets"
            )
        if counts.uncounted:
            ops = ", ".join(f"{op} x{n}" for op, n in counts.uncounted.items())
            failures.append(f"--budget-strict: ops with arithmetic the counter cannot count: {ops}")
        failures += [f"--budget-strict: inconclusive timing is a failure: {w}" for w in warnings]
        warnings = []
    measurement = Measurement(key=entry_key(nodeid, name), counts=counts, checks=result.checks, timing=timing)
    return Outcome(result, measurement, tuple(failures), tuple(warnings))


def _counted_metrics(counts: Counts) -> dict[str, float]:
    return {
        "macs": counts.macs,
        "flops": counts.flops,
        "params": counts.params,
        "size": counts.size_bytes,
        "memory_traffic": counts.memory_traffic,
    }


def _roofline_ms(
    counts: Counts, marker: Budget, file_budget: Budget | None, settings: CallSettings
) -> float | None:
    """The roofline latency estimate, when a budget limits it or a hardware spec is given."""
    from .errors import MeasurementError
    from .roofline import estimate, hardware

    options = _options(marker, file_budget)
    spec = options.get("hardware", settings.hardware)
    limited = "roofline_ms" in marker.limits or (
        file_budget is not None and "roofline_ms" in file_budget.limits
    )
    if spec is None:
        if limited:
            raise MeasurementError(
                "max_roofline_ms needs a hardware spec: hardware='h100' in the marker, or --budget-hardware"
            )
        return None
    return estimate(counts.ops, hardware(spec)).total_ms


def _time_and_judge(
    model: Any,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    marker: Budget,
    file_budget: Budget | None,
    entry: Entry | None,
    settings: CallSettings,
    progress: Progress | None,
) -> tuple[TimingStats, list[Check], Mapping[str, float]]:
    from .devices import measure_probes
    from .timing import (
        RECORD_MEASUREMENTS,
        batch_size_of,
        fingerprint_for,
        measure_and_judge,
        recorded,
        time_forward,
    )

    options = _options(marker, file_budget)
    timing_settings = replace(
        settings.timing,
        device=options.get("device", settings.timing.device),
        cuda_graph=options.get("cuda_graph", settings.timing.cuda_graph),
    )
    stat = str(options.get("latency_stat", settings.latency_stat))
    tolerance = float(options.get("latency_tolerance", settings.latency_tolerance))
    batch = int(options.get("batch_size") or batch_size_of(args, kwargs))
    stored = entry.timing.get(fingerprint_for(model, args, timing_settings)) if entry else None
    baseline = LatencyBaseline.from_stored(stored) if stored else None
    # Every latency-like limit, as (metric, source, limit, limit in ms per call).
    limits: list[tuple[str, str, float, float]] = []
    for source, budget in _sources(marker, file_budget):
        if "latency_ms" in budget.limits:
            limits.append(("latency_ms", source, budget.limits["latency_ms"], budget.limits["latency_ms"]))
        if "throughput" in budget.limits:
            per_second = budget.limits["throughput"]
            limits.append(("throughput", source, per_second, batch * 1e3 / per_second))

    def measure() -> TimingStats:
        return time_forward(model, args, kwargs, timing_settings, batch_size=batch, progress=progress)

    measurements, verdicts, _ = measure_and_judge(
        measure,
        limits_ms=[limit_ms for *_, limit_ms in limits],
        baseline=baseline,
        tolerance=tolerance,
        stat=stat,
        probe=measure_probes,
        at_least=RECORD_MEASUREMENTS if settings.update else 1,
    )
    best = recorded(measurements, stat) if settings.update else min(measurements, key=lambda m: m.stat(stat))
    checks = [_limit_check(limit, verdict, best) for limit, verdict in zip(limits, verdicts, strict=False)]
    if baseline is not None:
        verdict = verdicts[-1]
        checks.append(
            Check(
                "latency_ms",
                verdict.measured_ms,
                verdict.reference_ms,
                "baseline",
                verdict.status,
                tolerance,
                verdict.reason,
            )
        )
    # Probes go into the baseline next to the timing they describe: on CPU those taken
    # during the measurement, elsewhere a set taken now.
    probes = (best.probes or measure_probes()) if settings.update else {}
    return best, checks, probes


def _sources(marker: Budget, file_budget: Budget | None) -> list[tuple[str, Budget]]:
    """The budgets that apply to a call, with the name each check reports as its source."""
    return [("marker", marker)] + ([("budgets.yaml limits", file_budget)] if file_budget else [])


def _options(marker: Budget, file_budget: Budget | None) -> dict[str, Any]:
    """Measurement options (device, cuda_graph, hardware, ...): the marker wins over the file."""
    return {**(file_budget.options if file_budget else {}), **marker.options}


def _limits(marker: Budget, file_budget: Budget | None, metric: str) -> bool:
    return metric in marker.limits or (file_budget is not None and metric in file_budget.limits)


def _runs_on_cuda(
    model: Any, args: tuple[Any, ...], marker: Budget, file_budget: Budget | None, settings: CallSettings
) -> bool:
    from .timing import model_device

    options = _options(marker, file_budget)
    device = options.get("device", settings.timing.device)
    return str(device or model_device(model, args)).startswith("cuda")


def _memory_checks(measured: Mapping[str, float], marker: Budget, file_budget: Budget | None) -> list[Check]:
    # Only now is the peak known; the counting checks ran before timing.
    memory_only = [
        (source, Budget(limits={"memory": budget.limits["memory"]}))
        for source, budget in _sources(marker, file_budget)
        if "memory" in budget.limits
    ]
    return [
        check for source, budget in memory_only for check in budgets.check_limits(measured, budget, source)
    ]


def _max_batch_checks(
    model: Any,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    marker: Budget,
    file_budget: Budget | None,
    settings: CallSettings,
) -> list[Check]:
    from .timing import max_batch

    required = [
        (source, budget.limits["max_batch"])
        for source, budget in _sources(marker, file_budget)
        if "max_batch" in budget.limits
    ]
    if not required:
        return []
    options = _options(marker, file_budget)
    timing_settings = replace(settings.timing, device=options.get("device", settings.timing.device))
    found = max_batch(model, args, kwargs, timing_settings, limit=int(4 * max(n for _, n in required)))
    return [Check("max_batch", found, n, source, "over" if found < n else "ok") for source, n in required]


def _limit_check(limit: tuple[str, str, float, float], verdict: TimingVerdict, best: TimingStats) -> Check:
    metric, source, value, _ = limit
    measured = best.throughput if metric == "throughput" else verdict.measured_ms
    return Check(metric, measured, value, source, verdict.status, note=verdict.reason)
