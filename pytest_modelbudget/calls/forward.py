"""A forward pass, ``model_budget(model, *inputs, **kwargs)``: the plainest kind of call.

Counted on meta tensors where the model allows it (:func:`~..core.counting.count.count`;
under autocast on real ones, as autocast needs), timed by repeating the forward in inference
mode on the timing device.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Any, ClassVar

from .kind import CallKind, Measured, Timed
from .metric import Metric, Readings, timed_statistic


def _memory(readings: Readings) -> float | None:
    # On CUDA the allocator's peak (when measured); elsewhere the dispatch-trace estimate.
    return readings.cuda_memory if readings.on_cuda else readings.counts.peak_memory


ROWS: tuple[Metric, ...] = (
    Metric(
        "latency_ms",
        "max_latency_ms",
        "ms",
        "latency of one forward (median, or p90 with latency_stat)",
        read=timed_statistic,
        timed=True,
        call="forward",
        label="latency",
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
        label="peak memory",
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
        label="max batch",
    ),
)


class Forward(CallKind):
    """One forward pass of the model (the eager module of a model compiled with
    ``torch.compile`` whose budget says ``compile=False``)."""

    name = "forward"
    noun = "forward"
    described = "a forward pass"
    remedy = "measure the forward with model_budget(model, ...)"
    rows: ClassVar[tuple[Metric, ...]] = ROWS
    measures = frozenset({"any", "pass", "forward"})

    @contextmanager
    def measure(
        self,
        model: Any,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        device: str | None,
        autocast: bool | str,
    ) -> Iterator[Measured]:
        from ..core.compiling import eager_model
        from ..core.counting.count import count  # imports torch: only when a model is measured
        from ..core.devices import Repeated, autocast_dtype, repeated_forward, target_device

        model = eager_model(model)
        dtype = autocast_dtype(autocast, target_device(model, args, device)) if autocast else None
        counts = count(model, args, kwargs, autocast=dtype)
        repeat = partial(repeated_forward, model, args, kwargs, autocast=dtype)
        timed = Timed("call", Repeated(model, repeat, autocast=dtype), "latency_ms", self.mode)
        yield Measured(counts, timed=(timed,))
