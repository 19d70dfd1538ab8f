"""The result of one measured call, as a plain value.

A :class:`CallResult` is what the fixture produces, what xdist workers send to the
controller (``to_dict``/``from_dict``, JSON-able), what the report renders and what
becomes a baseline entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .baselines import ROOT_MODULE, Entry
from .budgets import RATCHETED, Check

if TYPE_CHECKING:
    from .counting import Counts
    from .timing import TimingStats

NAME_SEPARATOR = "#"


def entry_key(nodeid: str, name: str | None) -> str:
    """budgets.yaml key of a call: the test id, plus ``#name`` for named calls."""
    return nodeid if name is None else f"{nodeid}{NAME_SEPARATOR}{name}"


def belongs_to(key: str, nodeids: set[str]) -> bool:
    """Whether a budgets.yaml key is an entry of one of ``nodeids``."""
    return key in nodeids or key.rpartition(NAME_SEPARATOR)[0] in nodeids


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
    baseline_modules: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    has_baseline: bool = False
    updating: bool = False  # measured by --update-budgets: baselines are accepted, not enforced
    timing: Mapping[str, Any] | None = None  # TimingStats.to_dict() of the best measurement
    probes: Mapping[str, float] = field(default_factory=dict)  # machine speed, for the baseline

    @property
    def key(self) -> str:
        return entry_key(self.nodeid, self.name)

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if c.failed and not (self.updating and c.is_baseline)]

    @property
    def verdict(self) -> str:
        """One word for the summary: over, inconclusive, new, shrank, updated or ok."""
        if self.failed_checks:
            return "over"
        if any(c.status == "inconclusive" and not (self.updating and c.is_baseline) for c in self.checks):
            return "inconclusive"
        baseline_changed = any(c.status != "ok" for c in self.checks if c.is_baseline)
        if self.updating:
            return "updated" if baseline_changed or not self.has_baseline else "ok"
        if not self.has_baseline:
            return "new"
        return "shrank" if baseline_changed else "ok"

    def baseline_entry(self) -> Entry:
        """What --update-budgets stores for this call."""
        timing = {}
        if self.timing:
            stats = {
                "median_ms": self.timing["median_ms"],
                "p90_ms": self.timing["p90_ms"],
                "min_ms": self.timing["min_ms"],
                "spread": self.timing["iqr_ms"] / self.timing["median_ms"]
                if self.timing["median_ms"]
                else 0.0,
                "samples": self.timing["samples"],
            }
            if self.timing.get("peak_memory") is not None:
                stats["peak_memory"] = self.timing["peak_memory"]
            for name in ("relative", "relative_spread"):
                if self.timing.get(name) is not None:
                    stats[name] = self.timing[name]
            if self.probes:
                stats["probes"] = dict(self.probes)
            timing[self.timing["fingerprint"]] = stats
        return Entry(
            metrics={m: int(self.metrics[m]) for m in RATCHETED if m in self.metrics},
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
            "baseline_modules": {k: dict(v) for k, v in self.baseline_modules.items()},
            "has_baseline": self.has_baseline,
            "updating": self.updating,
            "timing": dict(self.timing) if self.timing else None,
            "probes": dict(self.probes),
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
            baseline_modules={k: dict(v) for k, v in data["baseline_modules"].items()},
            has_baseline=bool(data["has_baseline"]),
            updating=bool(data["updating"]),
            timing=data["timing"],
            probes=dict(data["probes"]),
        )


def shallow_modules(by_module: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """A ``Counts.by_module(depth)`` mapping -> the ``modules:`` block of an entry."""
    modules: dict[str, dict[str, int]] = {}
    for path, stats in by_module.items():
        if stats.macs or stats.params:
            modules[path or ROOT_MODULE] = {"macs": int(stats.macs), "params": int(stats.params)}
    return modules


@dataclass(frozen=True)
class Measurement:
    """What the ``model_budget`` fixture returns: the numbers and how they were judged."""

    key: str
    counts: Counts
    checks: tuple[Check, ...]
    timing: TimingStats | None = None  # only when the budget asked for timing

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
