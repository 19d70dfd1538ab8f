"""Every check of one measured call, made in one place, as typed values.

A :class:`Check` is one metric judged against one reference (a marker limit, a file
limit or the baseline); the call's :class:`Verdict` and its ``--budget-strict`` failures
follow from its checks. Pure functions of measured values and a resolved
:class:`~.budget.CallBudget`: no torch, no files, no text for users (the report layer
words the verdicts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from ..units import format_change
from .budget import CallBudget, Limit, Source
from .metrics import METRICS_BY_NAME, RATCHETED

# The enums here are str-valued and compared with ==, never `is`: equal by value also when
# this module was imported twice (pytester's in-process runs re-import the plugin).


class Status(str, Enum):
    """How one check came out; the value is the word reports use."""

    OK = "ok"
    OVER = "over"
    SHRANK = "shrank"  # below its baseline: fine, and worth locking in
    INCONCLUSIVE = "inconclusive"  # a timing that noise or the machine may explain


class Verdict(str, Enum):
    """One word per call for the summary, worst first."""

    OVER = "over"
    INCONCLUSIVE = "inconclusive"
    NEW = "new"
    UPDATED = "updated"
    SHRANK = "shrank"
    OK = "ok"


class StrictRule(str, Enum):
    """What ``--budget-strict`` turns into a failure."""

    NO_BASELINE = "no-baseline"
    UNCOUNTED_OPS = "uncounted-ops"
    INCONCLUSIVE_TIMING = "inconclusive-timing"


class TimedVerdict(Protocol):
    """What a timing verdict (:class:`~.timing_verdicts.TimingVerdict`) tells a check."""

    @property
    def status(self) -> Status: ...
    @property
    def measured_ms(self) -> float: ...
    @property
    def reference_ms(self) -> float: ...
    @property
    def reason(self) -> str: ...


@dataclass(frozen=True)
class Check:
    """One metric judged against one reference (a limit or a baseline)."""

    metric: str
    measured: float
    reference: float
    source: Source
    status: Status
    tolerance: float = 0.0
    note: str = ""  # why a timing verdict is what it is (the machine's speed, the noise)

    @property
    def failed(self) -> bool:
        return self.status == Status.OVER

    @property
    def is_baseline(self) -> bool:
        return self.source == Source.BASELINE

    @property
    def usage(self) -> float:
        """How much of the budget is used: above 1 means over (inverted for minimums).

        Against a limit or baseline of 0 (no graph breaks, no float MACs): 0 while the value
        is 0 too, infinite once it is not.
        """
        used, allowed = self.measured, self.reference
        if METRICS_BY_NAME[self.metric].higher_is_better:
            used, allowed = allowed, used
        if not allowed:
            return 0.0 if not used else float("inf")
        return used / allowed

    @property
    def change(self) -> str:
        return format_change(self.measured, self.reference)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "measured": self.measured,
            "reference": self.reference,
            "source": self.source.value,
            "status": self.status.value,
            "tolerance": self.tolerance,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Check:
        return cls(**{**data, "source": Source(data["source"]), "status": Status(data["status"])})


def check_limits(measured: Mapping[str, float], limits: Iterable[Limit]) -> list[Check]:
    """Hard limits: over when the measured value exceeds the limit (unmeasured metrics skipped)."""
    return [
        Check(
            limit.metric,
            measured[limit.metric],
            limit.value,
            limit.source,
            Status.OVER if limit.definition.exceeds(measured[limit.metric], limit.value) else Status.OK,
        )
        for limit in limits
        if limit.metric in measured
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
            status = Status.OVER
        elif value < reference:
            status = Status.SHRANK
        else:
            status = Status.OK
        checks.append(Check(metric, value, reference, Source.BASELINE, status, tolerance))
    return checks


def _timed_check(limit: Limit, verdict: TimedVerdict, measured: Mapping[str, float]) -> Check:
    # A time limit reports the judged statistic; a rate limit (throughput, decode tokens per
    # second) the rate.
    value = verdict.measured_ms if limit.definition.unit == "ms" else measured[limit.metric]
    return Check(limit.metric, value, limit.value, limit.source, verdict.status, note=verdict.reason)


def check_call(
    measured: Mapping[str, float],
    budget: CallBudget,
    baseline: Mapping[str, float] | None,
    *,
    timed_limits: Mapping[Limit, TimedVerdict] | None = None,
    timing_baselines: Iterable[tuple[str, TimedVerdict]] = (),
) -> tuple[Check, ...]:
    """Every check of one call: its limits (marker, then file), then its baselines.

    Timed limits were judged while timing (a slow-looking measurement is repeated before
    it is believed), so their verdicts come in ``timed_limits``; each timed figure's baseline
    verdict in ``timing_baselines``, with the metric it is judged as (a forward's
    ``latency_ms``, a training step's ``train_step_ms``, a generation's ``ttft_ms`` and
    ``generation_ms``).
    """
    timed_limits = timed_limits or {}
    checks: list[Check] = []
    for limit in budget.limits:
        if limit in timed_limits:
            checks.append(_timed_check(limit, timed_limits[limit], measured))
        else:
            checks += check_limits(measured, [limit])
    if baseline is not None:
        checks += check_baseline(measured, baseline, budget.tolerance)
    for judged_as, verdict in timing_baselines:
        checks.append(
            Check(
                judged_as,
                verdict.measured_ms,
                verdict.reference_ms,
                Source.BASELINE,
                verdict.status,
                budget.latency_tolerance,
                verdict.reason,
            )
        )
    return tuple(checks)


def enforced(checks: Iterable[Check], *, updating: bool) -> list[Check]:
    """The checks that count: an update run accepts baselines instead of enforcing them."""
    return [c for c in checks if not (updating and c.is_baseline)]


def call_verdict(checks: Iterable[Check], *, has_baseline: bool, updating: bool) -> Verdict:
    """One word for the call: over, inconclusive, new, shrank, updated or ok."""
    checks = list(checks)
    counted = enforced(checks, updating=updating)
    if any(c.failed for c in counted):
        return Verdict.OVER
    if any(c.status == Status.INCONCLUSIVE for c in counted):
        return Verdict.INCONCLUSIVE
    baseline_changed = any(c.status != Status.OK for c in checks if c.is_baseline)
    if updating:
        return Verdict.UPDATED if baseline_changed or not has_baseline else Verdict.OK
    if not has_baseline:
        return Verdict.NEW
    return Verdict.SHRANK if baseline_changed else Verdict.OK


def strict_failures(
    checks: Iterable[Check], *, has_baseline: bool, uncounted: Mapping[str, int]
) -> tuple[StrictRule, ...]:
    """What ``--budget-strict`` fails a call for, beyond its broken budgets."""
    rules = []
    if not has_baseline:
        rules.append(StrictRule.NO_BASELINE)
    if uncounted:
        rules.append(StrictRule.UNCOUNTED_OPS)
    if any(c.status == Status.INCONCLUSIVE for c in checks):
        rules.append(StrictRule.INCONCLUSIVE_TIMING)
    return tuple(rules)
