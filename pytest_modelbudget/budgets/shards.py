"""Shards: the JSON reports of CI jobs that each ran part of a suite, merged into one run.

Each job of a matrix runs ``pytest --model-budget --budget-json shard-K.json`` on its part of
the suite (pytest-split, pytest-shard, a folder per job). Its report holds, besides what a
reader wants, what a merge needs: every call's :class:`~.results.CallResult` as xdist sends
it, and a :class:`RunRecord` of what the job collected, selected and saw in full.

:func:`merge` joins shards into one :class:`MergedRun` whose results and baseline entries are
those one serial run over the whole suite produces, so that ``--update-budgets`` through it
writes the same bytes (:func:`~.baselines.update` does the writing, under its lock). Stale
entries are removed only where the shards together ran every test they collected: a
missing shard, or one shard alone, never deletes another's entries.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelBudgetError, shown
from .baselines import Entry, stale_keys
from .results import CallResult

REPORT_SCHEMA = "pytest-modelbudget-report"
# 2: each call carries its "result" (CallResult.to_dict) and the report its "run" record.
REPORT_VERSION = 2


class ShardError(ModelBudgetError):
    """A report that cannot be read, or shards that do not belong together."""


@dataclass(frozen=True)
class RunRecord:
    """What one run saw of the suite, for deciding what a merge of several may delete."""

    collected: frozenset[str]  # budgeted tests collected, before any deselection
    selected: frozenset[str]  # those of them that were not deselected (they ran)
    # Path prefixes whose every test was collected, a splitter's deselection aside; None
    # when the run was narrowed otherwise (-k, -m, node ids, collection errors).
    scope: tuple[str, ...] | None
    complete: bool = True  # no xdist worker crashed: every result made it into the report
    updating: bool = False  # the run was an --update-budgets run

    def to_dict(self) -> dict[str, Any]:
        return {
            "collected": sorted(self.collected),
            "selected": sorted(self.selected),
            "scope": None if self.scope is None else list(self.scope),
            "complete": self.complete,
            "updating": self.updating,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        scope = data["scope"]
        return cls(
            collected=frozenset(map(str, data["collected"])),
            selected=frozenset(map(str, data["selected"])),
            scope=None if scope is None else tuple(map(str, scope)),
            complete=bool(data["complete"]),
            updating=bool(data["updating"]),
        )


@dataclass(frozen=True)
class Shard:
    """One job's report, read back."""

    path: str
    plugin: str  # the pytest-modelbudget version that wrote it
    environment: Mapping[str, str]
    results: tuple[CallResult, ...]
    run: RunRecord


def load_shard(path: Path) -> Shard:
    """Read one ``--budget-json`` report; :class:`ShardError` names the file and what is wrong."""
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "it is not UTF-8 text"
        raise ShardError(f"{where}: cannot be read ({reason})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ShardError(
            f"{where}: is not a complete JSON report ({error.msg} at line {error.lineno}); "
            "was the job cut short? rerun it with --budget-json"
        ) from None
    if not isinstance(data, dict) or data.get("schema") != REPORT_SCHEMA:
        raise ShardError(f"{where}: is not a pytest-modelbudget --budget-json report")
    version = data.get("version")
    if version != REPORT_VERSION:
        raise ShardError(
            f"{where}: is a report of version {shown(version)}, this pytest-modelbudget reads "
            f"version {REPORT_VERSION}; write it again with this version's --budget-json"
        )
    try:
        calls = data["calls"]
        results = tuple(CallResult.from_dict(call["result"]) for call in calls)
        run = RunRecord.from_dict(data["run"])
        environment = {str(k): str(v) for k, v in data["environment"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise ShardError(f"{where}: is damaged ({type(error).__name__}: {shown(error)})") from None
    return Shard(where, environment.get("plugin", "?"), environment, results, run)


@dataclass(frozen=True)
class MergedRun:
    """Several shards as one run: the results, the baseline entries, what the run saw."""

    results: tuple[CallResult, ...]
    entries: Mapping[str, Entry]  # what --update-budgets stores, by key
    run: RunRecord
    environment: Mapping[str, str] = field(default_factory=dict)

    @property
    def whole_suite(self) -> bool:
        """Whether the shards together ran every budgeted test they collected."""
        run = self.run
        return run.complete and run.scope is not None and run.collected <= run.selected

    def stale(self, entries: Iterable[str]) -> list[str]:
        """Entries of tests that no longer exist -- only where the whole suite ran."""
        if not self.whole_suite:
            return []
        return stale_keys(entries, set(self.run.collected), self.run.scope)

    @property
    def failed(self) -> bool:
        return any(result.failed for result in self.results)


def merge(shards: Sequence[Shard], *, plugin: str) -> MergedRun:
    """Join shards (in any order) into one run; :class:`ShardError` for shards that do not
    belong together or disagree about a call."""
    if not shards:
        raise ShardError("no shard reports given")
    _same_version(shards, plugin)
    conventions = {r.convention for shard in shards for r in shard.results}
    if len(conventions) > 1:
        raise ShardError(
            f"the shards counted with different conventions ({', '.join(sorted(conventions))}): "
            "run every shard with the same pytest-modelbudget and torch"
        )
    results: dict[str, CallResult] = {}
    entries: dict[str, Entry] = {}
    where: dict[str, str] = {}
    for shard in shards:
        for result in shard.results:
            key = result.key
            entry = result.baseline_entry()
            if key in results:
                entries[key] = _agreed(key, entries[key], entry, where[key], shard.path)
                continue
            results[key], entries[key], where[key] = result, entry, shard.path
    runs = [shard.run for shard in shards]
    scopes = {run.scope for run in runs}
    collected = [run.collected for run in runs]
    run = RunRecord(
        collected=frozenset().union(*collected),
        selected=frozenset().union(*(r.selected for r in runs)),
        # Shards of one suite collect the same tests and see the same paths; any other mix
        # (a folder per job, a narrowed run) is merged too, but deletes nothing.
        scope=next(iter(scopes)) if len(scopes) == 1 and all(c == collected[0] for c in collected) else None,
        complete=all(r.complete for r in runs),
        updating=any(r.updating for r in runs),
    )
    ordered = tuple(results[key] for key in sorted(results))
    return MergedRun(ordered, entries, run, dict(shards[0].environment))


def _same_version(shards: Sequence[Shard], plugin: str) -> None:
    others = sorted({f"{s.path} ({s.plugin})" for s in shards if s.plugin != plugin})
    if others:
        raise ShardError(
            f"written by another pytest-modelbudget than this one ({plugin}): {', '.join(others)}; "
            "run the shards and the merge with the same version"
        )


def _agreed(key: str, first: Entry, second: Entry, first_path: str, second_path: str) -> Entry:
    """One call measured by two shards: the same counts, and timings merged per device."""
    counted = ("metrics", "modules", "convention", "macs_by_dtype")
    differ = [name for name in counted if getattr(first, name) != getattr(second, name)]
    clash = sorted(
        fingerprint
        for fingerprint in set(first.timing) & set(second.timing)
        if first.timing[fingerprint] != second.timing[fingerprint]
    )
    if differ or clash:
        what = ", ".join(differ) if differ else f"timing on {', '.join(clash)}"
        raise ShardError(
            f"{key} was measured by {first_path} and {second_path} with different values ({what}): "
            "a call belongs to one shard; check the split, or that both jobs run the same code"
        )
    return Entry(
        first.metrics,
        first.modules,
        first.convention,
        first.limits,
        {**first.timing, **second.timing},
        first.budget,
        first.macs_by_dtype,
    )
