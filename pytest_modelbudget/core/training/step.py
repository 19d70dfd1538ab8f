"""Count one training step -- forward, loss, backward, optimizer step -- without arithmetic.

:func:`count_train_step` runs a real step of autograd and of the real optimizer class, but
on *twins*: a meta tensor for every parameter, buffer and input (``requires_grad`` as the
original), bound to the model as ``torch.func.functional_call`` binds them. So the count is exactly
the gradient computations autograd performs -- a frozen parameter or an input without
``requires_grad`` gets no gradient, a ``torch.utils.checkpoint`` segment is recomputed in
the backward and counted there, tied weights accumulate into one gradient -- while the
model's own tensors, their ``.grad``, its buffers and a user's optimizer are never touched.
A model that cannot run on meta is counted the same way on real clones.

Each phase runs under its own :class:`~.dispatch.CountingMode`; one
:class:`~.train_memory.StepMemory` follows the live bytes through all of them. The step is
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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch.utils._pytree import tree_leaves, tree_map_only

from ...errors import MeasurementError
from ..counting.count import Counts, ModuleTracker, assemble_counts, device_of, require_module
from ..counting.dispatch import CountingMode, MetaArguments
from ..model_state import Inventory, model_left_as_it_was
from .memory import MEMORY_KINDS, StepMemory, distinct_bytes
from .optimizers import Factory, optimizer_factory

__all__ = ["MEMORY_KINDS", "TrainCounts", "TrainSpec", "count_train_step", "run_train_step", "train_step_on"]


@dataclass(frozen=True)
class TrainSpec:
    """What a training step does besides the forward: ``loss(output, target)`` and the optimizer.

    ``loss`` None: the sum of the output's floating-point tensors. ``optimizer`` None:
    forward and backward only. See :func:`~.optimizers.optimizer_factory` for the rest.
    """

    target: Any = None
    loss: Any = None
    optimizer: Any = None


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

    ``execution`` as for :func:`~.counting.count`: ``"meta"``, ``"real"`` (on clones) or
    ``"auto"`` (meta, else real). Raises :class:`~.errors.MeasurementError` for a model
    with nothing to train, a loss that is not a scalar, or an optimizer that cannot be
    built; an exception from the model's own forward propagates unchanged.
    """
    spec = spec or TrainSpec()
    if execution not in ("auto", "meta", "real"):
        raise MeasurementError(f"execution must be 'auto', 'meta' or 'real', got {execution!r}")
    _require_a_step(model, spec)
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


def _require_a_step(model: torch.nn.Module, spec: TrainSpec) -> None:
    """What can be told before running anything: a module with something to train, and a
    target that some loss will use."""
    require_module(model)
    if not any(p.requires_grad for p in model.parameters()):
        raise MeasurementError(
            "the model has no parameter with requires_grad=True: a training step would update "
            "nothing; unfreeze a layer, or measure the forward with model_budget(model, ...)"
        )
    if spec.target is not None and spec.loss is None:
        raise MeasurementError(
            "target= was given without loss=: pass the loss that compares the output with it, "
            "e.g. loss=nn.CrossEntropyLoss()"
        )


class NothingToReduce(MeasurementError):
    """The output holds no float tensor that depends on the parameters (the default loss)."""


def _twin(tensor: torch.Tensor, to_meta: bool) -> torch.Tensor:
    """A leaf of the same shape, strides, dtype and ``requires_grad``: meta, or a real clone."""
    if to_meta:
        twin = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device="meta")
    else:
        twin = tensor.detach().clone()
    return twin.requires_grad_(tensor.requires_grad)


class _Twins(NamedTuple):
    """The stand-ins a step runs on: parameters and buffers (by name, bound to the model
    with :func:`_bound`) and the inputs, target included."""

    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    target: Any

    @classmethod
    def of(
        cls,
        model: torch.nn.Module,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        target: Any,
        twin: Callable[[torch.Tensor], torch.Tensor],
    ) -> _Twins:
        # named_parameters() lists a tied tensor once; _bound ties its other names.
        params = {name: twin(p) for name, p in model.named_parameters()}
        buffers = {name: twin(b) for name, b in model.named_buffers()}
        inputs = tree_map_only(torch.Tensor, twin, (args, dict(kwargs), target))
        return cls(params, buffers, *inputs)

    @property
    def parameters(self) -> list[torch.Tensor]:
        return list(self.params.values())  # in the order of model.parameters()

    @property
    def bound(self) -> dict[str, torch.Tensor]:
        return {**self.params, **self.buffers}

    def held_bytes(self) -> int:
        return distinct_bytes(self.bound.values())


def _count_step(
    model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], spec: TrainSpec, *, to_meta: bool
) -> TrainCounts:
    build_optimizer, optimizer_name = optimizer_factory(spec.optimizer, model)
    inventory = Inventory.of(model)
    executed_on = "meta" if to_meta else device_of(inventory, args)
    with model_left_as_it_was(inventory, restore_values=False):
        twins = _Twins.of(model, args, kwargs, spec.target, lambda t: _twin(t, to_meta))
        args, kwargs, target = twins.args, twins.kwargs, twins.target
        trainable = [t for t in twins.parameters if t.requires_grad]
        memory = StepMemory()
        memory.hold("params", twins.held_bytes())
        memory.inputs(t for t in tree_leaves((args, kwargs, target)) if isinstance(t, torch.Tensor))
        optimizer = (
            _steady_optimizer(build_optimizer, twins.parameters, on_meta=to_meta) if build_optimizer else None
        )
        if optimizer is not None:
            memory.hold("optimizer_state", _state_bytes(optimizer))

        tracker = _StepTracker({id(module): path for path, module in inventory.modules})
        modes = {
            phase: CountingMode(to_meta=to_meta, memory=memory) for phase in ("forward", "loss", "backward")
        }
        # The optimizer's step counters live on the CPU and are read with .item(): its
        # tensors are never swapped (the parameters and their state are meta already).
        modes["optimizer"] = CountingMode(to_meta=False, memory=memory)
        for mode in modes.values():
            mode.current_module = tracker.current
        has_rnn = any(isinstance(module, torch.nn.RNNBase) for _, module in inventory.modules)
        # The twins stay bound through the backward too: a checkpointed segment runs its
        # forward again there, and must meet the twins, not the real parameters.
        with torch.enable_grad(), tracker, _bound(model, twins.bound):
            model.train()
            with MetaArguments(modes["forward"]) if to_meta and has_rnn else nullcontext(), modes["forward"]:
                output = model(*args, **kwargs)
            with modes["loss"]:
                loss = _loss_of(output, target, spec)
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


@contextmanager
def train_step_on(
    model: torch.nn.Module,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    device: torch.device,
    spec: TrainSpec,
) -> Iterator[Callable[[], object]]:
    """A real training step on ``device`` to repeat (timing, the CUDA allocator peak).

    It steps clones of the parameters and buffers, bound to the model for the block, with
    a fresh optimizer already in its steady state: each call zeroes the gradients (to
    None), runs forward, loss and backward in train mode and the optimizer step. The
    model's own tensors are never updated; the caller restores its train/eval flags.
    """
    build_optimizer, _ = optimizer_factory(spec.optimizer, model)
    twins = _Twins.of(model, args, kwargs, spec.target, lambda t: _twin(t.to(device), False))
    trainable = [t for t in twins.parameters if t.requires_grad]
    optimizer = (
        _steady_optimizer(build_optimizer, twins.parameters, on_meta=False) if build_optimizer else None
    )
    held = twins.held_bytes() + (_state_bytes(optimizer) if optimizer else 0)
    with _bound(model, twins.bound):
        yield _Step(model, twins.args, twins.kwargs, twins.target, spec, trainable, optimizer, held)


class _Step:
    """One real training step, callable again and again; ``held_bytes`` is what it keeps
    between calls (parameters, buffers, optimizer state), which an allocator peak measured
    above the level before a step leaves out."""

    def __init__(
        self,
        model: torch.nn.Module,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        target: Any,
        spec: TrainSpec,
        trainable: list[torch.Tensor],
        optimizer: torch.optim.Optimizer | None,
        held_bytes: int,
    ) -> None:
        self._model, self._args, self._kwargs, self._target, self._spec = model, args, kwargs, target, spec
        self._trainable, self._optimizer = trainable, optimizer
        self.held_bytes = held_bytes

    def __call__(self) -> object:
        with torch.enable_grad():
            self._model.train()
            loss = _loss_of(self._model(*self._args, **self._kwargs), self._target, self._spec)
            loss.backward()  # type: ignore[no-untyped-call]
        if self._optimizer is not None:
            self._optimizer.step()
            self._optimizer.zero_grad(set_to_none=True)
        else:
            for tensor in self._trainable:
                tensor.grad = None
        return loss


def run_train_step(
    model: torch.nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any], spec: TrainSpec
) -> None:
    """One real training step where the model is, on copies of its parameters (the test
    still exercises forward, loss, backward and optimizer; the model is left as it was)."""
    _require_a_step(model, spec)
    inventory = Inventory.of(model)
    device = torch.device(device_of(inventory, args))
    with (
        model_left_as_it_was(inventory, restore_values=False),
        train_step_on(model, args, kwargs, device, spec) as step,
    ):
        step()


def _bound(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The model with ``tensors`` in place of its parameters and buffers (tied names
    follow), as ``torch.func.functional_call`` binds them, for as long as the block runs."""
    from torch.nn.utils.stateless import _reparametrize_module

    return _reparametrize_module(model, dict(tensors), tie_weights=True)


def _steady_optimizer(build: Factory, twins: list[torch.Tensor], *, on_meta: bool) -> torch.optim.Optimizer:
    """The optimizer after one step on zero gradients: its state allocated, as in a loop.

    On meta a failed step is raised as it is, so that ``"auto"`` tries real tensors (a fused
    optimizer needs a real device); on real tensors it is the optimizer's failure.
    """
    optimizer = build(twins)
    for tensor in twins:
        if tensor.requires_grad:
            tensor.grad = torch.zeros_like(tensor)
    try:
        with torch.no_grad():
            optimizer.step()
    except Exception as error:
        if on_meta:
            raise
        raise MeasurementError(
            f"the optimizer {type(optimizer).__name__} failed its step "
            f"({type(error).__name__}: {error}); pass another optimizer= or None"
        ) from None
    optimizer.zero_grad(set_to_none=True)
    return optimizer


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return distinct_bytes(
        value
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


def _loss_of(output: Any, target: Any, spec: TrainSpec) -> torch.Tensor:
    """``loss(output, target)``, ``loss(output)``, or the sum of the output's float tensors."""
    if spec.loss is None:
        parts = [
            t
            for t in tree_leaves(output)
            if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad
        ]
        if not parts:
            raise NothingToReduce(
                f"the output ({type(output).__name__}) has no floating-point tensor that depends on "
                "the parameters, so the default loss (the sum of the output's float tensors) has "
                "nothing to reduce; pass loss=, e.g. loss=lambda out: out.logits.sum()"
            )
        loss = parts[0].sum()
        for part in parts[1:]:
            loss = loss + part.sum()
        return loss
    if target is None:
        try:
            loss = spec.loss(output)
        except TypeError as error:  # most often a loss that wants a target: say how to give it
            raise MeasurementError(
                f"loss(output) raised TypeError: {error}; a loss that compares the output with "
                "a target needs target= (it is called as loss(output, target))"
            ) from None
    else:
        loss = spec.loss(output, target)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
        shape = (
            f"a {str(loss.dtype).removeprefix('torch.')} tensor of shape {tuple(loss.shape)}"
            if isinstance(loss, torch.Tensor)
            else type(loss).__name__
        )
        raise MeasurementError(
            f"the loss returned {shape}, not a floating-point scalar; reduce it "
            "(e.g. nn.CrossEntropyLoss() with its default reduction='mean', or .sum())"
        )
    if not loss.requires_grad:
        raise MeasurementError(
            "the loss does not depend on any trainable parameter (no grad_fn): check that the "
            "loss uses the model's output and that the model has parameters with requires_grad=True"
        )
    return loss


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
