"""Count one training step -- forward, loss, backward, optimizer step -- without arithmetic.

:func:`count_train_step` runs a real step of autograd and of the real optimizer class, but
on *twins*: a meta tensor for every parameter, buffer and input (``requires_grad`` as the
original), bound to the model as ``torch.func.functional_call`` binds them. So the count is exactly
the gradient computations autograd performs -- a frozen parameter or an input without
``requires_grad`` gets no gradient, a ``torch.utils.checkpoint`` segment is recomputed in
the backward and counted there, tied weights accumulate into one gradient -- while the
model's own tensors, their ``.grad``, its buffers and a user's optimizer are never touched.
A model that cannot run on meta is counted the same way on real clones.

Each phase runs under its own :class:`~..counting.dispatch.CountingMode`; one
:class:`~.memory.StepMemory` follows the live bytes through all of them. The step is
a *steady-state* one: the optimizer's state is allocated by a first step on zero gradients
before the counted step, as it is after the first iteration of a training loop, and the
gradients start as None (``zero_grad(set_to_none=True)``).

Backward ops are attributed to the module whose forward created their autograd node: the
module tracker records autograd's sequence number at each module entry and exit, and a
node's sequence number places it in that timeline.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from ...errors import MeasurementError
from ..counting.count import Counts, ModuleTracker, assemble_counts, device_of
from ..counting.dispatch import MetaArguments, counting_mode
from ..model_state import Inventory, model_left_as_it_was
from .memory import MEMORY_KINDS, StepMemory
from .optimizers import optimizer_factory
from .step import TrainSpec, Twins, bound, loss_of, require_a_step, state_bytes, steady_optimizer, twin

__all__ = ["MEMORY_KINDS", "TrainCounts", "count_train_step"]


@dataclass(frozen=True)
class TrainCounts:
    """What one steady-state training step costs."""

    forward: Counts  # the forward in train mode, as count() reports a forward
    loss_macs: int
    backward_macs: int  # recomputed checkpoint segments included
    backward_modules: Mapping[str, int]  # backward MACs by module path ("" the root and loss)
    optimizer: str  # its name or class ("none": forward and backward only)
    memory: int  # estimated peak bytes of the step
    memory_by_kind: Mapping[str, int]  # the bytes alive at that peak, by MEMORY_KINDS
    uncounted: Mapping[str, int]  # ops with arithmetic and no formula, all phases
    executed_on: str
    optimizer_traffic: int = 0  # bytes the optimizer step read and wrote
    macs_by_dtype: Mapping[str, int] = field(default_factory=dict)  # all phases

    @property
    def macs(self) -> int:
        """Forward + loss + backward MACs (the optimizer's elementwise updates carry none)."""
        return self.forward.macs + self.loss_macs + self.backward_macs

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def backward_by_module(self, depth: int) -> dict[str, int]:
        """Backward MACs per module path cut at ``depth`` levels ("" the root's own and the loss)."""
        grouped: dict[str, int] = defaultdict(int)
        for path, macs in self.backward_modules.items():
            grouped[".".join(path.split(".")[: max(depth, 0)])] += macs
        return dict(grouped)


def count_train_step(
    model: torch.nn.Module,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    spec: TrainSpec | None = None,
    *,
    execution: str = "auto",
) -> TrainCounts:
    """Count one training step of ``model(*args, **kwargs)`` (see the module docstring).

    ``execution`` as for :func:`~..counting.count.count`: ``"meta"``, ``"real"`` (on clones) or
    ``"auto"`` (meta, else real). Raises :class:`~...errors.MeasurementError` for a model
    with nothing to train, a loss that is not a scalar, or an optimizer that cannot be
    built; an exception from the model's own forward propagates unchanged.
    """
    spec = spec or TrainSpec()
    if execution not in ("auto", "meta", "real"):
        raise MeasurementError(f"execution must be 'auto', 'meta' or 'real', got {execution!r}")
    require_a_step(model, spec)
    kwargs = dict(kwargs or {})
    if execution in ("auto", "meta"):
        try:
            return _count_step(model, args, kwargs, spec, to_meta=True)
        except MeasurementError:
            raise
        except Exception as error:  # any other failure on meta means "try real"
            if execution == "meta":
                raise MeasurementError(
                    f"the training step cannot run on the meta device ({type(error).__name__}: "
                    f"{error}); count with execution='real'"
                ) from error
    return _count_step(model, args, kwargs, spec, to_meta=False)


def _count_step(
    model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], spec: TrainSpec, *, to_meta: bool
) -> TrainCounts:
    build_optimizer, optimizer_name = optimizer_factory(spec.optimizer, model)
    inventory = Inventory.of(model)
    executed_on = "meta" if to_meta else device_of(inventory, args)
    with model_left_as_it_was(inventory, restore_values=False):
        twins = Twins.of(model, args, kwargs, spec.target, lambda t: twin(t, to_meta))
        args, kwargs, target = twins.args, twins.kwargs, twins.target
        trainable = [t for t in twins.parameters if t.requires_grad]
        memory = StepMemory()
        memory.hold("params", twins.held_bytes())
        memory.inputs(t for t in tree_leaves((args, kwargs, target)) if isinstance(t, torch.Tensor))
        optimizer = (
            steady_optimizer(build_optimizer, twins.parameters, on_meta=to_meta) if build_optimizer else None
        )
        if optimizer is not None:
            memory.hold("optimizer_state", state_bytes(optimizer))

        tracker = _StepTracker({id(module): path for path, module in inventory.modules})
        modes = {
            phase: counting_mode(to_meta=to_meta, memory=memory) for phase in ("forward", "loss", "backward")
        }
        # The optimizer's step counters live on the CPU and are read with .item(): its
        # tensors are never swapped (the parameters and their state are meta already).
        modes["optimizer"] = counting_mode(to_meta=False, memory=memory)
        for mode in modes.values():
            mode.current_module = tracker.current
        # The step's parameters are the twins bound in the real ones' place.
        modes["forward"].parameter_ids = frozenset(id(t) for t in twins.parameters)
        has_rnn = any(isinstance(module, torch.nn.RNNBase) for _, module in inventory.modules)
        # The twins stay bound through the backward too: a checkpointed segment runs its
        # forward again there, and must meet the twins, not the real parameters.
        with torch.enable_grad(), tracker, bound(model, twins.bound):
            model.train()
            with MetaArguments(modes["forward"]) if to_meta and has_rnn else nullcontext(), modes["forward"]:
                output = model(*args, **kwargs)
            with modes["loss"]:
                loss = loss_of(output, target, spec)
            memory.phase_kind = "temporaries"
            with modes["backward"]:
                loss.backward()  # type: ignore[no-untyped-call]
            memory.gradients(t.grad for t in trainable if t.grad is not None)
            # The output and the loss stay referenced through the optimizer step, as in a loop
            # that keeps them in variables (`out = model(x)`).
            if optimizer is not None:
                with modes["optimizer"]:
                    optimizer.step()
            del output, loss
    forward = assemble_counts(model, inventory, modes["forward"], executed_on)
    uncounted: defaultdict[str, int] = defaultdict(int)
    macs_by_dtype: defaultdict[str, int] = defaultdict(int)
    for mode in modes.values():
        for name, n in mode.uncounted.items():
            uncounted[name] += n
        for dtype, n in mode.macs_by_dtype.items():
            macs_by_dtype[dtype] += n
    return TrainCounts(
        forward=forward,
        loss_macs=sum(modes["loss"].module_macs.values()),
        backward_macs=sum(modes["backward"].module_macs.values()),
        backward_modules={path: n for path, n in sorted(modes["backward"].module_macs.items()) if n},
        optimizer=optimizer_name,
        memory=memory.peak,
        memory_by_kind=memory.peak_by_kind(),
        uncounted=dict(sorted(uncounted.items())),
        executed_on=executed_on,
        optimizer_traffic=sum(modes["optimizer"].module_traffic.values()),
        macs_by_dtype=dict(sorted(macs_by_dtype.items())),
    )


class _StepTracker(ModuleTracker):
    """The module tracker, also placing backward ops: at each module entry and exit it
    records autograd's next sequence number, and a backward op belongs to the module that
    was running when its node was created."""

    def __init__(self, names: Mapping[int, str]) -> None:
        super().__init__(names)
        self._sequence = [0]  # sequence number at which each timeline state began
        self._paths = [""]

    def _moved(self) -> None:
        self._sequence.append(torch._C._autograd._get_sequence_nr())
        self._paths.append(self.current_forward())

    def current_forward(self) -> str:
        return super().current()

    def _enter(self, module: torch.nn.Module, args: Any) -> None:
        super()._enter(module, args)
        self._moved()

    def _exit(self, module: torch.nn.Module, args: Any, out: Any) -> None:
        super()._exit(module, args, out)
        self._moved()

    def current(self) -> str:
        if self.depth > 1:  # inside a module's forward (also a checkpoint's recompute)
            return self.current_forward()
        node = torch._C._current_autograd_node()
        if node is None:
            return ""
        index = bisect.bisect_right(self._sequence, node._sequence_nr()) - 1
        return self._paths[index] if index >= 0 else ""
