"""The machine-readable outputs: the JSON report, the Markdown summary, JUnit properties."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

from ..budgets.metrics import METRICS_BY_NAME
from ..budgets.results import CallResult
from ..budgets.shards import REPORT_SCHEMA, REPORT_VERSION, RunRecord
from .words import macs_cell, verdict_cell, verdict_counts, verdict_note, worst_check


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


def json_report(
    results: Sequence[CallResult], *, budgets_file: str, env: Mapping[str, str], run: RunRecord
) -> dict[str, object]:
    """The --budget-json document (schema in docs/reference.md): what a reader wants of each
    call, and each call's whole result with what the run saw of the suite, so that reports
    of CI shards merge into one (:mod:`~..budgets.shards`) and two runs compare."""
    calls = []
    for result in sorted(results, key=lambda r: r.key):
        calls.append(
            {
                "test": result.nodeid,
                "name": result.name,
                "key": result.key,
                "verdict": result.verdict.value,
                "verdict_note": verdict_note(result),
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
                "timings": {name: stats.to_dict() for name, stats in result.timings.items()},
                "macs_by_dtype": dict(result.macs_by_dtype),
                "compiled": result.compiled.to_dict() if result.compiled else None,
                "memory_by_kind": dict(result.memory_by_kind),
                "details": dict(result.details),
                "result": result.to_dict(),
            }
        )
    return {
        "schema": REPORT_SCHEMA,
        "version": REPORT_VERSION,
        "budgets_file": budgets_file,
        "environment": dict(env),
        "summary": {"calls": len(results), **verdict_counts(results)},
        "calls": calls,
        "run": run.to_dict(),
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
    counts = verdict_counts(results)
    within = counts["ok"] + counts["shrank"] + counts["new"] + counts["updated"]
    yield f"### {title}"
    yield ""
    yield f"**{within} within budget, {counts['over']} over, {counts['inconclusive']} inconclusive**"
    yield ""
    yield "| test | metric | measured | limit / baseline | change | budget use | verdict |"
    yield "| --- | --- | --- | --- | --- | --- | --- |"
    for result in sorted(results, key=lambda r: r.key):
        worst = worst_check(result.checks)
        if worst is None:
            yield f"| `{result.key}` | macs | {macs_cell(result)} | - | - | - | {verdict_cell(result)} |"
            continue
        metric = METRICS_BY_NAME[worst.metric]
        kind = "baseline" if worst.is_baseline else f"limit ({worst.source.value})"
        yield (
            f"| `{result.key}` | {worst.metric} | {metric.format(worst.measured)} | "
            f"{kind} {metric.format(worst.reference)} | {worst.change} | {_usage_bar(worst.usage)} | "
            f"{verdict_cell(result)} |"
        )


def junit_properties(result: CallResult) -> list[tuple[str, object]]:
    """(name, value) pairs for --junitxml: each metric and the verdict of one call."""
    prefix = "model_budget" + (f"[{result.name}]" if result.name else "")
    properties: list[tuple[str, object]] = [
        (f"{prefix}.{metric}", value) for metric, value in result.metrics.items()
    ]
    properties.append((f"{prefix}.verdict", result.verdict.value))
    return properties
