"""What a kind of call is: the one place where a forward, a training step and a compiled call differ.

A :class:`CallKind` says, for calls of its kind,

* how it is counted, and what is repeated when it is timed (:meth:`CallKind.measure`),
* which metrics it measures (its ``rows``, the rows of every kind, ``call="any"``, and of
  one pass of the model, ``call="pass"``) and so which marker keywords it accepts, and the
  budget options it refuses,
* how it is named in messages (``noun``, ``described``, ``remedy``),
* what timing repeats (one figure or more: :class:`Timed`), under which fingerprint mode
  each is kept, and which metric its baseline verdict is.

:func:`~..budgets.measure.measure_call` resolves the budget, lets the kind measure, times what
the kind says to repeat when the budget asks, and judges the values; it does not branch on the
kind. Adding a kind of call is one module
here with its rows, and its entry in the metric table (:data:`~..budgets.metrics.KINDS`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from ..core.compiling import CompileStats
    from ..core.counting.count import Counts
    from ..core.devices import Repeated
    from .metric import Metric


@dataclass(frozen=True)
class Measured:
    """What a kind of call measured, before it is timed and judged."""

    counts: Counts  # the forward's (a training step's: its forward in train mode)
    # The kind's own figures (a training step's TrainCounts, a compiled call's CompileStats):
    # what its rows read, and what the fixture's Measurement hands back.
    figures: Any = None
    # Per-module figures besides the forward's MACs and params, for the `modules:` block of
    # budgets.yaml: figure name -> module path -> value (a training step's backward_macs).
    module_figures: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    compiled: CompileStats | None = None  # graph breaks and recompiles, for failure messages
    memory_by_kind: Mapping[str, int] = field(default_factory=dict)  # a training step's peak, by kind
    # What reports show beside the metrics, JSON-able (a generation's shape and last step).
    details: Mapping[str, Any] = field(default_factory=dict)
    # What timing repeats, if the budget asks (the first figure: also the CUDA peak); valid
    # while the kind's measure() block is open (a compiled call's dynamo state is).
    timed: tuple[Timed, ...] = ()


@dataclass(frozen=True)
class Timed:
    """One figure timing measures of a call: what to repeat, and how its time is read.

    A forward has one ("call": its latency); a generation two ("ttft", the prompt's forward
    and the first token; "generation", all of it -- its decode rate is the tokens after the
    first over the time the generation takes beyond the first token: ``minus="ttft"``).
    """

    name: str  # what the timed rows' `timed_by` says
    repeated: Repeated
    judged_as: str  # the metric its baseline verdict is reported as: "latency_ms", "ttft_ms"
    mode: str  # its timing fingerprint's mode: "eager", "train step", "generate ttft"
    items: int | None = None  # items per call, a rate's numerator (None: the inputs' batch)
    minus: str | None = None  # the figure whose time this one's includes (a rate is over the rest)


class CallKind(ABC):
    """A kind of call: a forward (:mod:`.forward`), a training step (:mod:`.train_step`), a
    compiled forward (:mod:`.compiled`), a generation (:mod:`.generation`). Class attributes
    describe the kind; an instance
    carries what the test passed for one call (a training step's loss and optimizer)."""

    name: ClassVar[str]  # what its rows' `call` says: "forward", "train", "compiled", "generate"
    noun: ClassVar[str]  # "the model's {noun} raised ...": "forward", "training step"
    described: ClassVar[str]  # "{keyword} limit(s) {described}": "a forward pass"
    remedy: ClassVar[str]  # how to measure a call of this kind, for a limit put on another kind
    # What a call of this kind limits instead, when a limit of another kind is put on it.
    alternatives: ClassVar[str] = ""
    # A timed figure a call of this kind may not time -> why, for a limit judged on it.
    untimed: ClassVar[Mapping[str, str]] = {}
    rows: ClassVar[tuple[Metric, ...]]  # the metrics only this kind measures
    measures: ClassVar[frozenset[str]]  # the rows' `call` values it measures ("any" included)
    # Budget options (marker or budgets.yaml keywords) it cannot take -> what to do instead.
    # The run-wide twin of such an option (--budget-compile, --budget-cuda-graphs) leaves
    # calls of this kind alone.
    refused: ClassVar[Mapping[str, str]] = {}
    # Take the CUDA allocator peak on a CUDA device even when no limit asks for it (a
    # training step reports it beside its estimate); otherwise only for a limit.
    always_cuda_peak: ClassVar[bool] = False
    # Whether a CUDA graph, when timing asks for one, is of the whole call (the timer captures
    # it); a generation graphs its decode step itself (:meth:`fitted`), never the whole loop.
    graphs_whole_call: ClassVar[bool] = True
    mode: str = "eager"  # its timing fingerprint's mode

    def fitted(self, options: Mapping[str, Any]) -> CallKind:
        """This kind for the call options of its budget (marker and ``budgets.yaml``
        keywords, parsed): itself, unless the kind takes an option into what it measures."""
        return self

    @abstractmethod
    def measure(
        self,
        model: Any,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        device: str | None,
        autocast: bool | str,
    ) -> AbstractContextManager[Measured]:
        """Count the call; the block it opens holds what timing repeats (``Measured.timed``).

        ``device``: where the call is timed (None: the model's device); ``autocast``: the
        budget's option (True, False or a dtype), for the kinds that take it.
        """

    def measures_metric(self, metric: Metric) -> bool:
        return metric.call in self.measures

    def wrong_limits(self, described: str, remedy: str, keywords: Sequence[str]) -> str:
        """The error for limits of what ``described`` names (another kind of call, or one pass
        of the model) put on a call of this kind."""
        instead = f", not {self.described}: {self.alternatives}, or " if self.alternatives else ": "
        return f"{', '.join(keywords)} limit(s) {described}{instead}{remedy}"
