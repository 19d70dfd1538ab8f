"""Words for results: the failure message, warnings, the end-of-run summary, JSON, Markdown, JUnit.

Generators of lines (and JSON-able documents) from typed results, and nothing else: the
pytest layer decides where they go. The only module that turns a check or a verdict into
text for users (the HTML page has its own, :mod:`.html_report`).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from ..budgets.checks import Check, Status, StrictRule, Verdict
from ..budgets.metrics import METRICS_BY_NAME
from ..budgets.results import CallResult
from ..calls.common import beyond_float32
from ..core.compiling import GraphBreak
from ..units import format_bytes, format_change, format_count, format_duration
from .text_table import text_table

_MODULES_SHOWN = 3
# The order verdicts are counted in, in the summary line and the JSON report.
_COUNTED_ORDER = (
    Verdict.OK,
    Verdict.OVER,
    Verdict.INCONCLUSIVE,
    Verdict.SHRANK,
    Verdict.NEW,
    Verdict.UPDATED,
)

TIMING_HINT = (
    "To decide, give the measurement more time (--budget-time), time a CUDA graph "
    "(cuda_graph=True) on GPU, use a larger batch, or run on a quieter machine"
)


def update_command(nodeid: str) -> str:
    return f"pytest --model-budget --update-budgets {shlex.quote(nodeid)}"


def describe(check: Check) -> str:
    """``macs 1.46 M > baseline 1.33 M (+9.9%)``, with units, tolerance and the timing note."""
    metric = METRICS_BY_NAME[check.metric]
    relation = {Status.OVER: ">", Status.SHRANK: "<", Status.INCONCLUSIVE: "~>"}.get(check.status, "<=")
    if metric.higher_is_better and check.status in (Status.OVER, Status.INCONCLUSIVE):
        relation = relation.replace(">", "<")  # a minimum (throughput) is broken from below
    what = "baseline" if check.is_baseline else f"limit ({check.source.value})"
    allowed = f", tolerance {check.tolerance:.0%}" if check.is_baseline and check.tolerance else ""
    prefix = "inconclusive: " if check.status == Status.INCONCLUSIVE else ""
    note = f"; {prefix}{check.note}" if check.note else ""
    return (
        f"{check.metric} {metric.format(check.measured)} {relation} {what} "
        f"{metric.format(check.reference)} ({check.change}{allowed}){note}"
    )


def _largest_first(macs_by_dtype: Mapping[str, int]) -> list[tuple[str, int]]:
    return sorted(macs_by_dtype.items(), key=lambda item: (-item[1], item[0]))


def dtype_breakdown(macs_by_dtype: Mapping[str, int]) -> str:
    """``int8 1 M, float32 324 k``: the MACs of each dtype, largest first."""
    return ", ".join(f"{dtype} {format_count(n)}" for dtype, n in _largest_first(macs_by_dtype))


def memory_breakdown(memory_by_kind: Mapping[str, int]) -> str:
    """``params 46.8 MB, grads 44 MB, ...``: a training step's peak by kind, in its order."""
    return ", ".join(f"{kind.replace('_', ' ')} {format_bytes(n)}" for kind, n in memory_by_kind.items())


def dtype_shares(macs_by_dtype: Mapping[str, int]) -> str:
    """``int8`` when every MAC ran in one dtype, else ``int8 98%, float32 2%`` (largest first)."""
    total = sum(macs_by_dtype.values())
    if not total:
        return "-"
    ordered = _largest_first(macs_by_dtype)
    if len(ordered) == 1:
        return ordered[0][0]
    return ", ".join(f"{dtype} {n / total:.0%}" for dtype, n in ordered)


def _zero_macs(result: CallResult) -> str:
    ops = ", ".join(f"{op} x{n}" for op, n in result.uncounted.items())
    return (
        f"{result.key} counted 0 MACs, but ops with arithmetic ran uncounted ({ops}): "
        "a baseline of 0 MACs guards nothing (--budget-strict fails such a call)"
    )


def _inconclusive_lines(result: CallResult) -> list[str]:
    return [f"{result.key}: {describe(c)}. {TIMING_HINT}" for c in result.inconclusive_checks]


def warning_messages(result: CallResult) -> list[str]:
    """A call that counted nothing, and each inconclusive timing verdict (not where
    --budget-strict fails them instead)."""
    warnings = [_zero_macs(result)] if result.counted_nothing and not result.strict_failures else []
    if StrictRule.INCONCLUSIVE_TIMING in result.strict_failures:
        return warnings
    return warnings + _inconclusive_lines(result)


def failure_lines(result: CallResult, budgets_file: str) -> Iterator[str]:
    """The message of a failed test: each broken budget with remedies, then --budget-strict's rules."""
    if result.failed_checks:
        yield from _broken_budget_lines(result, budgets_file)
    for rule in result.strict_failures:
        if rule == StrictRule.NO_BASELINE:
            yield (
                f"--budget-strict: {result.key} has no baseline in {budgets_file}; "
                "record one with pytest --model-budget --update-budgets"
            )
        elif rule == StrictRule.UNCOUNTED_OPS:
            ops = ", ".join(f"{op} x{n}" for op, n in result.uncounted.items())
            yield f"--budget-strict: ops with arithmetic the counter cannot count: {ops}"
        else:
            for line in _inconclusive_lines(result):
                yield f"--budget-strict: inconclusive timing is a failure: {line}"


def _broken_budget_lines(result: CallResult, budgets_file: str) -> Iterator[str]:
    """One line per broken budget, the modules that grew, then what to do."""
    label = result.nodeid + (f" [{result.name}]" if result.name else "")
    yield f"model budget exceeded for {label}:"
    failed = result.failed_checks
    for check in failed:
        yield f"  {describe(check)}"
    yield from _grown_modules(result, failed)
    if any(c.metric in ("train_memory", "train_cuda_memory") for c in failed) and result.memory_by_kind:
        yield f"  the estimated peak holds: {memory_breakdown(result.memory_by_kind)}"
    yield from compile_lines(result, {c.metric for c in failed})
    if any(c.is_baseline for c in failed):
        yield (
            f"If this growth is intended, accept it as the new baseline in {budgets_file}: "
            f"{update_command(result.nodeid)}"
        )
    sources = sorted({c.source.value for c in failed if not c.is_baseline})
    for source in sources:
        where = "@pytest.mark.model_budget(...)" if source == "marker" else f"'limits:' in {budgets_file}"
        yield f"A limit from {source} is a hard contract: shrink the model or raise the limit in {where}."


# The per-module figure of `modules:` in budgets.yaml that explains each failed metric.
_MODULE_STATS = {
    "macs": ("macs", "flops"),
    "params": ("params",),
    "backward_macs": ("train_macs", "train_flops"),
}


def _grown_modules(result: CallResult, failed: Sequence[Check]) -> Iterator[str]:
    before = result.baseline_modules
    if not before:
        return
    for metric, judged_by in _MODULE_STATS.items():
        if not any(c.metric in judged_by for c in failed):
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


def compile_lines(result: CallResult, metrics: Iterable[str]) -> Iterator[str]:
    """Where each graph break is and why, and which guard failed for each recompile."""
    compiled = result.compiled
    metrics = set(metrics)
    if compiled is None:
        return
    if metrics & {"graph_breaks", "graphs", "kernels"}:
        yield from graph_break_lines(compiled.graph_breaks)
    if "recompiles" in metrics:
        for recompile in compiled.recompiles:
            yield (
                f"  recompile of {recompile.function} ({recompile.filename}:{recompile.lineno}): "
                f"guard failed: {recompile.guard}"
            )


def graph_break_lines(breaks: Sequence[GraphBreak]) -> Iterator[str]:
    """``graph break at model.py:12: Data-dependent branching`` with the line and dynamo's explanation."""
    for number, found in enumerate(breaks, 1):
        yield f"  graph break {number} at {found.filename}:{found.lineno}: {found.reason}"
        if found.line:
            yield f"      {found.line}"
        if found.explanation:
            yield f"      ({found.explanation})"


@dataclass(frozen=True)
class UpdateSummary:
    """What an --update-budgets run did to the file."""

    written: int
    new: int
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
    # The dtypes MACs ran in, only in a run where some did not run in float32.
    typed = any(beyond_float32(r.macs_by_dtype) for r in results)
    headers = (
        "test",
        "MACs",
        *(("MAC dtypes",) if typed else ()),
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
                *((dtype_shares(result.macs_by_dtype),) if typed else ()),
                format_count(result.metrics["params"]),
                METRICS_BY_NAME["size"].format(result.metrics["size"]),
                *((_latency(result),) if timed else ()),
                closest,
                change,
                result.verdict.value,
            )
        )
    if rows:
        yield from text_table(headers, rows)
    counts = _verdict_counts(results)
    parts = [f"{counts[v.value]} {v.value}" for v in _COUNTED_ORDER if counts[v.value]]
    yield f"{len(results)} measured call(s): " + (", ".join(parts) if parts else "none")
    uncounted = _uncounted(results)
    if uncounted:
        yield "ops with arithmetic but no MAC formula (not counted): " + ", ".join(
            f"{op} x{n}" for op, n in uncounted.items()
        )
    for result in results:
        if result.counted_nothing:
            yield f"WARNING: {_zero_macs(result)}"
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
    return f"{format_duration(result.timing.median_ms)} ±{result.timing.spread:.0%}"


def _uncounted(results: Iterable[CallResult]) -> Mapping[str, int]:
    total: dict[str, int] = {}
    for result in results:
        for op, n in result.uncounted.items():
            total[op] = total.get(op, 0) + n
    return dict(sorted(total.items()))


# -- machine-readable and CI outputs ------------------------------------------------

JSON_SCHEMA_VERSION = 1


def environment() -> dict[str, str]:
    """Versions and device of this run, without importing torch."""
    import platform
    from importlib import metadata

    from .._version import __version__
    from ..core.devices import cpu_model

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "plugin": __version__,
        "torch": version("torch"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
    }


def _verdict_counts(results: Sequence[CallResult]) -> dict[str, int]:
    counts = {verdict.value: 0 for verdict in _COUNTED_ORDER}
    for result in results:
        counts[result.verdict.value] += 1
    return counts


def json_report(
    results: Sequence[CallResult], *, budgets_file: str, env: Mapping[str, str]
) -> dict[str, object]:
    """The --budget-json document (schema in docs/reference.md)."""
    calls = []
    for result in sorted(results, key=lambda r: r.key):
        calls.append(
            {
                "test": result.nodeid,
                "name": result.name,
                "key": result.key,
                "verdict": result.verdict.value,
                "device": result.timing.fingerprint if result.timing else result.executed_on,
                "counted_on": result.executed_on,
                "convention": result.convention,
                "metrics": dict(result.metrics),
                "checks": [
                    {**c.to_dict(), "change": c.change, "usage": _json_number(c.usage)} for c in result.checks
                ],
                "modules": {k: dict(v) for k, v in result.modules.items()},
                "uncounted": dict(result.uncounted),
                "timing": result.timing.to_dict() if result.timing else None,
                "macs_by_dtype": dict(result.macs_by_dtype),
                "compiled": result.compiled.to_dict() if result.compiled else None,
                "memory_by_kind": dict(result.memory_by_kind),
            }
        )
    return {
        "schema": "pytest-modelbudget-report",
        "version": JSON_SCHEMA_VERSION,
        "budgets_file": budgets_file,
        "environment": dict(env),
        "summary": {"calls": len(results), **_verdict_counts(results)},
        "calls": calls,
    }


def _json_number(value: float) -> float | None:
    # JSON has no infinity: a budget of 0 that is exceeded has no finite share (null).
    return round(value, 6) if math.isfinite(value) else None


def _usage_bar(usage: float, width: int = 10) -> str:
    if math.isinf(usage):  # a limit or baseline of zero
        return "█" * width + " ∞"
    filled = min(width, round(usage * width))
    return "█" * filled + "░" * (width - filled) + f" {usage:.0%}"


def markdown_lines(results: Sequence[CallResult], *, title: str = "Model budgets") -> Iterator[str]:
    """A GitHub-flavoured Markdown summary: a headline and one row per measured call."""
    counts = _verdict_counts(results)
    within = counts["ok"] + counts["shrank"] + counts["new"] + counts["updated"]
    yield f"### {title}"
    yield ""
    yield f"**{within} within budget, {counts['over']} over, {counts['inconclusive']} inconclusive**"
    yield ""
    yield "| test | metric | measured | limit / baseline | change | budget use | verdict |"
    yield "| --- | --- | --- | --- | --- | --- | --- |"
    for result in sorted(results, key=lambda r: r.key):
        worst = _worst(result.checks)
        if worst is None:
            macs = format_count(result.metrics["macs"])
            yield f"| `{result.key}` | macs | {macs} | - | - | - | {result.verdict.value} |"
            continue
        metric = METRICS_BY_NAME[worst.metric]
        kind = "baseline" if worst.is_baseline else f"limit ({worst.source.value})"
        yield (
            f"| `{result.key}` | {worst.metric} | {metric.format(worst.measured)} | "
            f"{kind} {metric.format(worst.reference)} | {worst.change} | {_usage_bar(worst.usage)} | "
            f"{result.verdict.value} |"
        )


def junit_properties(result: CallResult) -> list[tuple[str, object]]:
    """(name, value) pairs for --junitxml: each metric and the verdict of one call."""
    prefix = "model_budget" + (f"[{result.name}]" if result.name else "")
    properties: list[tuple[str, object]] = [
        (f"{prefix}.{metric}", value) for metric, value in result.metrics.items()
    ]
    properties.append((f"{prefix}.verdict", result.verdict.value))
    return properties
