"""A compiled forward: ``compile=True`` (or ``--budget-compile``), or a model the user compiled.

Counted as the eager model (compiling changes how the arithmetic runs, not how much there
is); compiled in a clean dynamo state (:func:`~..core.compiling.compile_session`), run on the
test's earlier inputs of the same model and on this call's, so that recompiles across calls
show; timed as the compiled model under a fingerprint of its own (``compiled``,
``compiled:max-autotune``, ...), never against the eager baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from .forward import Forward
from .kind import CallKind, Measured, Timed
from .metric import Metric

if TYPE_CHECKING:
    import torch

    from ..core.compiling import Inputs
    from ..core.devices import Repeat

ROWS: tuple[Metric, ...] = (
    # dynamo's own records, deterministic for given code and torch.
    Metric(
        "graph_breaks",
        "max_graph_breaks",
        "count",
        "places where torch.compile split the graph (compiled calls)",
        read=lambda r: len(r.figures.graph_breaks),
        ratcheted=True,
        zero_allowed=True,
        call="compiled",
    ),
    Metric(
        "graphs",
        "max_graphs",
        "count",
        "graphs torch.compile compiled (compiled calls)",
        read=lambda r: r.figures.graphs,
        ratcheted=True,
        call="compiled",
    ),
    Metric(
        "recompiles",
        "max_recompiles",
        "count",
        "extra compilations: guards that failed on later inputs (compiled calls)",
        read=lambda r: len(r.figures.recompiles),
        ratcheted=True,
        zero_allowed=True,
        call="compiled",
    ),
    Metric(
        "kernels",
        "max_kernels",
        "count",
        "kernels inductor generated (compiled calls, inductor backend)",
        read=lambda r: r.figures.kernels,
        ratcheted=True,
        call="compiled",
    ),
    Metric(
        "compile_s",
        "max_compile_s",
        "s",
        "time to compile (wall time: limited, never ratcheted)",
        read=lambda r: r.figures.compile_s,
        call="compiled",
        wall_time=True,
    ),
)


_REMEDY = (
    "add compile=True to the marker, run with --budget-compile, or pass a model compiled with torch.compile"
)


class Compiled(CallKind):
    """A forward of ``torch.compile(model, **options)``; ``options`` None: a model the user
    compiled, measured as given."""

    name = "compiled"
    noun = "forward"
    described = "a compiled call"
    remedy = _REMEDY
    rows: ClassVar[tuple[Metric, ...]] = ROWS
    measures = frozenset({"any", "pass", "forward", "compiled"})  # a compiled forward is still a forward
    refused: ClassVar[Mapping[str, str]] = {
        "autocast": "autocast and compile cannot be combined yet: measure the compiled model "
        "without autocast, or the autocast model without compile",
        "cuda_graph": "cuda_graph and compile cannot be combined; use compile={'mode': 'reduce-overhead'}, "
        "torch.compile's own CUDA graphs",
    }

    def __init__(self, options: Mapping[str, Any] | None, earlier: Sequence[Inputs] = ()) -> None:
        from ..core.compiling import compile_label

        self.options = options
        self.earlier = tuple(earlier)  # this test's earlier inputs of the same model
        self.mode = compile_label(options)

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
        from ..core.compiling import compile_session, eager_model
        from ..core.counting.count import count
        from ..core.devices import Repeated

        eager = eager_model(model)
        counts = count(eager, args, kwargs)
        with compile_session(model, self.options) as session:
            stats = session.run([*self.earlier, (args, kwargs)])
            # The eager module is what moves to the device (the compiled model wraps it).
            repeated = Repeated(eager, _repeated_compiled(session.fn, args, kwargs))
            timed = Timed("call", repeated, "latency_ms", self.mode)
            yield Measured(counts, figures=stats, compiled=stats, timed=(timed,))


def _repeated_compiled(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Repeat:
    from ..core.devices import repeated_forward

    @contextmanager
    def repeat(device: torch.device) -> Iterator[Callable[[], object]]:
        with repeated_forward(fn, args, kwargs, device, None) as forward:
            # What is left to compile here (another device, inference mode) is compiled now,
            # not timed: timing's warm-up and time budget are for running.
            for _ in range(2):
                forward()
            yield forward

    return repeat


def forward_kind(
    model: Any, compile_options: Mapping[str, Any] | None, *, eager: bool, earlier: Sequence[Inputs] = ()
) -> CallKind:
    """The kind of ``model_budget(model, ...)``: compiled when the budget says so
    (``compile_options``, from ``compile=`` or ``--budget-compile``), or when the model is
    already compiled and the budget does not say ``compile=False`` (``eager``)."""
    from ..core.compiling import is_compiled

    if compile_options is not None:
        return Compiled(compile_options, earlier)
    if is_compiled(model) and not eager:
        return Compiled(None, earlier)
    return Forward()
