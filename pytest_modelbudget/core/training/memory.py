"""The memory of one training step, estimated from its dispatch trace: peak and breakdown.

Every fresh tensor an op allocates is tracked by its *storage* (so an alias that outlives
the tensor that made it -- a gradient ``AccumulateGrad`` keeps as ``.grad`` -- keeps its
bytes alive) until the storage is freed. What is held for the whole step (parameters and
buffers, the optimizer's state) is added as a constant. At the peak, each live tensor is
put in one kind:

* ``params``: parameters and buffers;
* ``grads``: tensors that end up as a parameter's ``.grad``;
* ``optimizer_state``: what the optimizer keeps between steps (Adam's two moments, ...);
* ``activations``: the inputs, and what the forward and the loss allocated that is still
  alive -- in a step, what autograd saved for backward (and the output);
* ``temporaries``: everything else alive at the peak (a backward op's intermediates, a
  recomputed checkpoint segment, the optimizer's scratch tensors).

No allocator is modelled: no caching, fragmentation, alignment or workspaces.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ..counting.dispatch import iter_tensors

MEMORY_KINDS = ("params", "grads", "optimizer_state", "activations", "temporaries")


@dataclass
class _Allocation:
    nbytes: int
    allocated_at: int
    kind: str
    freed_at: int | None = None


def distinct_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        seen[storage._cdata] = storage.nbytes()
    return sum(seen.values())


class StepMemory:
    """Tracks the live bytes of a training step; ``allocated(out)`` is the dispatch hook."""

    def __init__(self) -> None:
        self.held: Counter[str] = Counter()  # kind -> bytes alive through the whole step
        self.phase_kind = "activations"  # the kind a fresh tensor gets in the current phase
        self._live: dict[int, _Allocation] = {}  # storage id -> its allocation, while alive
        self._allocations: list[_Allocation] = []
        self._clock = 0
        self._bytes = 0
        self._peak = 0
        self._peak_at = 0

    def hold(self, kind: str, nbytes: int) -> None:
        self.held[kind] += nbytes

    def allocated(self, out: Any) -> None:
        for tensor in iter_tensors(out):
            self._add(tensor, self.phase_kind)

    def inputs(self, tensors: Iterable[torch.Tensor]) -> None:
        for tensor in tensors:
            self._add(tensor, "activations")

    def _add(self, tensor: torch.Tensor, kind: str) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._live:
            return
        self._clock += 1
        allocation = _Allocation(storage.nbytes(), self._clock, kind)
        self._live[key] = allocation
        self._allocations.append(allocation)
        self._bytes += allocation.nbytes
        if self._bytes > self._peak:
            self._peak, self._peak_at = self._bytes, self._clock
        weakref.finalize(storage, self._freed, key)

    def _freed(self, key: int) -> None:
        allocation = self._live.pop(key, None)
        if allocation is not None:
            self._clock += 1
            allocation.freed_at = self._clock
            self._bytes -= allocation.nbytes

    def gradients(self, tensors: Iterable[torch.Tensor]) -> None:
        """Marks the storages of the parameters' ``.grad`` as gradients (what backward kept)."""
        for tensor in tensors:
            allocation = self._live.get(tensor.untyped_storage()._cdata)
            if allocation is not None:
                allocation.kind = "grads"

    @property
    def peak(self) -> int:
        return sum(self.held.values()) + self._peak

    def peak_by_kind(self) -> dict[str, int]:
        """The bytes alive at the peak, by kind (every kind listed, in MEMORY_KINDS order)."""
        kinds = Counter(self.held)
        for allocation in self._allocations:
            if allocation.allocated_at <= self._peak_at and (
                allocation.freed_at is None or allocation.freed_at > self._peak_at
            ):
                kinds[allocation.kind] += allocation.nbytes
        return {kind: kinds[kind] for kind in MEMORY_KINDS}
