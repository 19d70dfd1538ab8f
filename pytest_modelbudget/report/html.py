"""A self-contained HTML report of a run: one file, no network, no JavaScript library.

:func:`render` turns :class:`~..budgets.results.CallResult` values into a page with

* a table of every measured call, sortable (click a header, or the select above it) and
  sorted by the highest share of a budget used, worst first;
* per call, one bar per check: measured / limit (or baseline), green when ok, red when
  over, amber when inconclusive; a bar past 100% runs over the limit line into a hatched
  zone, so an overrun is visible at a glance;
* per call, the MACs per module as an inline SVG bar chart (the top modules, the rest
  grouped as "other"), with the baseline's value as a tick where one is stored.

Every piece of text from the results is escaped. A pure function of its arguments: the
same results give the same page, byte for byte.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..budgets.baselines import ROOT_MODULE
from ..budgets.checks import Check, Status
from ..budgets.metrics import METRICS, METRICS_BY_NAME
from ..budgets.results import CallResult
from ..calls.common import beyond_float32
from ..units import format_bytes, format_count, format_duration
from .html_assets import CSS, SCRIPT
from .words import dtype_breakdown, memory_breakdown, worst_check

MODULES_SHOWN = 12  # bars in a module chart, "other" included
_OVERFLOW_SCALE = 1.25  # a budget bar's full width is 125% of the budget: room to overflow

# Worst first: the order of the verdict column and of the summary chips.
_VERDICTS = ("over", "inconclusive", "new", "updated", "shrank", "ok")
_SEVERITY = {verdict: len(_VERDICTS) - i for i, verdict in enumerate(_VERDICTS)}


_SOURCES = {"marker": "marker limit", "budgets.yaml limits": "budgets.yaml limit", "baseline": "baseline"}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _label(metric: str) -> str:
    return METRICS_BY_NAME[metric].shown_as


def _format(metric: str, value: float) -> str:
    if not math.isfinite(value):
        return "∞"
    known = METRICS_BY_NAME.get(metric)
    return known.format(value) if known else f"{value:.4g}"


def _percent(usage: float | None) -> str:
    if usage is None:
        return "&ndash;"
    if not math.isfinite(usage):
        return "∞"
    return f"{usage:.0%}" if usage >= 0.995 or usage == 0 else f"{usage:.1%}"


def _status(result: CallResult, check: Check) -> str:
    """The check's colour: an over-baseline measured by --update-budgets was accepted."""
    if result.updating and check.is_baseline and check.status != Status.OK:
        return "updated"
    return check.status.value


def _usage(result: CallResult) -> float | None:
    """The largest share of any budget the call uses (None: nothing was checked)."""
    usages = [c.usage for c in result.checks]
    return max(usages) if usages else None


def _sort_value(value: float | None) -> str:
    # Missing values sort below every real one; infinity above.
    if value is None:
        return "-1"
    return "1e308" if not math.isfinite(value) else repr(float(value))


def render(results: Sequence[CallResult], *, title: str, environment: Mapping[str, Any]) -> str:
    """The whole HTML page for ``results``."""
    calls = list(results)
    ordered = sorted(
        enumerate(calls),
        key=lambda item: (-_order_usage(_usage(item[1])), item[1].key, item[0]),
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        f"<header><h1>{_e(title)}</h1>",
        *_summary_chips(calls),
        *_environment(environment),
        '<p class="legend">Budget bars: measured ÷ limit or baseline (for a minimum, the inverse). '
        "The black line is 100%; a bar past it runs into the hatched zone: over budget. "
        "Module charts: MACs per module, red where a module grew past its stored baseline "
        "(the black tick).</p>",
        "</header>",
        "<main>",
        *_table(ordered),
        '<div id="calls">',
        *(line for index, result in ordered for line in _section(index, result)),
        "</div>",
        "</main>",
        f"<script>{SCRIPT}</script>",
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


def _order_usage(usage: float | None) -> float:
    if usage is None:
        return -1.0
    return usage if math.isfinite(usage) else 1e308


def _summary_chips(calls: Sequence[CallResult]) -> Iterator[str]:
    counts = {verdict: 0 for verdict in _VERDICTS}
    for call in calls:
        counts[call.verdict.value] = counts.get(call.verdict.value, 0) + 1
    noun = "call" if len(calls) == 1 else "calls"
    chips = "".join(
        f'<span class="chip v-{_e(verdict)}">{n} {_e(verdict)}</span>' for verdict, n in counts.items() if n
    )
    yield f'<p class="summary">{len(calls)} measured {noun}{" " if chips else ""}{chips}</p>'


def _environment(environment: Mapping[str, Any]) -> Iterator[str]:
    if not environment:
        return
    items = "".join(
        f"<div><dt>{_e(key)}</dt><dd>{_e(value)}</dd></div>" for key, value in environment.items()
    )
    yield f'<dl class="env">{items}</dl>'


_COLUMNS = (
    # (sort key, header, numeric: sorted as numbers and, at first click, descending)
    ("name", "test", False),
    ("verdict", "verdict", True),
    ("usage", "highest budget use", True),
    ("macs", "MACs", True),
    ("params", "params", True),
    ("size", "size", True),
    ("latency", "latency", True),
)


def _table(ordered: Sequence[tuple[int, CallResult]]) -> Iterator[str]:
    options = "".join(
        f'<option value="{key}-{"desc" if numeric else "asc"}"'
        f"{' selected' if key == 'usage' else ''}>{_e(header)}</option>"
        for key, header, numeric in _COLUMNS
    )
    yield '<section class="overview"><div class="toolbar"><h2>Budgeted calls</h2>'
    yield f'<label>sort by <select id="sort">{options}</select></label></div>'
    yield '<table id="tests"><thead><tr>'
    for key, header, numeric in _COLUMNS:
        sort = ' aria-sort="descending"' if key == "usage" else ""
        align = ' class="num"' if numeric and key != "verdict" else ""
        yield (
            f'<th data-key="{key}" data-numeric="{int(numeric)}"{sort}{align}>'
            f'<button type="button">{_e(header)}</button></th>'
        )
    yield "</tr></thead><tbody>"
    for index, result in ordered:
        yield _row(index, result)
    yield "</tbody></table></section>"


def _row(index: int, result: CallResult) -> str:
    usage = _usage(result)
    worst = worst_check(result.checks)
    latency = result.timing.median_ms if result.timing else None
    metrics = result.metrics
    attributes = {
        "data-section": f"call-{index}",
        "data-name": _label_of(result),
        "data-verdict": str(_SEVERITY.get(result.verdict.value, 0)),
        "data-usage": _sort_value(usage),
        "data-macs": _sort_value(metrics.get("macs")),
        "data-params": _sort_value(metrics.get("params")),
        "data-size": _sort_value(metrics.get("size")),
        "data-latency": _sort_value(latency),
    }
    attrs = " ".join(f'{name}="{_e(value)}"' for name, value in attributes.items())
    worst_cell = "&ndash;"
    if worst is not None:
        status = _status(result, worst)
        what = f"{_label(worst.metric)} {_SOURCES[worst.source.value]}"
        worst_cell = (
            f'<span class="mini s-{_e(status)}">'
            f'<span style="width:{_bar_width(worst.usage):.1f}%"></span></span>'
            f'<span class="pct">{_percent(usage)}</span> <span class="muted">{_e(what)}</span>'
        )
    cells = [
        f'<td><a href="#call-{index}">{_e(_label_of(result))}</a></td>',
        f'<td><span class="badge v-{_e(result.verdict.value)}">{_e(result.verdict.value)}</span></td>',
        f'<td class="use">{worst_cell}</td>',
        f'<td class="num">{_e(format_count(metrics["macs"])) if "macs" in metrics else "&ndash;"}</td>',
        f'<td class="num">{_e(format_count(metrics["params"])) if "params" in metrics else "&ndash;"}</td>',
        f'<td class="num">{_e(format_bytes(metrics["size"])) if "size" in metrics else "&ndash;"}</td>',
        f'<td class="num">{_e(format_duration(latency)) if latency is not None else "&ndash;"}</td>',
    ]
    return f"<tr {attrs}>{''.join(cells)}</tr>"


def _label_of(result: CallResult) -> str:
    return result.nodeid + (f" [{result.name}]" if result.name else "")


def _bar_width(usage: float) -> float:
    """Width of a budget bar in % of its track, where 100% of the budget sits at 80%."""
    if not math.isfinite(usage):
        return 100.0
    return max(min(usage, _OVERFLOW_SCALE), 0.0) / _OVERFLOW_SCALE * 100.0


def _section(index: int, result: CallResult) -> Iterator[str]:
    usage = _usage(result)
    yield (
        f'<section class="call" id="call-{index}" data-usage="{_e(_sort_value(usage))}">'
        f'<h3><span class="badge v-{_e(result.verdict.value)}">{_e(result.verdict.value)}</span> '
        f"<code>{_e(_label_of(result))}</code></h3>"
    )
    yield from _stats(result)
    yield '<div class="panels"><div class="panel"><h4>Budget use</h4>'
    if result.checks:
        yield '<div class="checks">'
        for check in sorted(result.checks, key=lambda c: -_order_usage(c.usage)):
            yield from _check_bar(result, check)
        yield "</div>"
    else:
        yield '<p class="muted">no budget checked this call</p>'
    yield "</div>"
    yield '<div class="panel"><h4>MACs by module</h4>'
    yield _module_chart(result)
    yield "</div></div>"
    if result.uncounted:
        ops = ", ".join(f"{op} x{n}" for op, n in result.uncounted.items())
        yield (
            f'<p class="warn">ops with arithmetic the counter has no formula for (not in MACs): {_e(ops)}</p>'
        )
    yield "</section>"


# The counted figures of a kind of call beyond a forward's (a training step's, a compiled
# call's), shown after the forward's; its timed one is shown as the timing.
_KIND_STATS = tuple(m.name for m in METRICS if m.call not in ("any", "forward") and not m.timed)
# The timed statistic of each kind of call (latency, train step), in milliseconds.
_TIMED_STATS = tuple(m.name for m in METRICS if m.timed and m.unit == "ms")


def _stats(result: CallResult) -> Iterator[str]:
    metrics = result.metrics
    items = [
        (_label(name), _format(name, metrics[name]))
        for name in ("macs", "flops", "params", "size", "memory_traffic", "throughput", "memory", "max_batch")
        if name in metrics
    ]
    timing = result.timing
    if timing:
        detail = (
            f"p90 {format_duration(timing.p90_ms)}, IQR {format_duration(timing.iqr_ms)}, "
            f"{timing.samples} samples"
        )
        timed = next((name for name in _TIMED_STATS if name in metrics), "latency_ms")
        items.insert(5, (_label(timed), f"{format_duration(timing.median_ms)} ({detail})"))
    if beyond_float32(result.macs_by_dtype):
        items.insert(1, ("MACs by dtype", dtype_breakdown(result.macs_by_dtype)))
    items += [(_label(name), _format(name, metrics[name])) for name in _KIND_STATS if name in metrics]
    if result.memory_by_kind:
        items.append(("training peak holds", memory_breakdown(result.memory_by_kind)))
    cells = "".join(f"<div><dt>{_e(name)}</dt><dd>{_e(value)}</dd></div>" for name, value in items)
    where = f"counted on {result.executed_on}, {result.convention}"
    if timing and timing.fingerprint:
        where += f"; timed on {timing.fingerprint}"
    yield f'<dl class="stats">{cells}</dl><p class="muted small">{_e(where)}</p>'


def _check_bar(result: CallResult, check: Check) -> Iterator[str]:
    status = _status(result, check)
    metric = METRICS_BY_NAME.get(check.metric)
    source = _SOURCES[check.source.value]
    minimum = metric is not None and metric.higher_is_better
    relation = ", minimum" if minimum else " of"
    text = f"{_format(check.metric, check.measured)}{relation} {_format(check.metric, check.reference)}"
    tolerance = ""
    if check.is_baseline and check.tolerance:
        tolerance = f", tolerance {check.tolerance:.0%}"
    width = _bar_width(check.usage)
    clipped = " clipped" if not math.isfinite(check.usage) or check.usage > _OVERFLOW_SCALE else ""
    tick = ""
    if check.is_baseline and check.tolerance:
        tick = f'<span class="tol" style="left:{_bar_width(1 + check.tolerance):.1f}%"></span>'
    title = f"{_label(check.metric)}: {text} ({source}{tolerance}), {check.change}, {status}"
    yield (
        f'<div class="check s-{_e(status)}" data-metric="{_e(check.metric)}" title="{_e(title)}">'
        f'<div class="what"><b>{_e(_label(check.metric))}</b> <span class="muted">{_e(source)}</span></div>'
        f'<div class="track" role="meter" aria-valuenow="{_e(_sort_value(check.usage))}" '
        f'aria-label="{_e(_label(check.metric))} budget use">'
        f'<span class="fill{clipped}" style="width:{width:.1f}%"></span>{tick}'
        '<span class="limit"></span></div>'
        f'<div class="value"><b>{_percent(check.usage)}</b> <span class="muted">{_e(text)} '
        f"({_e(check.change)}{_e(tolerance)})</span> "
        f'<span class="status">{_e(status)}</span></div>'
        "</div>"
    )
    if check.note:
        yield f'<p class="note">{_e(check.note)}</p>'


def _module_chart(result: CallResult) -> str:
    """Horizontal bars of MACs per module (largest first), as an inline SVG."""
    width, label_w, value_w, row_h, bar_h = 560, 190, 118, 22, 14
    bar_x = label_w + 8
    bar_max = width - bar_x - value_w
    items = sorted(
        ((path, int(stats.get("macs", 0))) for path, stats in result.modules.items() if stats.get("macs", 0)),
        key=lambda item: (-item[1], item[0]),
    )
    if not items:
        return (
            f'<svg class="modules" viewBox="0 0 {width} {row_h + 8}" width="{width}" height="{row_h + 8}" '
            'role="img" aria-label="no MACs counted">'
            '<text x="0" y="18" class="lbl">no MACs counted</text></svg>'
        )
    rows: list[tuple[str, int, bool]] = [(path, macs, False) for path, macs in items]
    if len(rows) > MODULES_SHOWN:
        rest = rows[MODULES_SHOWN - 1 :]
        rows = [
            *rows[: MODULES_SHOWN - 1],
            (f"other ({len(rest)} modules)", sum(m for _, m, _ in rest), True),
        ]
    total = sum(macs for _, macs in items)
    baseline = result.baseline_modules
    peak = max(
        [macs for _, macs, _ in rows]
        + [int(baseline.get(path, {}).get("macs", 0)) for path, _, other in rows if not other]
    )
    height = len(rows) * row_h + 6
    out = [
        f'<svg class="modules" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="MACs by module">'
    ]
    for i, (path, macs, other) in enumerate(rows):
        y = 3 + i * row_h
        shown = path if other else (path or ROOT_MODULE)
        label = shown if len(shown) <= 28 else "…" + shown[-27:]
        share = macs / total if total else 0.0
        before = None if other or not baseline else int(baseline.get(path, {}).get("macs", 0))
        kind = "other" if other else ("grew" if before is not None and macs > before else "bar")
        bar_w = max(bar_max * macs / peak, 1.0)
        detail = f"{shown}: {macs:,} MACs ({share:.1%})"
        if before is not None and before != macs:
            detail += f"; baseline {before:,}" if before else "; not in the baseline"
        out.append(f"<g><title>{_e(detail)}</title>")
        out.append(
            f'<text x="{label_w}" y="{y + bar_h - 2}" text-anchor="end" class="lbl">{_e(label)}</text>'
        )
        out.append(
            f'<rect x="{bar_x}" y="{y}" width="{bar_w:.1f}" height="{bar_h}" rx="2" class="{kind}"></rect>'
        )
        if before and before != macs:
            x = bar_x + bar_max * before / peak
            out.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y - 2}" y2="{y + bar_h + 2}" class="base"></line>'
            )
        out.append(
            f'<text x="{bar_x + bar_w + 6:.1f}" y="{y + bar_h - 2}" class="val">'
            f"{_e(format_count(macs))} · {share:.1%}</text></g>"
        )
    out.append("</svg>")
    return "".join(out)
