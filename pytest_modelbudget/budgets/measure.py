"""One measured call, start to finish: resolve, measure, judge -- as typed values.

Plain Python, no pytest and no text for users: :func:`measure_call` returns a
:class:`~.results.CallResult` (its checks, verdict and ``--budget-strict`` failures) and
the :class:`~.results.Measurement` the fixture hands back; the pytest layer has the
report layer word them and turns them into a pass, a failure or a warning.

What differs between a forward, a training step and a compiled call is the kind of call's
(:mod:`~..calls`): this module resolves the budget once, refuses what the kind cannot
measure, hands the kind a :class:`~.device_run.DeviceRun`, and judges what comes back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..calls.metric import Readings
from ..errors import MeasurementError
from .baselines import Entry, entry_key
from .budget import Budget, CallBudget, CallSettings, resolve
from .checks import call_verdict, check_call, strict_failures
from .device_run import DeviceRun
from .metrics import CALLS, METRICS_BY_NAME, read_all
from .results import MODULE_DEPTH, CallResult, Measurement, shallow_modules

if TYPE_CHECKING:
    from ..calls.kind import CallKind
    from ..core.compiling import Inputs
    from ..core.counting.count import Counts
    from ..core.timing.timer import Progress


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
    progress: Progress | None = None,
    earlier_inputs: Sequence[Inputs] = (),
    kind: CallKind | None = None,
) -> tuple[CallResult, Measurement]:
    """Measure one call of ``model`` (count it, and time it when the budget asks) and judge it.

    ``kind`` is the kind of call (:mod:`~..calls`): a training step
    (:class:`~..calls.train_step.TrainStep`), say. None: a forward -- compiled when the
    budget says ``compile`` or ``--budget-compile`` is on, or when the model is already
    compiled; a compiled call also runs ``earlier_inputs`` (this test's earlier inputs of the
    same model), so that their recompiles show.

    Raises :class:`~..errors.MeasurementError` when the model cannot be measured; an
    exception from the model's own forward propagates unchanged.
    """
    from ..calls.compiled import forward_kind

    budget = resolve(marker, entry.budget if entry else None, settings)
    if kind is None:
        kind = forward_kind(model, budget.compile, eager=budget.eager, earlier=earlier_inputs)
    kind = kind.fitted(budget.options)
    _refuse_what_it_cannot_measure(kind, budget)
    budget = _fitted(budget, kind)
    run = DeviceRun(args, kwargs, budget, kind, entry, progress=progress)
    with kind.measure(model, args, kwargs, device=budget.timing.device, autocast=budget.autocast) as measured:
        if measured.timed:
            run.run(measured.timed)
    counts = measured.counts
    readings = Readings(
        counts=counts,
        figures=measured.figures,
        latency_stat=budget.latency_stat,
        timing=run.timings.get("call"),
        timings=dict(run.timings),
        roofline_ms=_roofline_ms(counts, budget) if _measures(kind, "roofline_ms") else None,
        cuda_memory=run.cuda_memory,
        on_cuda=run.on_cuda,
        max_batch=run.max_batch,
    )
    values = read_all(readings, kind)
    has_baseline = entry is not None and bool(entry.metrics)
    checks = check_call(
        values,
        budget,
        entry.metrics if entry is not None and has_baseline else None,
        timed_limits=run.timed_limits,
        timing_baselines=run.baseline_verdicts,
    )
    result = CallResult(
        nodeid=nodeid,
        name=name,
        metrics=values,
        modules=shallow_modules(counts.by_module(MODULE_DEPTH), measured.module_figures, MODULE_DEPTH),
        uncounted=dict(counts.uncounted),
        convention=counts.convention,
        executed_on=counts.executed_on,
        checks=checks,
        verdict=call_verdict(checks, has_baseline=has_baseline, updating=budget.update),
        strict_failures=strict_failures(checks, has_baseline=has_baseline, uncounted=counts.uncounted)
        if budget.strict
        else (),
        baseline_modules=entry.modules if entry else {},
        has_baseline=has_baseline,
        updating=budget.update,
        timing=run.timing,
        timings=dict(run.timings),
        macs_by_dtype=dict(counts.macs_by_dtype),
        compiled=measured.compiled,
        memory_by_kind=dict(measured.memory_by_kind),
        details=dict(measured.details),
    )
    measurement = Measurement(
        key=entry_key(nodeid, name),
        counts=counts,
        checks=checks,
        timing=run.timing,
        call=kind.name,
        figures=measured.figures,
        timings=dict(run.timings),
    )
    return result, measurement


def _measures(kind: CallKind, metric: str) -> bool:
    return kind.measures_metric(METRICS_BY_NAME[metric])


def _refuse_what_it_cannot_measure(kind: CallKind, budget: CallBudget) -> None:
    """Limits of another kind of call, and options the kind refuses: an error, never a
    silently unchecked limit."""
    for call, (described, remedy) in CALLS.items():
        wrong = sorted(
            {
                limit.definition.keyword
                for limit in budget.limits
                if limit.definition.call == call and not kind.measures_metric(limit.definition)
            }
        )
        if wrong:
            raise MeasurementError(kind.wrong_limits(described, remedy, wrong))
    for option, instead in kind.refused.items():
        if budget.options.get(option) not in (None, False):
            raise MeasurementError(instead)


def _fitted(budget: CallBudget, kind: CallKind) -> CallBudget:
    """The budget's timing settings for this kind of call: no CUDA graph of the whole call
    where the kind is timed without one (a run-wide --budget-cuda-graphs leaves it alone; the
    budget's own cuda_graph= was refused) or graphs its own steps (:meth:`CallKind.fitted`).
    Each timed figure brings its fingerprint mode (``Timed.mode``)."""
    if "cuda_graph" not in kind.refused and kind.graphs_whole_call:
        return budget
    return replace(budget, timing=replace(budget.timing, cuda_graph=False))


def _roofline_ms(counts: Counts, budget: CallBudget) -> float | None:
    """The roofline latency estimate, when a budget limits it or a hardware spec is given."""
    from ..core.counting.roofline import estimate, hardware

    if budget.hardware is None:
        if budget.limited("roofline_ms"):
            raise MeasurementError(
                "max_roofline_ms needs a hardware spec: hardware='h100' in the marker, or --budget-hardware"
            )
        return None
    return estimate(counts.ops, hardware(budget.hardware)).total_ms
