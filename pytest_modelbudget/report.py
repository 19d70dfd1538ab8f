"""Lines of text from results: the failure message and the end-of-run summary.

Generators of lines and nothing else; the pytest layer decides where they go.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from .budgets import METRICS_BY_NAME, Check
from .results import CallResult
from .units import format_change, format_count, format_duration

_MODULES_SHOWN = 3

TIMING_HINT = (
    "To decide, give the measurement more time (--budget-time), time a CUDA graph "
    "(cuda_graph=True) on GPU, use a larger batch, or run on a quieter machine"
)


def update_command(nodeid: str) -> str:
    return f"pytest --model-budget --update-budgets {shlex.quote(nodeid)}"


def failure_lines(result: CallResult, budgets_file: str) -> Iterator[str]:
    """The message of a test that broke a budget: one line per broken budget, then remedies."""
    label = result.nodeid + (f" [{result.name}]" if result.name else "")
    yield f"model budget exceeded for {label}:"
    failed = result.failed_checks
    for check in failed:
        yield f"  {check.describe()}"
    yield from _grown_modules(result, failed)
    if any(c.is_baseline for c in failed):
        yield (
            f"If this growth is intended, accept it as the new baseline in {budgets_file}: "
            f"{update_command(result.nodeid)}"
        )
    sources = sorted({c.source for c in failed if not c.is_baseline})
    for source in sources:
        where = "@pytest.mark.model_budget(...)" if source == "marker" else f"'limits:' in {budgets_file}"
        yield f"A limit from {source} is a hard contract: shrink the model or raise the limit in {where}."


def _grown_modules(result: CallResult, failed: Sequence[Check]) -> Iterator[str]:
    before = result.baseline_modules
    if not before:
        return
    for metric in ("macs", "params"):
        if not any(c.metric == metric or (metric == "macs" and c.metric == "flops") for c in failed):
            continue
        grown = []
        for path, stats in result.modules.items():
            old = before.get(path, {}).get(metric, 0)
            new = stats.get(metric, 0)
            if new > old:
                grown.append((new - old, path, old, new))
        for path, stats in before.items():
            if path not in result.modules and stats.get(metric, 0):
                grown.append((-stats[metric], path, stats[metric], 0))
        grown.sort(key=lambda row: (-row[0], row[1]))
        parts = [
            f"{path} {format_count(old)} -> {format_count(new)} ({format_change(new, old) if old else 'new'})"
            for delta, path, old, new in grown[:_MODULES_SHOWN]
            if delta > 0
        ]
        if parts:
            yield f"  modules that grew ({metric}): " + ", ".join(parts)


@dataclass(frozen=True)
class UpdateSummary:
    """What an --update-budgets run did to the file."""

    written: int
    new: int
    unchanged: int
    removed: Sequence[str]
    file_changed: bool


def _worst(checks: Iterable[Check]) -> Check | None:
    return max(checks, key=lambda c: c.usage, default=None)


def summary_lines(
    results: Sequence[CallResult],
    *,
    budgets_file: str,
    updating: bool,
    stale: Sequence[str],
    update: UpdateSummary | None,
) -> Iterator[str]:
    """The table printed after the run: one row per measured call, then totals."""
    timed = any(r.timing for r in results)
    headers = (
        "test",
        "MACs",
        "params",
        "size",
        *(("latency",) if timed else ()),
        "closest budget",
        "change",
        "verdict",
    )
    rows = []
    for result in sorted(results, key=lambda r: r.key):
        worst = _worst(result.checks)
        closest = change = "-"
        if worst is not None:
            metric = METRICS_BY_NAME[worst.metric]
            kind = "baseline" if worst.is_baseline else "limit"
            closest = f"{worst.metric} {kind} {metric.format(worst.reference)}"
            change = worst.change
        rows.append(
            (
                result.key,
                format_count(result.metrics["macs"]),
                format_count(result.metrics["params"]),
                METRICS_BY_NAME["size"].format(result.metrics["size"]),
                *((_latency(result),) if timed else ()),
                closest,
                change,
                result.verdict,
            )
        )
    if rows:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        yield "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
        for row in rows:
            yield "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
    counts: dict[str, int] = {}
    for result in results:
        counts[result.verdict] = counts.get(result.verdict, 0) + 1
    parts = [
        f"{counts[v]} {v}"
        for v in ("ok", "over", "inconclusive", "shrank", "new", "updated")
        if counts.get(v)
    ]
    yield f"{len(results)} measured call(s): " + (", ".join(parts) if parts else "none")
    uncounted = _uncounted(results)
    if uncounted:
        yield "ops with arithmetic but no MAC formula (not counted): " + ", ".join(
            f"{op} x{n}" for op, n in uncounted.items()
        )
    if update is not None:
        state = f"{budgets_file} written" if update.file_changed else f"{budgets_file} unchanged"
        yield (
            f"baselines: {update.written} written ({update.new} new), "
            f"{len(update.removed)} stale removed; {state}"
        )
    elif not updating:
        accept = "pytest --model-budget --update-budgets"
        if counts.get("new"):
            yield f"{counts['new']} call(s) have no baseline in {budgets_file}: record them with {accept}"
        if counts.get("shrank"):
            yield f"{counts['shrank']} call(s) shrank below their baseline: lock that in with {accept}"
    if stale:
        noun = f"{len(stale)} stale entr{'y' if len(stale) == 1 else 'ies'}"
        if update is not None and update.removed:
            yield f"removed {noun} from {budgets_file} (no such test): " + ", ".join(stale)
        else:
            yield f"{noun} in {budgets_file} (no such test): " + ", ".join(stale)
            yield "  stale entries are removed only by --update-budgets over the whole suite"


def _latency(result: CallResult) -> str:
    if not result.timing:
        return "-"
    spread = result.timing["iqr_ms"] / result.timing["median_ms"] if result.timing["median_ms"] else 0.0
    return f"{format_duration(result.timing['median_ms'])} ±{spread:.0%}"


def _uncounted(results: Iterable[CallResult]) -> Mapping[str, int]:
    total: dict[str, int] = {}
    for result in results:
        for op, n in result.uncounted.items():
            total[op] = total.get(op, 0) + n
    return dict(sorted(total.items()))
