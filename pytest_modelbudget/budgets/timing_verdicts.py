"""Judging latency against limits and baselines: pure decisions over timing measurements.

How a measurement is judged against its baseline (:func:`judge`): a slowdown fails only
when it is beyond the tolerance *and* survives re-measurement *and* is not explained by
the machine itself being slower (probes in :mod:`~..core.timing.probes`); a slowdown that noise or the
machine can explain is "inconclusive", a warning by default.

:class:`LatencyBaseline` is what budgets.yaml keeps per device fingerprint; its
:meth:`~LatencyBaseline.to_stored` / :meth:`~LatencyBaseline.from_stored` pair is the only
place its keys are spelled. No torch here: the measurements come in as
:class:`~..core.timing.timer.TimingStats`.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..core.timing.own_time import OWN_CLOCKS
from ..core.timing.timer import TimingStats, standard_error
from .checks import Status


@dataclass(frozen=True, kw_only=True)
class LatencyBaseline:
    """What budgets.yaml keeps per device fingerprint, in the order it is written there."""

    median_ms: float
    p90_ms: float
    min_ms: float | None = None
    # The model's cost relative to the machine's speed (TimingStats.relative; CPU only).
    # Baselines without it (CUDA, or written before it existed) are judged by the latency alone.
    relative: float | None = None
    relative_spread: float | None = None
    # The lower quartile of the ratios to the probe's settled run (TimingStats.relative_settled;
    # budgets.yaml version 2 on): what the own slowdown is judged by where a baseline has it.
    relative_settled: float | None = None
    relative_settled_spread: float | None = None
    spread: float
    samples: int = 0
    peak_memory: int | None = None  # CUDA allocator peak of one forward
    max_batch: int | None = None  # read from files of earlier versions; no longer written
    probes: Mapping[str, float] = field(default_factory=dict)  # machine speed when recorded, ms

    def stat(self, name: str) -> float:
        return self.p90_ms if name == "p90" else self.median_ms

    @classmethod
    def from_stats(cls, stats: TimingStats) -> LatencyBaseline:
        """The baseline a measurement records."""
        return cls(
            median_ms=stats.median_ms,
            p90_ms=stats.p90_ms,
            min_ms=stats.min_ms,
            relative=stats.relative,
            relative_spread=stats.relative_spread,
            relative_settled=stats.relative_settled,
            relative_settled_spread=stats.relative_settled_spread,
            spread=stats.spread,
            samples=stats.samples,
            peak_memory=stats.peak_memory,
            probes=dict(stats.probes),
        )

    def to_stored(self) -> dict[str, Any]:
        """The ``timing:`` entry of budgets.yaml: the fields that hold a value, in order."""
        stored = {}
        for name in STORED_KEYS:
            value = getattr(self, name)
            if value is not None and value != {}:
                stored[name] = dict(value) if name == "probes" else value
        return stored

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> LatencyBaseline | None:
        """From a ``timing:`` entry of budgets.yaml; None when it holds no latency."""
        if not all(key in stored for key in ("median_ms", "p90_ms", "spread")):
            return None
        values = {name: stored[name] for name in STORED_KEYS if name in stored}
        values["probes"] = dict(values.get("probes", {}))
        for whole in ("samples", "peak_memory", "max_batch"):
            if whole in values:
                values[whole] = int(values[whole])
        return cls(**values)


# The keys of a ``timing:`` entry, spelled once: the fields above, in the file's order.
STORED_KEYS: tuple[str, ...] = tuple(f.name for f in fields(LatencyBaseline))


@dataclass(frozen=True)
class TimingVerdict:
    status: Status  # ok, over or inconclusive
    measured_ms: float  # the statistic of the best (least disturbed) measurement
    reference_ms: float
    reason: str = ""
    own_slowdown: float | None = None  # the model's own slowdown, when the baseline allows it (see judge)
    machine: float | None = None  # how much slower the machine ran, from probes during the measurements


def _own_slowdown(
    measurements: Sequence[TimingStats], baseline: LatencyBaseline
) -> tuple[float, float] | None:
    """The model's slowdown relative to the machine's speed, and its standard error.

    The least slowed of the measurements, and in each the lower quartile of its blocks'
    ratios: interference only ever slows a block down, and a neighbour that comes in bursts
    leaves some blocks clean. A slower model is slower in every block.

    The ratios to the probe's settled run where the baseline has them (its lower quartile
    too); a baseline written before them (budgets.yaml version 1) is judged as it was then:
    by the ratios to the probe's first run, against the baseline's median ratio.
    """
    settled = baseline.relative_settled is not None and all(m.relative_settled for m in measurements)
    if settled:
        reference, reference_spread = baseline.relative_settled, baseline.relative_settled_spread
    else:
        reference, reference_spread = baseline.relative, baseline.relative_spread
    if not reference:
        return None
    found = []
    for m in measurements:
        if settled:
            low, spread = m.relative_settled, m.relative_settled_spread
        else:
            low, spread = m.relative_low or m.relative, m.relative_spread
        if low:
            found.append((low / reference, standard_error(_or(spread, m.spread), m.samples)))
    if not found:
        return None
    own, error = min(found)
    baseline_error = standard_error(_or(reference_spread, baseline.spread), baseline.samples)
    return own, max(error, baseline_error)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def judge(
    measurements: Sequence[TimingStats],
    baseline: LatencyBaseline,
    *,
    tolerance: float,
    stat: str = "median",
    slowdown: float | None = None,
) -> TimingVerdict:
    """Pure decision for one call, from the measurements taken so far.

    It looks at the measurements two ways:

    * the *latency* the user reads: the best measurement's median (or p90) against the
      baseline's. Within ``tolerance`` that is fine;
    * on CPU, the model's *own* slowdown: its time per call relative to a speed probe (a
      small matmul) timed just before each block of calls, against the same ratio in the
      baseline -- in its own time where it runs on one thread (wall time less run-queue
      waits, or the thread's CPU time: :mod:`~..core.timing.own_time`). A shared
      machine goes through slow periods in which the model and the probe slow down
      together, and the ratio barely moves; a slower model moves it.

    "over" needs both: the latency beyond the tolerance, *and* the own slowdown beyond the
    tolerance and three standard errors of the median ratios. Either view alone misleads
    -- the latency on a crowded machine, the ratio where the probe's own speed differs
    between processes (measured: up to 13% on this project's machine). A latency beyond the
    tolerance that the own slowdown does not confirm is "ok" when the ratio was measured in
    the model's own time (the time was lost to other processes, not the model; the verdict
    says so: ``machine busy: +38% latency, own cost +2%``), else
    "inconclusive": the time was lost to the machine.

    Where there is no ratio (CUDA, or a baseline recorded without it) the latency decides,
    and ``slowdown`` -- the machine's slowdown from probes timed *after* the measurements,
    None when not probed -- can make a slowdown inconclusive.
    """
    best = min(measurements, key=lambda m: m.stat(stat))
    measured, reference = best.stat(stat), baseline.stat(stat)
    error = max(standard_error(best.spread, best.samples), standard_error(baseline.spread, baseline.samples))
    found = _own_slowdown(measurements, baseline)
    if found is None:
        return _judge_latency_only(measured, reference, tolerance, error, best.spread, slowdown)
    own, own_error = found
    # How much slower the machine ran: the part of the latency change the model does not explain.
    machine = measured / reference / own
    own_clock = all(m.own_clock in OWN_CLOCKS for m in measurements if m.relative)
    verdict = _judge_own_slowdown(own, own_error, machine, measured, reference, tolerance, own_clock)
    return replace(verdict, own_slowdown=own, machine=machine)


def _judge_own_slowdown(
    own: float,
    error: float,
    machine: float,
    measured: float,
    reference: float,
    tolerance: float,
    own_clock: bool,
) -> TimingVerdict:
    clock = ", both in the model's own time" if own_clock else ""
    relative = (
        f"relative to this machine's speed (a probe timed before each block of calls{clock}) the model "
        f"is {_change(own)} the baseline; the machine ran {_change(machine)} when the baseline was recorded"
    )
    if measured <= reference * (1.0 + tolerance):
        return TimingVerdict(Status.OK, measured, reference)
    if own > (1.0 + tolerance) * (1.0 + 3.0 * error):
        return TimingVerdict(Status.OVER, measured, reference, relative)
    if own <= 1.0 + tolerance and own_clock:
        # Measured in its own time the model's cost is within the tolerance: the wall time it
        # lost went to other processes (the scheduler gave them the core). Said, not hidden.
        busy = f"machine busy: {measured / reference - 1.0:+.0%} latency, own cost {own - 1.0:+.0%}"
        return TimingVerdict(Status.OK, measured, reference, busy)
    if own <= 1.0 + tolerance:
        return TimingVerdict(
            Status.INCONCLUSIVE,
            measured,
            reference,
            f"{relative}: within the {tolerance:.0%} tolerance, the time was lost to the machine",
        )
    return TimingVerdict(
        Status.INCONCLUSIVE,
        measured,
        reference,
        f"{relative}: beyond the {tolerance:.0%} tolerance but within the measured noise "
        f"(standard error {error:.1%})",
    )


def _change(ratio: float) -> str:
    """1.22 -> ``22% slower than``; 0.9 -> ``10% faster than``; 1.001 -> ``as fast as``."""
    if round(abs(ratio - 1.0), 2) == 0:
        return "as fast as"
    return f"{abs(ratio - 1.0):.0%} {'slower' if ratio > 1.0 else 'faster'} than"


def _judge_latency_only(
    measured: float,
    reference: float,
    tolerance: float,
    error: float,
    spread: float,
    slowdown: float | None,
) -> TimingVerdict:
    """The verdict without a ``relative`` ratio: the latency, its noise, the machine."""
    ratio = measured / reference
    if ratio <= 1.0 + tolerance:
        return TimingVerdict(Status.OK, measured, reference)
    if ratio <= (1.0 + tolerance) * (1.0 + 3.0 * error):
        return TimingVerdict(
            Status.INCONCLUSIVE,
            measured,
            reference,
            f"beyond the {tolerance:.0%} tolerance but within the measured noise (spread {spread:.1%})",
        )
    if slowdown is not None and slowdown > 1.0 + tolerance / 2 and ratio <= (1.0 + tolerance) * slowdown:
        return TimingVerdict(
            Status.INCONCLUSIVE,
            measured,
            reference,
            f"this machine is {slowdown - 1:.0%} slower than when the baseline was recorded "
            "(speed probes), which explains the slowdown",
        )
    return TimingVerdict(Status.OVER, measured, reference)


def judge_limit(
    measurements: Sequence[TimingStats], limit_ms: float, *, stat: str = "median"
) -> TimingVerdict:
    """A hard latency limit: over when even the best measurement is clearly above it."""
    best = min(measurements, key=lambda m: m.stat(stat))
    measured = best.stat(stat)
    if measured <= limit_ms:
        return TimingVerdict(Status.OK, measured, limit_ms)
    if measured <= limit_ms * (1.0 + 2.0 * best.spread):
        reason = f"above the limit but within the measured noise (spread {best.spread:.1%})"
        return TimingVerdict(Status.INCONCLUSIVE, measured, limit_ms, reason)
    return TimingVerdict(Status.OVER, measured, limit_ms)


REMEASUREMENTS = 2  # extra measurements at most while a verdict is inconclusive
CONFIRMATIONS = 2  # measurements that must all say "over" before a slowdown is believed
# A re-measurement samples at least this long before it may stop: longer than a busy
# neighbour's bursts (the noise harness's last 50-500 ms), so that one slow moment cannot
# fill both the measurement and its confirmation.
RECHECK_MIN_S = 0.6
RECORD_MEASUREMENTS = 3  # measurements when a baseline is recorded (see recorded)


@dataclass(frozen=True)
class TimingJudgement:
    """Every measurement :func:`measure_and_judge` took, and what they say."""

    measurements: tuple[TimingStats, ...]
    limits: tuple[TimingVerdict, ...]  # one per limit, in the order the limits were given
    baseline: TimingVerdict | None  # None without a stored baseline
    slowdown: float | None = None  # the machine's slowdown, when probed after the measurements

    def best(self, stat: str) -> TimingStats:
        """The least disturbed measurement: interference only ever slows one down."""
        return min(self.measurements, key=lambda m: m.stat(stat))


def measure_and_judge(
    measure: Callable[[], TimingStats],
    *,
    limits_ms: Sequence[float],
    baseline: LatencyBaseline | None,
    tolerance: float,
    stat: str,
    probe: Callable[[], Mapping[str, float]],
    at_least: int = 1,
) -> TimingJudgement:
    """Measure, and re-measure (then probe the machine) only while something looks slow.

    ``at_least`` measurements are taken regardless (``RECORD_MEASUREMENTS`` when a baseline
    is being recorded: a baseline taken in a slow moment would hide later regressions).
    """
    measurements = [measure() for _ in range(max(1, at_least))]
    slowdown: float | None = None

    def judged() -> TimingJudgement:
        return TimingJudgement(
            measurements=tuple(measurements),
            limits=tuple(judge_limit(measurements, limit, stat=stat) for limit in limits_ms),
            baseline=None
            if baseline is None
            else judge(measurements, baseline, tolerance=tolerance, stat=stat, slowdown=slowdown),
            slowdown=slowdown,
        )

    def needs_another(current: TimingJudgement) -> bool:
        statuses = {v.status for v in (*current.limits, *([current.baseline] if current.baseline else []))}
        if Status.INCONCLUSIVE in statuses:
            return len(measurements) <= REMEASUREMENTS
        # "over" is believed once another measurement says so too (the verdict takes the
        # least slowed of them); a call within its budget is not measured again.
        return Status.OVER in statuses and len(measurements) < CONFIRMATIONS

    current = judged()
    while needs_another(current):
        measurements.append(measure())
        current = judged()
    # Probes after the fact, where no ratio to the machine's speed was measured (CUDA).
    verdict = current.baseline
    unexplained = verdict is not None and verdict.status == Status.OVER and verdict.own_slowdown is None
    if baseline is not None and baseline.probes and unexplained:
        from ..core.timing.probes import machine_slowdown

        slowdown = machine_slowdown(probe(), baseline.probes)
        current = judged()
    return current


def decided_early(
    stats: TimingStats,
    *,
    limits_ms: Sequence[float],
    baseline: LatencyBaseline | None,
    tolerance: float,
    stat: str,
) -> bool:
    """Whether the samples of one measurement so far settle every timed check of the call.

    For sequential stopping (``run_rounds(decided=...)``): a check is settled when it is
    clearly within its limit or baseline -- by three standard errors of the figure it rests
    on -- or over it (a slowdown is measured again anyway before it is believed). Nothing to
    judge (no limit, no baseline) is settled at once. Undecided, the measurement goes on for
    its full minimum time.
    """
    error = standard_error(stats.spread, stats.samples)
    measured = stats.stat(stat)
    for limit in limits_ms:
        verdict = judge_limit([stats], limit, stat=stat)
        if verdict.status == Status.INCONCLUSIVE or (
            verdict.status == Status.OK and measured * (1.0 + 3.0 * error) > limit
        ):
            return False
    if baseline is None:
        return True
    verdict = judge([stats], baseline, tolerance=tolerance, stat=stat)
    if verdict.status != Status.OK:
        return verdict.status == Status.OVER
    if measured * (1.0 + 3.0 * error) <= baseline.stat(stat) * (1.0 + tolerance):
        return True  # the latency is clearly within the tolerance
    found = _own_slowdown([stats], baseline)
    if found is None or stats.own_clock not in OWN_CLOCKS:
        return False
    own, own_error = found  # the latency is not, but the model's own cost clearly is
    return own * (1.0 + 3.0 * own_error) <= 1.0 + tolerance


def recorded(measurements: Sequence[TimingStats], stat: str = "median") -> TimingStats:
    """What a baseline keeps of the measurements taken to record it.

    With a ``relative`` ratio (CPU) the ratio decides regressions, so the baseline keeps the
    typical measurement -- the median by latency -- with the median of the ratios. A
    latency baseline from the fastest moment would make every later run of an unchanged
    model look slow ("inconclusive") for no reason. Without a ratio (CUDA) the latency
    decides, and a baseline taken in a slow moment would hide later regressions: the
    fastest measurement is kept.
    """
    ordered = sorted(measurements, key=lambda m: m.stat(stat))
    ratios = [m.relative for m in measurements if m.relative]
    if not ratios:
        return ordered[0]
    settled = [m.relative_settled for m in measurements if m.relative_settled]
    return replace(
        ordered[(len(ordered) - 1) // 2],
        relative=statistics.median(ratios),
        relative_settled=statistics.median(settled) if settled else None,
    )
