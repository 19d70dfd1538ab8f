"""The table printed at the end of a ``--model-budget`` run: one row per measured call, then totals."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from ..budgets.metrics import METRICS_BY_NAME
from ..budgets.results import CallResult
from ..calls.common import beyond_float32
from ..units import format_count, format_duration
from .text_table import text_table
from .words import (
    COUNTED_ORDER,
    CPU_TIME_ONLY,
    cpu_time_only,
    dtype_shares,
    formula_hint,
    generation_line,
    macs_cell,
    verdict_cell,
    verdict_counts,
    worst_check,
    zero_macs,
)


@dataclass(frozen=True)
class UpdateSummary:
    """What an --update-budgets run did to the file."""

    written: int
    new: int
    removed: Sequence[str]
    file_changed: bool


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
    # The dtypes MACs ran in, only in a run where some did not run in float32.
    typed = any(beyond_float32(r.macs_by_dtype) for r in results)
    # Active parameters, only in a run with a mixture of experts (elsewhere they are `params`).
    routed = any(
        r.metrics.get("active_params", r.metrics.get("params")) != r.metrics.get("params") for r in results
    )
    headers = (
        "test",
        "MACs",
        *(("MAC dtypes",) if typed else ()),
        "params",
        *(("active",) if routed else ()),
        "size",
        *(("latency",) if timed else ()),
        "closest budget",
        "change",
        "verdict",
    )
    rows = []
    for result in sorted(results, key=lambda r: r.key):
        worst = worst_check(result.checks)
        closest = change = "-"
        if worst is not None:
            metric = METRICS_BY_NAME[worst.metric]
            kind = "baseline" if worst.is_baseline else "limit"
            closest = f"{worst.metric} {kind} {metric.format(worst.reference)}"
            change = worst.change
        rows.append(
            (
                result.key,
                macs_cell(result),
                *((dtype_shares(result.macs_by_dtype),) if typed else ()),
                format_count(result.metrics["params"]),
                *((_active(result),) if routed else ()),
                METRICS_BY_NAME["size"].format(result.metrics["size"]),
                *((_latency(result),) if timed else ()),
                closest,
                change,
                verdict_cell(result),
            )
        )
    if rows:
        yield from text_table(headers, rows)
    for result in sorted(results, key=lambda r: r.key):
        if result.details.get("new_tokens"):
            yield f"generation {result.key}: {generation_line(result)}"
    counts = verdict_counts(results)
    parts = [f"{counts[v.value]} {v.value}" for v in COUNTED_ORDER if counts[v.value]]
    yield f"{len(results)} measured call(s): " + (", ".join(parts) if parts else "none")
    if cpu_time_only(results):
        yield f"note: {CPU_TIME_ONLY}"
    uncounted = _uncounted(results)
    if uncounted:
        yield "ops with arithmetic but no MAC formula (not counted): " + ", ".join(
            f"{op} x{n}" for op, n in uncounted.items()
        )
        hint = formula_hint(uncounted)
        if hint:
            yield f"  {hint}"
    for result in results:
        if result.counted_nothing:
            yield f"WARNING: {zero_macs(result)}"
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


def _active(result: CallResult) -> str:
    active = result.metrics.get("active_params")
    return "?" if active is None else format_count(active)


def _latency(result: CallResult) -> str:
    if not result.timing:
        return "-"
    return f"{format_duration(result.timing.median_ms)} ±{result.timing.spread:.0%}"


def _uncounted(results: Iterable[CallResult]) -> Mapping[str, int]:
    total: dict[str, int] = {}
    for result in results:
        for op, n in result.uncounted.items():
            total[op] = total.get(op, 0) + n
    return dict(sorted(total.items()))
