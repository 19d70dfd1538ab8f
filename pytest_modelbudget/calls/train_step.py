"""A training step, ``model_budget.train_step(model, *inputs, target=, loss=, optimizer=)``.

Counted on meta twins (:func:`~..core.training.count.count_train_step`: forward, loss,
backward, the real optimizer class's step, and the step's peak memory by kind); timed by
repeating a real step on clones of the parameters (:func:`~..core.training.step.train_step_on`)
under a ``train step`` fingerprint, never against a forward's baseline.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import MeasurementError
from .kind import CallKind, Measured, Timed
from .metric import Metric, timed_statistic

if TYPE_CHECKING:
    from ..core.training.step import TrainSpec

ROWS: tuple[Metric, ...] = (
    # Counted on meta tensors like the forward.
    Metric(
        "train_macs",
        "max_train_macs",
        "count",
        "MACs of one training step: forward, loss and backward (recomputed checkpoints included)",
        read=lambda r: r.figures.macs,
        ratcheted=True,
        call="train",
        label="train MACs",
        module_figure="backward_macs",
    ),
    Metric(
        "train_flops",
        "max_train_flops",
        "count",
        "floating-point operations of one training step, 2 x train MACs",
        read=lambda r: r.figures.flops,
        call="train",
        label="train FLOPs",
        module_figure="backward_macs",
    ),
    Metric(
        "train_memory",
        "max_train_memory",
        "bytes",
        "estimated peak memory of a steady-state training step: params, grads, optimizer state, "
        "activations, temporaries",
        read=lambda r: r.figures.memory,
        ratcheted=True,
        call="train",
        label="train memory (estimate)",
    ),
    Metric(
        "train_cuda_memory",
        "max_train_cuda_memory",
        "bytes",
        "CUDA allocator peak of one real training step (CUDA only)",
        read=lambda r: r.cuda_memory if r.on_cuda else None,
        call="train",
        label="train memory (CUDA)",
        cpu_twin="max_train_memory",
    ),
    Metric(
        "train_step_ms",
        "max_train_step_ms",
        "ms",
        "time of one synchronized training step (median, or p90 with latency_stat)",
        read=timed_statistic,
        timed=True,
        call="train",
        label="train step",
    ),
)


class TrainStep(CallKind):
    """One steady-state training step: ``loss(model(*inputs), target)``, backward, optimizer step."""

    name = "train"
    noun = "training step"
    described = "a training step"
    remedy = "measure it with model_budget.train_step(model, *inputs, target=..., loss=..., optimizer=...)"
    alternatives = "use max_train_step_ms, max_train_memory or max_train_macs"
    rows: ClassVar[tuple[Metric, ...]] = ROWS
    measures = frozenset({"any", "pass", "train"})
    refused: ClassVar[Mapping[str, str]] = {
        "autocast": "autocast is not supported for training steps yet: drop autocast= from the budget",
        "compile": "a training step is counted and timed eagerly: drop compile= from the budget "
        "(compiled training steps are not measured yet)",
        "cuda_graph": "a training step is timed eagerly: drop cuda_graph= from the budget "
        "(CUDA-graph replays of training steps are not measured yet)",
    }
    always_cuda_peak = True  # reported beside the estimate
    mode = "train step"

    def __init__(self, spec: TrainSpec) -> None:
        self.spec = spec

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
        from ..core.compiling import is_compiled
        from ..core.devices import Repeated
        from ..core.training.count import count_train_step
        from ..core.training.step import train_step_on

        if is_compiled(model):
            raise MeasurementError(
                "a training step is counted and timed eagerly: pass the model itself, not a "
                "torch.compile'd one (compiled training steps are not measured yet)"
            )
        train = count_train_step(model, args, kwargs, self.spec)
        yield Measured(
            train.forward,
            figures=train,
            module_figures={"backward_macs": train.backward_modules},
            memory_by_kind=train.memory_by_kind,
            timed=(
                Timed(
                    "call",
                    Repeated(model, partial(train_step_on, model, args, kwargs, spec=self.spec)),
                    "train_step_ms",
                    self.mode,
                ),
            ),
        )
