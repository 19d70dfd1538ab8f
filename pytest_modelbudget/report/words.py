"""Phrases shared by every report: a check in words, breakdowns by dtype and by kind, graph breaks.

The report layer is the only place that turns a check or a verdict into text for users; the
modules beside this one (failures, summary, exports, HTML, profile) build on these phrases.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Iterator, Mapping, Sequence

from ..budgets.checks import Check, Status, Verdict
from ..budgets.metrics import METRICS_BY_NAME
from ..budgets.results import CallResult
from ..core.compiling import GraphBreak
from ..units import format_bytes, format_count

# The order verdicts are counted in, in the summary line and the JSON report.
COUNTED_ORDER = (
    Verdict.OK,
    Verdict.OVER,
    Verdict.INCONCLUSIVE,
    Verdict.SHRANK,
    Verdict.NEW,
    Verdict.UPDATED,
)


def verdict_note(result: CallResult) -> str:
    """Why an ok call is ok though its latency is beyond the tolerance (``machine busy: +38%
    latency, own cost +2%``: the time went to other processes); "" for any other call."""
    if result.verdict != Verdict.OK:
        return ""
    return next((c.note for c in result.checks if c.status == Status.OK and c.note), "")


def verdict_cell(result: CallResult) -> str:
    """``ok``, ``over``, ... -- and ``ok (machine busy: ...)`` where :func:`verdict_note` says why."""
    note = verdict_note(result)
    return f"{result.verdict.value} ({note})" if note else result.verdict.value


# Said once in a report where some latency was judged by the thread's CPU time.
CPU_TIME_ONLY = (
    "latency verdicts here rest on the timing thread's CPU time: this system has no scheduler "
    "statistics (/proc/thread-self/schedstat), so the time a forward waits (a sleep, a lock, "
    "another thread) is not judged as its own"
)


def cpu_time_only(results: Iterable[CallResult]) -> bool:
    """Whether some timed figure's own cost was the thread's CPU time (the fallback)."""
    return any(
        stats.own_clock == "thread"
        for result in results
        for stats in (result.timings.values() if result.timings else [result.timing] if result.timing else [])
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


def zero_macs(result: CallResult) -> str:
    ops = ", ".join(f"{op} x{n}" for op, n in result.uncounted.items())
    return (
        f"{result.key} counted 0 MACs, but ops with arithmetic ran uncounted ({ops}): "
        "a baseline of 0 MACs guards nothing (--budget-strict fails such a call)"
    )


def graph_break_lines(breaks: Sequence[GraphBreak]) -> Iterator[str]:
    """``graph break at model.py:12: Data-dependent branching`` with the line and dynamo's explanation."""
    for number, found in enumerate(breaks, 1):
        yield f"  graph break {number} at {found.filename}:{found.lineno}: {found.reason}"
        if found.line:
            yield f"      {found.line}"
        if found.explanation:
            yield f"      ({found.explanation})"


def worst_check(checks: Iterable[Check]) -> Check | None:
    return max(checks, key=lambda c: c.usage, default=None)


def verdict_counts(results: Sequence[CallResult]) -> dict[str, int]:
    counts = {verdict.value: 0 for verdict in COUNTED_ORDER}
    for result in results:
        counts[result.verdict.value] += 1
    return counts


# Namespaces of PyTorch's own ops: an uncounted op elsewhere is the user's (or a library's).
_TORCH_NAMESPACES = ("aten.", "prims.", "prim.", "quantized.", "higher_order.", "_quantized.")


def formula_hint(uncounted: Mapping[str, int]) -> str:
    """How to give a formula to uncounted ops of the user's own (custom and Triton ops)."""
    own = sorted(op for op in uncounted if not op.startswith(_TORCH_NAMESPACES))
    if not own:
        return ""
    name = own[0].replace(".", "::", 1)
    return (
        f"give {', '.join(own)} a formula: pytest_modelbudget.register_mac_formula({name!r}, "
        "lambda *args, out: ...), or register_flop_formula from torch.utils.flop_counter"
    )


def macs_cell(result: CallResult) -> str:
    """A call's MACs in a table: one pass's, or a generation's prefill + decode."""
    metrics = result.metrics
    if "macs" in metrics:
        return format_count(metrics["macs"])
    if "prefill_macs" in metrics:
        return f"{format_count(metrics['prefill_macs'])} + {format_count(metrics.get('decode_macs', 0))}"
    return "-"


def generation_line(result: CallResult) -> str:
    """``prompt 2 x 10, 6 new tokens: last step 48.9 k MACs at context 15; KV cache 7.7 kB
    (float32); TTFT 1.2 ms, 4.1 k decode tokens/s`` -- a generation's shape and last step."""
    details, metrics = result.details, result.metrics
    parts = [
        f"prompt {details['batch']} x {details['prompt_tokens']}, {details['new_tokens']} new tokens: "
        f"last step {format_count(details['last_step_macs'])} MACs at context {details['last_context']}"
    ]
    if "kv_cache" in metrics:
        dtypes = ", ".join(details.get("kv_cache_by_dtype") or {}) or "empty"
        parts.append(f"KV cache {format_bytes(metrics['kv_cache'])} ({dtypes})")
    timed = [
        f"{METRICS_BY_NAME[name].shown_as} {METRICS_BY_NAME[name].format(metrics[name])}"
        for name in ("ttft_ms", "decode_tokens_per_s")
        if name in metrics
    ]
    if timed:
        parts.append(", ".join(timed))
    return "; ".join(parts)
