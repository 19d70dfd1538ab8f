"""The metrics every kind of call measures -- the model it holds -- and those of one pass.

``call="any"``: every kind (params, size). ``call="pass"``: the kinds that run the model
once -- a forward, a compiled forward, a training step -- whose forward's MACs, FLOPs and
traffic these are; a generation runs many passes and has its own figures instead
(prefill and decode MACs). A training step's ``macs`` are those of its forward in train
mode; a compiled call's those of the eager model (compiling changes how the arithmetic
runs, not how much there is).
"""

from __future__ import annotations

from collections.abc import Mapping

from .metric import Metric, Readings, timed_statistic

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
    # At the judged statistic of the call's timing (p90 with latency_stat="p90"), like the
    # latency itself; a training step's items per second from its step time.
    time_ms = timed_statistic(readings)
    if readings.timing is None or time_ms is None:
        return None
    return readings.timing.batch_size * 1e3 / time_ms if time_ms else float("inf")


ROWS: tuple[Metric, ...] = (
    Metric(
        "macs",
        "max_macs",
        "count",
        "multiply-accumulates of one forward pass",
        read=lambda r: r.counts.macs,
        ratcheted=True,
        label="MACs",
        module_figure="macs",
        call="pass",
    ),
    Metric(
        "flops",
        "max_flops",
        "count",
        "floating-point operations, 2 x MACs",
        read=lambda r: r.counts.flops,
        label="FLOPs",
        module_figure="macs",
        call="pass",
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
        call="pass",
    ),
    Metric(
        "params",
        "max_params",
        "count",
        "parameters, shared tensors counted once",
        read=lambda r: r.counts.params,
        ratcheted=True,
        module_figure="params",
    ),
    Metric(
        "active_params",
        "max_active_params",
        "count",
        "parameters one token passes through: of a mixture of experts, only the k experts its router picks",
        read=lambda r: r.counts.active_params,
        ratcheted=True,
        label="active params",
        # Kept only for mixtures of experts: for a dense model it would repeat `params`.
        stored_if=lambda values: values["active_params"] != values["params"],
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
        label="memory traffic",
        call="pass",
    ),
    Metric(
        "throughput",
        "min_throughput",
        "rate",
        "items per second (batch / latency, or batch / step time of a training step)",
        read=_throughput,
        timed=True,
        higher_is_better=True,
        call="pass",
    ),
)
