"""The result of one measured call, as a plain value.

A :class:`CallResult` is what :func:`~.measure.measure_call` produces, what xdist workers
send to the controller (``to_dict``/``from_dict``, JSON-able), what the report layer
words and what becomes a baseline entry. It carries typed checks and its verdict; it
holds no text for users.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..calls.common import beyond_float32
from ..core.compiling import CompileStats
from ..core.timing.timer import TimingStats
from .baselines import ROOT_MODULE, Entry, entry_key
from .checks import Check, Status, StrictRule, Verdict, enforced
from .metrics import baseline_values
from .timing_verdicts import LatencyBaseline

if TYPE_CHECKING:
    from ..core.counting.count import Counts
    from ..core.generation.count import GenerationCounts
    from ..core.training.count import TrainCounts


@dataclass(frozen=True)
class CallResult:
    nodeid: str
    name: str | None
    metrics: Mapping[str, float]  # every metric the measurement has, by name
    modules: Mapping[str, Mapping[str, int]]  # shallow breakdown kept in the baseline
    uncounted: Mapping[str, int]
    convention: str
    executed_on: str
    checks: tuple[Check, ...] = ()
    verdict: Verdict = Verdict.OK
    strict_failures: tuple[StrictRule, ...] = ()  # what --budget-strict fails this call for
    baseline_modules: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    has_baseline: bool = False
    updating: bool = False  # measured by --update-budgets: baselines are accepted, not enforced
    timing: TimingStats | None = None  # the measurement judged (or recorded), when timed
    # Every timed figure's measurement, by name (Timed.name): a forward's "call"; a
    # generation's "ttft" and "generation". ``timing`` is the first of them.
    timings: Mapping[str, TimingStats] = field(default_factory=dict)
    macs_by_dtype: Mapping[str, int] = field(default_factory=dict)  # the dtypes the MACs ran in
    compiled: CompileStats | None = None  # graph breaks, recompiles, ... of a compiled call
    # A training step's estimated memory at its peak, by kind (training.MEMORY_KINDS).
    memory_by_kind: Mapping[str, int] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)  # Measured.details: a generation's last step

    @property
    def key(self) -> str:
        return entry_key(self.nodeid, self.name)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in enforced(self.checks, updating=self.updating) if c.failed]

    @property
    def inconclusive_checks(self) -> list[Check]:
        return [c for c in enforced(self.checks, updating=self.updating) if c.status == Status.INCONCLUSIVE]

    @property
    def counted_nothing(self) -> bool:
        """0 MACs while ops with arithmetic ran that the counter has no formula for."""
        return self.metrics.get("macs") == 0 and bool(self.uncounted)

    @property
    def failed(self) -> bool:
        """Whether the test fails: a broken budget, or a --budget-strict rule."""
        return bool(self.failed_checks or self.strict_failures)

    def baseline_entry(self) -> Entry:
        """What --update-budgets stores for this call."""
        # Each timed figure under its own fingerprint (a generation's first token, and all of it).
        timing = {
            stats.fingerprint: LatencyBaseline.from_stats(stats).to_stored()
            for stats in (self.timings.values() if self.timings else [self.timing] if self.timing else [])
        }
        return Entry(
            metrics=baseline_values(self.metrics),
            macs_by_dtype=_stored_dtypes(self.macs_by_dtype),
            modules=self.modules,
            convention=self.convention,
            timing=timing,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodeid": self.nodeid,
            "name": self.name,
            "metrics": dict(self.metrics),
            "modules": {k: dict(v) for k, v in self.modules.items()},
            "uncounted": dict(self.uncounted),
            "convention": self.convention,
            "executed_on": self.executed_on,
            "checks": [c.to_dict() for c in self.checks],
            "verdict": self.verdict.value,
            "strict_failures": [rule.value for rule in self.strict_failures],
            "baseline_modules": {k: dict(v) for k, v in self.baseline_modules.items()},
            "has_baseline": self.has_baseline,
            "updating": self.updating,
            "timing": self.timing.to_dict() if self.timing else None,
            "timings": {name: stats.to_dict() for name, stats in self.timings.items()},
            "macs_by_dtype": dict(self.macs_by_dtype),
            "compiled": self.compiled.to_dict() if self.compiled else None,
            "memory_by_kind": dict(self.memory_by_kind),
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CallResult:
        return cls(
            nodeid=data["nodeid"],
            name=data["name"],
            metrics=dict(data["metrics"]),
            modules={k: dict(v) for k, v in data["modules"].items()},
            uncounted=dict(data["uncounted"]),
            convention=data["convention"],
            executed_on=data["executed_on"],
            checks=tuple(Check.from_dict(c) for c in data["checks"]),
            verdict=Verdict(data["verdict"]),
            strict_failures=tuple(StrictRule(rule) for rule in data["strict_failures"]),
            baseline_modules={k: dict(v) for k, v in data["baseline_modules"].items()},
            has_baseline=bool(data["has_baseline"]),
            updating=bool(data["updating"]),
            timing=TimingStats.from_dict(data["timing"]) if data["timing"] else None,
            macs_by_dtype=dict(data["macs_by_dtype"]),
            compiled=CompileStats.from_dict(data["compiled"]) if data.get("compiled") else None,
            memory_by_kind=dict(data.get("memory_by_kind") or {}),
            timings={name: TimingStats.from_dict(t) for name, t in (data.get("timings") or {}).items()},
            details=dict(data.get("details") or {}),
        )


def _stored_dtypes(macs_by_dtype: Mapping[str, int]) -> dict[str, int]:
    # Kept in budgets.yaml only where it says more than "all float32", so the entries of
    # float models stay as they were.
    return dict(macs_by_dtype) if beyond_float32(macs_by_dtype) else {}


MODULE_DEPTH = 2  # levels of the module tree kept in budgets.yaml for failure messages


def shallow_modules(
    by_module: Mapping[str, Any],
    figures: Mapping[str, Mapping[str, int]] | None = None,
    depth: int = MODULE_DEPTH,
) -> dict[str, dict[str, int]]:
    """A ``Counts.by_module(depth)`` mapping -> the ``modules:`` block of an entry, with a
    kind of call's own per-module figures (full module paths; a training step's
    ``backward_macs``) added up at the same ``depth``."""
    modules: dict[str, dict[str, int]] = {}
    for path, stats in by_module.items():
        if stats.macs or stats.params:
            modules[path or ROOT_MODULE] = {"macs": int(stats.macs), "params": int(stats.params)}
    for figure, values in (figures or {}).items():
        grouped: dict[str, int] = {}
        for path, value in values.items():
            key = ".".join(path.split(".")[: max(depth, 0)])
            grouped[key] = grouped.get(key, 0) + value
        for path, value in grouped.items():
            if value:
                modules.setdefault(path or ROOT_MODULE, {})[figure] = int(value)
    return dict(sorted(modules.items()))


@dataclass(frozen=True)
class Measurement:
    """What the ``model_budget`` fixture returns: the numbers and how they were judged."""

    key: str
    counts: Counts
    checks: tuple[Check, ...]
    timing: TimingStats | None = None  # only when the budget asked for timing (the first figure)
    call: str = "forward"  # the kind of call: "forward", "train", "compiled", "generate"
    figures: Any = None  # the kind's own figures: TrainCounts, CompileStats, GenerationCounts
    timings: Mapping[str, TimingStats] = field(default_factory=dict)  # every timed figure, by name

    @property
    def train(self) -> TrainCounts | None:
        """A training step's counts (model_budget.train_step), else None."""
        return self.figures if self.call == "train" else None

    @property
    def compiled(self) -> CompileStats | None:
        """A compiled call's graph breaks, recompiles, ..., else None."""
        return self.figures if self.call == "compiled" else None

    @property
    def generation(self) -> GenerationCounts | None:
        """A generation's prefill and decode counts and KV cache (model_budget.generate), else None."""
        return self.figures if self.call == "generate" else None

    @property
    def train_macs(self) -> int | None:
        return self.train.macs if self.train else None

    @property
    def train_memory(self) -> int | None:
        return self.train.memory if self.train else None

    @property
    def graph_breaks(self) -> int | None:
        return len(self.compiled.graph_breaks) if self.compiled else None

    @property
    def recompiles(self) -> int | None:
        return len(self.compiled.recompiles) if self.compiled else None

    @property
    def latency_ms(self) -> float | None:
        return self.timing.median_ms if self.timing else None

    @property
    def macs(self) -> int:
        return self.counts.macs

    @property
    def flops(self) -> int:
        return self.counts.flops

    @property
    def params(self) -> int:
        return self.counts.params

    @property
    def size(self) -> int:
        return self.counts.size_bytes
