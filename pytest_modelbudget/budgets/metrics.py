"""The metric table: every quantity a budget can limit, and how to parse, read, compare and format it.

This is the one place a metric is defined. A row says

* how users write its limit (``keyword`` and ``unit``: the parser and the formatter),
* where its value comes from in a measured call (``read`` from :class:`Readings`),
* how a limit is compared (``higher_is_better`` for minimums such as throughput),
* whether ``budgets.yaml`` keeps it as a ratcheted baseline, and whether it needs timing.

Everything else follows from the row: the marker keyword and its validation, the
``limits:`` keys of budgets.yaml, the ratcheted keys of an entry, the checks, the
summary, JSON, Markdown, HTML and JUnit outputs. No torch here, and no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..units import (
    format_bytes,
    format_count,
    format_duration,
    format_rate,
    format_seconds,
    parse_bytes,
    parse_count,
    parse_duration_ms,
    parse_duration_s,
    parse_rate,
)

if TYPE_CHECKING:
    from ..core.compiling import CompileStats
    from ..core.counting.count import Counts
    from ..core.timing.timer import TimingStats
    from ..core.training.step import TrainCounts

_PARSERS: dict[str, Callable[[object], float]] = {
    "count": parse_count,
    "bytes": parse_bytes,
    "ms": parse_duration_ms,
    "rate": parse_rate,
    "s": parse_duration_s,
}
_FORMATTERS: dict[str, Callable[[float], str]] = {
    "count": format_count,
    "bytes": format_bytes,
    "ms": format_duration,
    "rate": format_rate,
    "s": format_seconds,
}


@dataclass(frozen=True)
class Readings:
    """What the measuring core produced for one call; each metric reads its value from here."""

    counts: Counts
    timing: TimingStats | None = None  # when the call was timed
    roofline_ms: float | None = None  # when a hardware spec was given
    cuda_memory: int | None = None  # CUDA allocator peak of one forward, when measured there
    on_cuda: bool = False
    max_batch: int | None = None  # when min_max_batch asked for the search
    latency_stat: str = "median"  # the statistic latency is judged by: "median" or "p90"
    compiled: CompileStats | None = None  # when the call was compiled (compile=True)
    train: TrainCounts | None = None  # when the call is a training step (model_budget.train_step)


# Float dtypes of 16 bits or more: where a quantized model's MACs run when they fall back.
FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})


def float_macs(macs_by_dtype: Mapping[str, int]) -> int:
    """The MACs that ran in a float dtype of 16 bits or more."""
    return sum(n for dtype, n in macs_by_dtype.items() if dtype in FLOAT_DTYPES)


def beyond_float32(macs_by_dtype: Mapping[str, int]) -> bool:
    """Whether some MACs ran in a dtype other than float32: only then is the breakdown shown
    (summary, HTML, profile) and kept in budgets.yaml; for a float model it says nothing."""
    return bool(set(macs_by_dtype) - {"float32"})


def _throughput(readings: Readings) -> float | None:
    # At the judged latency statistic, like the latency itself (p90 with latency_stat="p90").
    timing = readings.timing
    if timing is None:
        return None
    latency = timing.stat(readings.latency_stat)
    return timing.batch_size * 1e3 / latency if latency else float("inf")


def _memory(readings: Readings) -> float | None:
    # On CUDA the allocator's peak (when measured); elsewhere the dispatch-trace estimate.
    # A training step has its own (train_memory, train_cuda_memory).
    if readings.train is not None:
        return None
    return readings.cuda_memory if readings.on_cuda else readings.counts.peak_memory


def _step_time(readings: Readings, train: bool) -> float | None:
    # The timed statistic is a forward's latency or a training step's time, never both.
    if readings.timing is None or (readings.train is not None) != train:
        return None
    return readings.timing.stat(readings.latency_stat)


@dataclass(frozen=True)
class Metric:
    """A measured quantity that a budget can limit."""

    name: str
    keyword: str
    unit: str  # "count", "bytes", "ms", "s" or "rate"
    description: str
    read: Callable[[Readings], float | None]  # None: not measured in this call
    ratcheted: bool = False  # kept as a baseline in budgets.yaml and never allowed to grow
    timed: bool = False  # needs the model to be timed, not only counted
    higher_is_better: bool = False  # the limit is a minimum (throughput), not a maximum
    compiled: bool = False  # measured only when the call is compiled (torch.compile)
    # A ratcheted metric is stored only where this holds of the call's values (default: always).
    stored_if: Callable[[Mapping[str, float]], bool] | None = None
    zero_allowed: bool = False  # a limit of 0 means "none at all" (graph breaks), not a mistake
    # The calls that measure it: "forward" (model_budget(...)), "train" (a training step,
    # model_budget.train_step(...)) or "any". A limit on the other kind is an error.
    call: str = "any"

    def parse(self, value: object) -> float:
        return _PARSERS[self.unit](value)

    def format(self, value: float) -> str:
        return _FORMATTERS[self.unit](value)

    def exceeds(self, measured: float, limit: float) -> bool:
        return measured < limit if self.higher_is_better else measured > limit


METRICS: tuple[Metric, ...] = (
    Metric(
        "macs",
        "max_macs",
        "count",
        "multiply-accumulates of one forward pass",
        read=lambda r: r.counts.macs,
        ratcheted=True,
    ),
    Metric(
        "flops", "max_flops", "count", "floating-point operations, 2 x MACs", read=lambda r: r.counts.flops
    ),
    Metric(
        "float_macs",
        "max_float_macs",
        "count",
        "MACs that ran in a 16-to-64-bit float dtype: in a quantized model, what fell back to float",
        read=lambda r: float_macs(r.counts.macs_by_dtype),
        ratcheted=True,
        zero_allowed=True,  # max_float_macs=0: every MAC stays in its quantized dtype
        # Kept only where some MACs run in another dtype (quantized, float8): for a float
        # model it would repeat `macs`.
        stored_if=lambda values: values["float_macs"] != values["macs"],
    ),
    Metric(
        "params",
        "max_params",
        "count",
        "parameters, shared tensors counted once",
        read=lambda r: r.counts.params,
        ratcheted=True,
    ),
    Metric(
        "size",
        "max_size",
        "bytes",
        "bytes of parameters and buffers, by dtype",
        read=lambda r: r.counts.size_bytes,
        ratcheted=True,
    ),
    Metric(
        "memory_traffic",
        "max_memory_traffic",
        "bytes",
        "bytes read plus written by every op (no caching or fusion)",
        read=lambda r: r.counts.memory_traffic,
    ),
    Metric(
        "latency_ms",
        "max_latency_ms",
        "ms",
        "latency of one forward (median, or p90 with latency_stat)",
        read=lambda r: _step_time(r, train=False),
        timed=True,
        call="forward",
    ),
    Metric(
        "throughput",
        "min_throughput",
        "rate",
        "items per second (batch / latency, or batch / step time of a training step)",
        read=_throughput,
        timed=True,
        higher_is_better=True,
    ),
    Metric(
        "roofline_ms",
        "max_roofline_ms",
        "ms",
        "roofline estimate of latency on the given hardware (deterministic)",
        read=lambda r: r.roofline_ms,
        call="forward",
    ),
    Metric(
        "memory",
        "max_memory",
        "bytes",
        "peak memory of one forward: CUDA allocator peak, or a CPU estimate",
        read=_memory,
        call="forward",
    ),
    Metric(
        "max_batch",
        "min_max_batch",
        "count",
        "largest batch that fits in CUDA memory",
        read=lambda r: r.max_batch,
        timed=True,
        higher_is_better=True,
        call="forward",
    ),
    # Training steps (model_budget.train_step): counted on meta tensors like the forward.
    Metric(
        "train_macs",
        "max_train_macs",
        "count",
        "MACs of one training step: forward, loss and backward (recomputed checkpoints included)",
        read=lambda r: r.train.macs if r.train else None,
        ratcheted=True,
        call="train",
    ),
    Metric(
        "train_flops",
        "max_train_flops",
        "count",
        "floating-point operations of one training step, 2 x train MACs",
        read=lambda r: r.train.flops if r.train else None,
        call="train",
    ),
    Metric(
        "train_memory",
        "max_train_memory",
        "bytes",
        "estimated peak memory of a steady-state training step: params, grads, optimizer state, "
        "activations, temporaries",
        read=lambda r: r.train.memory if r.train else None,
        ratcheted=True,
        call="train",
    ),
    Metric(
        "train_cuda_memory",
        "max_train_cuda_memory",
        "bytes",
        "CUDA allocator peak of one real training step (CUDA only)",
        read=lambda r: r.cuda_memory if r.train and r.on_cuda else None,
        call="train",
    ),
    Metric(
        "train_step_ms",
        "max_train_step_ms",
        "ms",
        "time of one synchronized training step (median, or p90 with latency_stat)",
        read=lambda r: _step_time(r, train=True),
        timed=True,
        call="train",
    ),
    # Compiled calls (compile=True): dynamo's own records, deterministic for given code and torch.
    Metric(
        "graph_breaks",
        "max_graph_breaks",
        "count",
        "places where torch.compile split the graph (compiled calls)",
        read=lambda r: len(r.compiled.graph_breaks) if r.compiled else None,
        compiled=True,
        ratcheted=True,
        zero_allowed=True,
    ),
    Metric(
        "graphs",
        "max_graphs",
        "count",
        "graphs torch.compile compiled (compiled calls)",
        read=lambda r: r.compiled.graphs if r.compiled else None,
        compiled=True,
        ratcheted=True,
    ),
    Metric(
        "recompiles",
        "max_recompiles",
        "count",
        "extra compilations: guards that failed on later inputs (compiled calls)",
        read=lambda r: len(r.compiled.recompiles) if r.compiled else None,
        compiled=True,
        ratcheted=True,
        zero_allowed=True,
    ),
    Metric(
        "kernels",
        "max_kernels",
        "count",
        "kernels inductor generated (compiled calls, inductor backend)",
        read=lambda r: r.compiled.kernels if r.compiled else None,
        compiled=True,
        ratcheted=True,
    ),
    Metric(
        "compile_s",
        "max_compile_s",
        "s",
        "time to compile (wall time: limited, never ratcheted)",
        read=lambda r: r.compiled.compile_s if r.compiled else None,
        compiled=True,
    ),
)
METRICS_BY_NAME = {m.name: m for m in METRICS}
METRICS_BY_KEYWORD = {m.keyword: m for m in METRICS}
RATCHETED = tuple(m.name for m in METRICS if m.ratcheted)
TRAIN_ONLY = tuple(m.name for m in METRICS if m.call == "train")
FORWARD_ONLY = tuple(m.name for m in METRICS if m.call == "forward")
COMPILED = tuple(m.name for m in METRICS if m.compiled)

# The order values are read in, and so the order of a call's metrics in every report:
# what counting gives first, then what timing adds.
_READ_ORDER = sorted(METRICS, key=lambda m: m.timed)


def baseline_values(measured: Mapping[str, float]) -> dict[str, int]:
    """The ratcheted values a baseline entry keeps of a call's measured values."""
    return {
        m.name: int(measured[m.name])
        for m in METRICS
        if m.ratcheted and m.name in measured and (m.stored_if is None or m.stored_if(measured))
    }


def read_all(readings: Readings) -> dict[str, float]:
    """Every metric this call measured, by name."""
    values = {}
    for metric in _READ_ORDER:
        value = metric.read(readings)
        if value is not None:
            values[metric.name] = value
    return values
