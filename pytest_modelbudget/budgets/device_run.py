"""A call run on its device: timed and judged, its CUDA peak, the largest batch that fits.

A kind of call says what to repeat (:class:`~..calls.kind.Timed`: a forward, a training
step, a compiled forward; a generation's first token and all of it); :class:`DeviceRun`
decides from the call's budget whether to time it, how often to measure it again
(:func:`~.timing_verdicts.measure_and_judge`), when sampling may stop, whether to take
the CUDA allocator peak, and whether to search the largest batch -- and keeps what it found
for the call's readings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import MeasurementError
from .baselines import Entry
from .budget import CallBudget, Limit

if TYPE_CHECKING:
    from ..calls.kind import CallKind, Timed
    from ..core.devices import Repeated
    from ..core.timing.timer import Progress, TimingStats
    from .timing_verdicts import TimingVerdict


class DeviceRun:
    """What running one call on its device found: the timing and verdicts of each figure it
    times (when the budget is timed), its CUDA peak (on CUDA, when a limit needs it or the
    kind always reports it) and the largest batch that fits (when a limit asks)."""

    def __init__(
        self,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        budget: CallBudget,
        kind: CallKind,
        entry: Entry | None,
        *,
        progress: Progress | None,
    ) -> None:
        self.args, self.kwargs, self.budget, self.kind, self.entry = args, kwargs, budget, kind, entry
        self.progress = progress
        self.on_cuda = False
        # Per timed figure (Timed.name): the measurement the call reports.
        self.timings: dict[str, TimingStats] = {}
        # The limits judged while timing, per figure (the rest are compared with a value after
        # measuring), and the verdict each got.
        self.timed_limits: dict[Limit, TimingVerdict] = {}
        # Each figure's baseline verdict, as the metric it is reported as ("latency_ms").
        self.baseline_verdicts: list[tuple[str, TimingVerdict]] = []
        self.cuda_memory: int | None = None
        self.max_batch: int | None = None

    @property
    def timing(self) -> TimingStats | None:
        """The first figure's measurement: a forward's latency, a generation's first token."""
        return next(iter(self.timings.values()), None)

    def run(self, figures: Sequence[Timed]) -> None:
        from ..core.devices import target_device

        first = figures[0].repeated
        budget = replace(self.budget, timing=replace(self.budget.timing, autocast=first.autocast))
        self.on_cuda = target_device(first.model, self.args, budget.timing.device).type == "cuda"
        if not self.on_cuda:
            _refuse_cuda_only_limits(budget, self.kind)
        if budget.timed:
            _refuse_untimed_limits(budget, self.kind, {figure.name for figure in figures})
            for figure in figures:
                self._time(figure, budget)
        if self.on_cuda:
            self.cuda_memory = self._cuda_peak(first, budget)
        self.max_batch = self._max_batch(first.model, budget)

    def _cuda_peak(self, repeated: Repeated, budget: CallBudget) -> int | None:
        """The allocator peak on CUDA: from the timed run, else one run when it is needed."""
        if self.timing is not None and self.timing.peak_memory is not None:
            return self.timing.peak_memory
        if not (budget.limited("memory") or self.kind.always_cuda_peak) or not budget.timing_enabled:
            return None  # --budget-no-timing: nothing runs on the device
        from ..core.timing.cuda_memory import cuda_peak_memory

        return cuda_peak_memory(
            repeated.model, self.args, self.kwargs, device=budget.timing.device, repeat=repeated.repeat
        )

    def _max_batch(self, model: Any, budget: CallBudget) -> int | None:
        """The largest batch that fits, searched up to 4x the largest batch a limit requires."""
        required = budget.limits_of("max_batch")
        if not required or not budget.timed:
            return None
        from ..core.timing.cuda_memory import max_batch

        largest = int(max(limit.value for limit in required))
        return max_batch(model, self.args, self.kwargs, device=budget.timing.device, limit=4 * largest)

    def _time(self, figure: Timed, budget: CallBudget) -> None:
        """Time one figure (again while it looks slow) and judge its limits and baseline.

        Keeps the judgement and the measurement the call reports: when recording a baseline,
        the typical one with the machine's speed probes; otherwise the least disturbed one.
        """
        from ..core.devices import batch_size_of
        from ..core.timing import timer
        from ..core.timing.probes import measure_probes
        from .timing_verdicts import (
            RECHECK_MIN_S,
            RECORD_MEASUREMENTS,
            LatencyBaseline,
            decided_early,
            measure_and_judge,
            recorded,
        )

        model, args, kwargs = figure.repeated.model, self.args, self.kwargs
        settings = replace(budget.timing, mode=figure.mode)
        where = timer.placement_for(model, args, settings)  # the fingerprint, once per figure
        batch = budget.batch_size or batch_size_of(args, kwargs)
        stored = self.entry.timing.get(where.fingerprint) if self.entry else None
        baseline = LatencyBaseline.from_stored(stored) if stored else None
        limits = [
            limit
            for limit in budget.limits
            if limit.definition.judged_while_timing and limit.definition.timed_by == figure.name
        ]
        # A rate is judged as the time per call it allows: a throughput at this batch size,
        # a decode rate over the tokens after the first, beyond the first token's time.
        items = figure.items if figure.items is not None else batch
        before_ms = self.timings[figure.minus].stat(budget.latency_stat) if figure.minus else 0.0
        limits_ms = [
            limit.value if limit.definition.unit == "ms" else items * 1e3 / limit.value + before_ms
            for limit in limits
        ]

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
            timing = settings
            if taken and not budget.update:
                timing = replace(timing, min_decide_s=max(timing.min_decide_s, RECHECK_MIN_S))
            stats = timer.time_forward(
                model,
                args,
                kwargs,
                timing,
                batch_size=batch,
                progress=self.progress,
                where=where,
                decided=None if budget.update else decided,
                repeat=figure.repeated.repeat,
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
        self.timed_limits.update(zip(limits, judgement.limits, strict=True))
        if judgement.baseline is not None:
            self.baseline_verdicts.append((figure.judged_as, judgement.baseline))
        if not budget.update:
            self.timings[figure.name] = judgement.best(budget.latency_stat)
            return
        # A baseline keeps the machine's speed beside its timing: on CPU the probes taken
        # during the measurement, elsewhere a set taken now.
        kept = recorded(judgement.measurements, budget.latency_stat)
        self.timings[figure.name] = replace(kept, probes=kept.probes or measure_probes())


def _refuse_untimed_limits(budget: CallBudget, kind: CallKind, timed: set[str]) -> None:
    """A timed limit on a figure this call does not time (the decode of a one-token
    generation): an error, never a silently unchecked limit."""
    for limit in budget.limits:
        metric = limit.definition
        if metric.judged_while_timing and metric.timed_by not in timed:
            why = kind.untimed.get(metric.timed_by, f"this {kind.noun} does not time it")
            raise MeasurementError(f"{metric.keyword} cannot be judged: {why}")


def _refuse_cuda_only_limits(budget: CallBudget, kind: CallKind) -> None:
    """A limit on a figure only CUDA measures, on a call that runs on the CPU: an error."""
    for limit in budget.limits:
        metric = limit.definition
        if metric.cpu_twin:
            raise MeasurementError(
                f"{metric.keyword} limits a figure measured on CUDA, but this {kind.noun} runs on the "
                f"CPU: limit the estimate with {metric.cpu_twin}, or time on CUDA (device='cuda')"
            )
