"""Two runs compared, call by call: what a pull request did to each model's budgets.

:func:`compare` takes the results of a base and a head run (their ``--budget-json`` reports,
merged when the suite ran in shards) and says for every call whether it grew, shrank, is new,
was removed or is unchanged -- judged by the deterministic metrics (MACs, params, size,
training and compile counts), which differ between two runs only when the code does. Timed
figures are shown beside them, compared only between runs on the same device fingerprint.
Typed values; :mod:`~..report.compare` words them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from .metrics import METRICS_BY_NAME
from .results import CallResult


class Change(str, Enum):
    """What happened to a call between base and head; the value is the word reports use."""

    GREW = "grew"
    SHRANK = "shrank"
    NEW = "new"
    REMOVED = "removed"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class MetricChange:
    """One metric of a call in base and head (None where that run did not measure it)."""

    metric: str
    base: float | None
    head: float | None

    @property
    def changed(self) -> bool:
        return self.base != self.head


@dataclass(frozen=True)
class ModuleChange:
    """One per-module figure (``macs``, ``params``, ``backward_macs``) of one module path."""

    path: str
    figure: str
    base: int
    head: int


@dataclass(frozen=True)
class CallDiff:
    key: str
    change: Change
    metrics: tuple[MetricChange, ...]  # the deterministic metrics, in the table's order
    timed: tuple[MetricChange, ...]  # latency and friends, where base and head are comparable
    # Both runs timed the call, on different kinds of device: no timed figure is compared.
    timing_not_comparable: bool
    modules: tuple[ModuleChange, ...]  # the modules whose figures changed, largest change first
    head_verdict: str | None  # None: removed in head
    head_failed: bool

    @property
    def changed_metrics(self) -> tuple[MetricChange, ...]:
        return tuple(m for m in self.metrics if m.changed)


@dataclass(frozen=True)
class Comparison:
    calls: tuple[CallDiff, ...]  # every call of either run, by key

    def count(self, change: Change) -> int:
        return sum(1 for call in self.calls if call.change == change)

    @property
    def over(self) -> int:
        """Calls over budget in head."""
        return sum(1 for call in self.calls if call.head_failed)

    @property
    def head_failed(self) -> bool:
        return self.over > 0

    def shown(self, *, every_call: bool = False) -> tuple[CallDiff, ...]:
        """The calls a reviewer needs: those that changed or are over budget (all with ``every_call``)."""
        if every_call:
            return self.calls
        return tuple(c for c in self.calls if c.change != Change.UNCHANGED or c.head_failed)


class ComparisonError(ValueError):
    """Two runs that cannot be compared (counted by different conventions)."""


def compare(base: Sequence[CallResult], head: Sequence[CallResult]) -> Comparison:
    """Every call of ``base`` and ``head`` (matched by key), and what changed."""
    conventions = {r.convention for r in (*base, *head)}
    if len(conventions) > 1:
        raise ComparisonError(
            f"base and head counted with different conventions ({', '.join(sorted(conventions))}): "
            "their MACs do not compare; run both with the same pytest-modelbudget and torch"
        )
    before = {r.key: r for r in base}
    after = {r.key: r for r in head}
    return Comparison(tuple(_diff(key, before.get(key), after.get(key)) for key in sorted({*before, *after})))


def _diff(key: str, base: CallResult | None, head: CallResult | None) -> CallDiff:
    names = [m for m in METRICS_BY_NAME if any(_shows(r, m) for r in (base, head))]
    metrics = tuple(
        MetricChange(m, _value(base, m), _value(head, m)) for m in names if not METRICS_BY_NAME[m].noisy
    )
    comparable = _same_device(base, head)
    timed = tuple(
        MetricChange(m, _value(base, m), _value(head, m))
        for m in names
        if METRICS_BY_NAME[m].noisy and comparable
    )
    return CallDiff(
        key=key,
        change=_change(base, head, metrics),
        metrics=metrics,
        timed=timed,
        timing_not_comparable=bool(base and head and base.timing and head.timing and not comparable),
        modules=_module_changes(base.modules if base else {}, head.modules if head else {}),
        head_verdict=head.verdict.value if head else None,
        head_failed=bool(head and head.failed),
    )


def _shows(result: CallResult | None, metric: str) -> bool:
    """Whether a run measured ``metric`` and it says something (``float_macs`` of a float model
    repeats ``macs``: its row's ``stored_if`` says so, as for budgets.yaml)."""
    if result is None or metric not in result.metrics:
        return False
    stored_if = METRICS_BY_NAME[metric].stored_if
    return stored_if is None or stored_if(result.metrics)


def _value(result: CallResult | None, metric: str) -> float | None:
    return None if result is None else result.metrics.get(metric)


def _same_device(base: CallResult | None, head: CallResult | None) -> bool:
    """Timed figures compare only on the same kind of device (and both runs timed)."""
    if not (base and head and base.timing and head.timing):
        return False
    return base.timing.fingerprint == head.timing.fingerprint


def _change(base: CallResult | None, head: CallResult | None, metrics: Sequence[MetricChange]) -> Change:
    if base is None:
        return Change.NEW
    if head is None:
        return Change.REMOVED
    both = [m for m in metrics if m.base is not None and m.head is not None]
    if any(m.head > m.base for m in both):  # type: ignore[operator]
        return Change.GREW
    if any(m.head < m.base for m in both):  # type: ignore[operator]
        return Change.SHRANK
    return Change.UNCHANGED


def _module_changes(
    base: Mapping[str, Mapping[str, int]], head: Mapping[str, Mapping[str, int]]
) -> tuple[ModuleChange, ...]:
    changes = []
    for path in {*base, *head}:
        before, after = base.get(path, {}), head.get(path, {})
        for figure in {*before, *after}:
            old, new = int(before.get(figure, 0)), int(after.get(figure, 0))
            if old != new:
                changes.append(ModuleChange(path, figure, old, new))
    changes.sort(key=lambda c: (-abs(c.head - c.base), c.figure, c.path))
    return tuple(changes)
