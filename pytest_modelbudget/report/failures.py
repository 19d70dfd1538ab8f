"""A failed test's message and a call's warnings: what broke, by how much, where, and the remedy."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from ..budgets.checks import Check, StrictRule
from ..budgets.metrics import METRICS_BY_NAME
from ..budgets.results import CallResult
from ..units import format_change, format_count
from .words import describe, formula_hint, graph_break_lines, memory_breakdown, update_command, zero_macs

_MODULES_SHOWN = 3

TIMING_HINT = (
    "To decide, give the measurement more time (--budget-time), time a CUDA graph "
    "(cuda_graph=True) on GPU, use a larger batch, or run on a quieter machine"
)


def _inconclusive_lines(result: CallResult) -> list[str]:
    return [f"{result.key}: {describe(c)}. {TIMING_HINT}" for c in result.inconclusive_checks]


def warning_messages(result: CallResult) -> list[str]:
    """A call that counted nothing, and each inconclusive timing verdict (not where
    --budget-strict fails them instead)."""
    warnings = [zero_macs(result)] if result.counted_nothing and not result.strict_failures else []
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
            hint = formula_hint(result.uncounted)
            if hint:
                yield f"  {hint}"
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


def _grown_modules(result: CallResult, failed: Sequence[Check]) -> Iterator[str]:
    before = result.baseline_modules
    if not before:
        return
    # The per-module figure each failed metric grows with (macs, params, backward_macs), once.
    figures = dict.fromkeys(f for c in failed if (f := METRICS_BY_NAME[c.metric].module_figure))
    for metric in figures:
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
