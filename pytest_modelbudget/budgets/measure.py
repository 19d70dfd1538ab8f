"""One measured call, start to finish: count, time if asked, judge -- as typed values.

Plain Python, no pytest and no text for users: :func:`measure_call` returns a
:class:`~.results.CallResult` (its checks, verdict and ``--budget-strict`` failures) and
the :class:`~.results.Measurement` the fixture hands back; the pytest layer has the
report layer word them and turns them into a pass, a failure or a warning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import MeasurementError
from .baselines import Entry, entry_key
from .budget import Budget, CallBudget, CallSettings, Limit, resolve
from .checks import call_verdict, check_call, strict_failures
from .metrics import COMPILED, FORWARD_ONLY, TRAIN_ONLY, Readings, read_all
from .results import CallResult, Measurement, shallow_modules

if TYPE_CHECKING:
    from ..core.compiling import CompileStats, Inputs
    from ..core.counting.count import Counts
    from ..core.timing.timer import Progress, TimingStats
    from ..core.training.step import TrainCounts, TrainSpec
    from .timing_verdicts import TimingJudgement

MODULE_DEPTH = 2  # levels of the module tree kept in budgets.yaml for failure messages


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
    train: TrainSpec | None = None,
) -> tuple[CallResult, Measurement]:
    """Count (and time, when the budget asks for it) one forward pass and judge it.

    With ``train`` the call is one training step (forward, loss, backward, optimizer step):
    counted with :func:`~.training.count_train_step`, timed as a step, its forward metrics
    (MACs, params, size) those of the forward in train mode.

    A compiled call (``compile`` option, ``--budget-compile``, or a model the user compiled)
    counts the eager model, compiles it in a clean dynamo state, runs it on ``earlier_inputs``
    (the inputs of this test's earlier calls of the same model, so their recompiles show) and
    on this call's inputs, and times the compiled model.

    Raises :class:`~.errors.MeasurementError` when the model cannot be measured; an
    exception from the model's own forward propagates unchanged.
    """
    from ..core.compiling import eager_model, is_compiled
    from ..core.counting.count import count, require_module  # imports torch: only when a model is measured
    from ..core.devices import target_device

    require_module(model)
    budget = resolve(marker, entry.budget if entry else None, settings)
    _check_call_kind(budget, train is not None)
    if train is not None:
        budget = replace(budget, timing=replace(budget.timing, train=train))
    compiled_as_given = is_compiled(model) and budget.compile is None and not budget.eager
    if train is not None and (compiled_as_given or budget.compile is not None):
        raise MeasurementError(
            "a training step is counted and timed eagerly: pass the model itself, not a "
            "torch.compile'd one, and drop compile= (compiled training steps are not measured yet)"
        )
    eager = eager_model(model)
    on_cuda = target_device(eager, args, budget.timing.device).type == "cuda"
    if budget.limited("train_cuda_memory") and not on_cuda:
        raise MeasurementError(
            "max_train_cuda_memory limits the CUDA allocator's peak, but this training step runs on "
            "the CPU: limit the estimate with max_train_memory, or time on CUDA (device='cuda')"
        )
    if budget.autocast:  # True: the usual half dtype of the device
        dtype = budget.autocast if isinstance(budget.autocast, str) else "float16" if on_cuda else "bfloat16"
        budget = replace(budget, timing=replace(budget.timing, autocast=dtype))
    train_counts: TrainCounts | None = None
    if train is not None:
        from ..core.training.step import count_train_step

        train_counts = count_train_step(eager, args, kwargs, train)
        counts = train_counts.forward
    else:
        counts = count(eager, args, kwargs, autocast=budget.timing.autocast)
    judgement: TimingJudgement | None = None
    timed_limits: tuple[Limit, ...] = ()
    timing: TimingStats | None = None
    compiled: CompileStats | None = None
    if budget.timed:
        timed_limits = tuple(limit for limit in budget.limits if limit.metric in _TIMED_LIMITS)
    compiled_call = budget.compile is not None or compiled_as_given
    _check_compile_budget(budget, compiled_call)
    if compiled_call:
        from ..core.compiling import compile_session

        with compile_session(model, None if compiled_as_given else budget.compile) as session:
            compiled = session.run([*earlier_inputs, (args, kwargs)])
            if budget.timed:
                timed = replace(budget, timing=replace(budget.timing, compiled=session.label))
                judgement, timing = _time(session.fn, args, kwargs, timed, timed_limits, entry, progress)
    elif budget.timed:
        judgement, timing = _time(eager, args, kwargs, budget, timed_limits, entry, progress)
    readings = Readings(
        counts=counts,
        latency_stat=budget.latency_stat,
        timing=timing,
        roofline_ms=None if train else _roofline_ms(counts, budget),
        cuda_memory=_cuda_memory(eager, args, kwargs, budget, timing) if on_cuda else None,
        on_cuda=on_cuda,
        max_batch=_max_batch(eager, args, kwargs, budget),
        compiled=compiled,
        train=train_counts,
    )
    measured = read_all(readings)
    has_baseline = entry is not None and bool(entry.metrics)
    checks = check_call(
        measured,
        budget,
        entry.metrics if entry is not None and has_baseline else None,
        timed_limits=dict(zip(timed_limits, judgement.limits, strict=True)) if judgement else None,
        latency_baseline=judgement.baseline if judgement else None,
        timed_metric="train_step_ms" if train else "latency_ms",
    )
    result = CallResult(
        nodeid=nodeid,
        name=name,
        metrics=measured,
        modules=shallow_modules(
            counts.by_module(MODULE_DEPTH),
            train_counts.backward_by_module(MODULE_DEPTH) if train_counts else None,
        ),
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
        timing=timing,
        macs_by_dtype=dict(counts.macs_by_dtype),
        compiled=compiled,
        memory_by_kind=dict(train_counts.memory_by_kind) if train_counts else {},
    )
    measurement = Measurement(
        key=entry_key(nodeid, name),
        counts=counts,
        checks=checks,
        timing=timing,
        compiled=compiled,
        train=train_counts,
    )
    return result, measurement


def _time(
    model: Any,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    budget: CallBudget,
    limits: tuple[Limit, ...],
    entry: Entry | None,
    progress: Progress | None,
) -> tuple[TimingJudgement, TimingStats]:
    """Time the call (again while it looks slow) and judge its timed limits and baseline.

    Returns the judgement and the measurement the call reports: when recording a baseline,
    the typical one with the machine's speed probes; otherwise the least disturbed one.
    """
    from ..core.devices import batch_size_of
    from ..core.timing.probes import measure_probes
    from ..core.timing.timer import placement_for, time_forward
    from .timing_verdicts import (
        RECHECK_MIN_S,
        RECORD_MEASUREMENTS,
        LatencyBaseline,
        decided_early,
        measure_and_judge,
        recorded,
    )

    where = placement_for(model, args, budget.timing)  # the fingerprint, computed once per call
    batch = budget.batch_size or batch_size_of(args, kwargs)
    stored = entry.timing.get(where.fingerprint) if entry else None
    baseline = LatencyBaseline.from_stored(stored) if stored else None

    def limit_ms(limit: Limit) -> float:
        # A throughput limit is judged as the latency it allows at this batch size.
        return limit.value if limit.metric in ("latency_ms", "train_step_ms") else batch * 1e3 / limit.value

    limits_ms = [limit_ms(limit) for limit in limits]

    def decided(stats: TimingStats) -> bool:
        return decided_early(
            stats,
            limits_ms=limits_ms,
            baseline=baseline,
            tolerance=budget.latency_tolerance,
            stat=budget.latency_stat,
        )

    taken: list[TimingStats] = []

    def measure() -> TimingStats:
        # A baseline being recorded gets full measurements; a check stops once clear, a
        # re-measurement (a call that looked slow) not before RECHECK_MIN_S.
        settings = budget.timing
        if taken and not budget.update:
            settings = replace(settings, min_decide_s=max(settings.min_decide_s, RECHECK_MIN_S))
        stats = time_forward(
            model,
            args,
            kwargs,
            settings,
            batch_size=batch,
            progress=progress,
            where=where,
            decided=None if budget.update else decided,
        )
        taken.append(stats)
        return stats

    judgement = measure_and_judge(
        measure,
        limits_ms=limits_ms,
        baseline=baseline,
        tolerance=budget.latency_tolerance,
        stat=budget.latency_stat,
        probe=measure_probes,
        at_least=RECORD_MEASUREMENTS if budget.update else 1,
    )
    if not budget.update:
        return judgement, judgement.best(budget.latency_stat)
    # A baseline keeps the machine's speed beside its timing: on CPU the probes taken
    # during the measurement, elsewhere a set taken now.
    kept = recorded(judgement.measurements, budget.latency_stat)
    return judgement, replace(kept, probes=kept.probes or measure_probes())


# The limits judged while timing: the rest are compared with a value after measuring.
_TIMED_LIMITS = ("latency_ms", "throughput", "train_step_ms")


def _check_call_kind(budget: CallBudget, train: bool) -> None:
    """Limits the call cannot measure: training-step metrics on a forward, and forward-only
    ones (or autocast) on a training step -- an error, not a silently unchecked limit."""
    wrong = TRAIN_ONLY if not train else FORWARD_ONLY
    limited = sorted({limit.definition.keyword for limit in budget.limits if limit.metric in wrong})
    if limited and not train:
        raise MeasurementError(
            f"{', '.join(limited)} limit(s) a training step: measure it with "
            "model_budget.train_step(model, *inputs, target=..., loss=..., optimizer=...)"
        )
    if limited:
        raise MeasurementError(
            f"{', '.join(limited)} limit(s) a forward pass, not a training step: use max_train_step_ms, "
            "max_train_memory or max_train_macs, or measure the forward with model_budget(model, ...)"
        )
    if train and budget.autocast:
        raise MeasurementError(
            "autocast is not supported for training steps yet: drop autocast= from the budget"
        )


def _check_compile_budget(budget: CallBudget, compiled_call: bool) -> None:
    """Limits that only a compiled call can meet, and options that do not go with compiling."""
    limited = [limit.definition.keyword for limit in budget.limits if limit.metric in COMPILED]
    if limited and not compiled_call:
        raise MeasurementError(
            f"{', '.join(sorted(set(limited)))} limit(s) a compiled call: add compile=True to the marker, "
            "run with --budget-compile, or pass a model compiled with torch.compile"
        )
    if compiled_call and budget.timing.autocast:
        raise MeasurementError(
            "autocast and compile cannot be combined yet: measure the compiled model "
            "without autocast, or the autocast model without compile"
        )


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


def _cuda_memory(
    model: Any,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    budget: CallBudget,
    timing: TimingStats | None,
) -> int | None:
    """The allocator peak on CUDA: from the timed run, else one forward when a limit needs it
    (one training step, always, for a training step: it is reported beside the estimate)."""
    if timing is not None and timing.peak_memory is not None:
        return timing.peak_memory
    train = budget.timing.train
    if not (budget.limited("memory") or train is not None) or not budget.timing_enabled:
        return None  # --budget-no-timing: nothing runs on the device
    from ..core.timing.cuda_memory import cuda_peak_memory

    return cuda_peak_memory(
        model, args, kwargs, device=budget.timing.device, autocast=budget.timing.autocast, train=train
    )


def _max_batch(
    model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], budget: CallBudget
) -> int | None:
    """The largest batch that fits, searched up to 4x the largest batch a limit requires."""
    required = budget.limits_of("max_batch")
    if not required or not budget.timed:
        return None
    from ..core.timing.cuda_memory import max_batch

    largest = int(max(limit.value for limit in required))
    return max_batch(model, args, kwargs, device=budget.timing.device, limit=4 * largest)
