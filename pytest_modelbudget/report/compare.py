"""A comparison of two runs in words: the pull-request comment, the terminal table, the JSON.

The Markdown fits a GitHub comment (65,536 characters): rows of calls that changed first, the
modules that changed folded in ``<details>``, and when it would not fit, what is left out is
said in a last line instead of being cut mid-table.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ..budgets.compare import CallDiff, Change, Comparison, MetricChange, ModuleChange
from ..budgets.metrics import METRICS_BY_NAME
from ..units import format_change, format_count
from .text_table import text_table

COMMENT_LIMIT = 65_536  # GitHub's limit on a comment's body, in characters
MODULES_SHOWN = 10  # per call, in its <details>
_ORDER = (Change.GREW, Change.SHRANK, Change.NEW, Change.REMOVED, Change.UNCHANGED)
NOT_COMPARABLE = "x"  # asv's mark for figures measured on different machines


def headline(comparison: Comparison) -> str:
    """``2 grew, 1 shrank, 1 over budget, 0 new, 0 removed, 37 unchanged``."""
    counts = {change: comparison.count(change) for change in _ORDER}
    return (
        f"{counts[Change.GREW]} grew, {counts[Change.SHRANK]} shrank, {comparison.over} over budget, "
        f"{counts[Change.NEW]} new, {counts[Change.REMOVED]} removed, {counts[Change.UNCHANGED]} unchanged"
    )


def _ordered(calls: Sequence[CallDiff]) -> list[CallDiff]:
    # What a reviewer must see first: calls over budget, then growth, shrinkage, new, removed.
    return sorted(calls, key=lambda c: (not c.head_failed, _ORDER.index(c.change), c.key))


def _format(metric: str, value: float | None) -> str:
    return "-" if value is None else METRICS_BY_NAME[metric].format(value)


def _change(change: MetricChange) -> str:
    if change.base is None or change.head is None:
        return "new" if change.base is None else "removed"
    return format_change(change.head, change.base)


def _rows(call: CallDiff, *, every_metric: bool) -> list[tuple[str, str, str, str]]:
    """(metric, base, head, change) for the metrics that changed (every one with ``every_metric``)."""
    metrics = (
        call.metrics if every_metric or call.change in (Change.NEW, Change.REMOVED) else call.changed_metrics
    )
    rows = [_row(m) for m in (*metrics, *call.timed)]
    if call.timing_not_comparable:
        rows.append(("timing", NOT_COMPARABLE, NOT_COMPARABLE, "not comparable: another kind of device"))
    return rows or [("-", "-", "-", "no change")]


def _row(change: MetricChange) -> tuple[str, str, str, str]:
    metric = change.metric
    return (metric, _format(metric, change.base), _format(metric, change.head), _change(change))


def _module_line(change: ModuleChange) -> str:
    base = format_count(change.base) if change.base else "-"
    head = format_count(change.head) if change.head else "-"
    delta = format_change(change.head, change.base) if change.base else "new"
    return f"| `{change.path}` | {change.figure} | {base} | {head} | {delta} |"


def _details(call: CallDiff) -> list[str]:
    shown = call.modules[:MODULES_SHOWN]
    if not shown:
        return []
    grew = sum(1 for m in call.modules if m.head > m.base)
    shrank = len(call.modules) - grew
    lines = [
        "<details>",
        f"<summary><code>{call.key}</code>: {grew} module figure(s) grew, {shrank} shrank</summary>",
        "",
        "| module | figure | base | head | change |",
        "| --- | --- | --- | --- | --- |",
        *(_module_line(m) for m in shown),
    ]
    if len(call.modules) > len(shown):
        lines.append(f"\n{len(call.modules) - len(shown)} more module figure(s) changed.")
    return [*lines, "", "</details>", ""]


def markdown(
    comparison: Comparison,
    *,
    title: str = "Model budgets",
    every_call: bool = False,
    limit: int = COMMENT_LIMIT,
) -> str:
    """The pull-request comment: a headline, one row per metric of each call shown, then the
    modules that changed in ``<details>``; trimmed to ``limit`` characters with a note."""
    calls = _ordered(comparison.shown(every_call=every_call))
    head = [f"### {title}: base vs head", "", f"**{headline(comparison)}**", ""]
    if not calls:
        return "\n".join([*head, "No budgeted call changed."]) + "\n"
    table = [
        "| call | metric | base | head | change | head verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    reserve = 300  # room for the note on what was left out
    used = sum(len(line) + 1 for line in (*head, *table)) + reserve
    rows_out: list[str] = []
    tabled = 0
    for call in calls:
        rows = _rows(call, every_metric=every_call)
        lines = [
            f"| {f'`{call.key}`' if i == 0 else ''} | {metric} | {base} | {head_value} | {change} | "
            f"{(call.head_verdict or 'removed') if i == 0 else ''} |"
            for i, (metric, base, head_value, change) in enumerate(rows)
        ]
        size = sum(len(line) + 1 for line in lines)
        if used + size > limit:
            break
        rows_out += lines
        used += size
        tabled += 1
    details_out: list[str] = []
    detailed = 0
    with_modules = [c for c in calls[:tabled] if c.modules]
    for call in with_modules:
        lines = _details(call)
        size = sum(len(line) + 1 for line in lines)
        if used + size > limit:
            break
        details_out += lines
        used += size
        detailed += 1
    text = [*head, *table, *rows_out, "", *details_out]
    left = len(calls) - tabled
    folded = len(with_modules) - detailed
    if left or folded:
        parts = [f"{left} call(s) not in the table"] if left else []
        parts += [f"the modules of {folded} call(s)"] if folded else []
        text.append(
            f"*Left out to fit a comment: {' and '.join(parts)}; the whole comparison is in the --json file.*"
        )
    return "\n".join(text) + "\n"


def terminal_lines(comparison: Comparison, *, every_call: bool = False) -> Iterator[str]:
    """The comparison as a plain table, for the job's log."""
    calls = _ordered(comparison.shown(every_call=every_call))
    rows = []
    for call in calls:
        for i, (metric, base, head, change) in enumerate(_rows(call, every_metric=every_call)):
            verdict = (call.head_verdict or "removed") if i == 0 else ""
            rows.append((call.key if i == 0 else "", metric, base, head, change, verdict))
    if rows:
        yield from text_table(("call", "metric", "base", "head", "change", "head verdict"), rows)
    yield headline(comparison)


def to_json(comparison: Comparison) -> dict[str, Any]:
    """The whole comparison, every call, as a JSON-able document."""

    def metric(change: MetricChange) -> dict[str, Any]:
        return {"metric": change.metric, "base": change.base, "head": change.head}

    return {
        "schema": "pytest-modelbudget-comparison",
        "version": 1,
        "summary": {
            **{change.value: comparison.count(change) for change in _ORDER},
            "over": comparison.over,
        },
        "calls": [
            {
                "key": call.key,
                "change": call.change.value,
                "head_verdict": call.head_verdict,
                "head_failed": call.head_failed,
                "metrics": [metric(m) for m in call.metrics],
                "timed": [metric(m) for m in call.timed],
                "timing_not_comparable": call.timing_not_comparable,
                "modules": [
                    {"path": m.path, "figure": m.figure, "base": m.base, "head": m.head} for m in call.modules
                ],
            }
            for call in comparison.calls
        ],
    }
