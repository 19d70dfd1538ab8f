"""A training step: what it is (:class:`TrainSpec`), the stand-ins it runs on, and the real step.

A step never touches the model's own tensors: it runs on *twins* of the parameters, buffers
and inputs (:class:`Twins`: meta tensors for counting, :mod:`.count`; real clones for the
real step), bound to the model as ``torch.func.functional_call`` binds them. The real step
(:func:`train_step_on`) is what timing and the CUDA allocator peak repeat: clones of the
parameters on the device, a fresh optimizer already in its steady state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch.utils._pytree import tree_leaves, tree_map_only

from ...errors import MeasurementError
from ..counting.count import device_of, require_module
from ..model_state import Inventory, model_left_as_it_was
from .memory import distinct_bytes
from .optimizers import Factory, optimizer_factory

__all__ = ["TrainSpec", "run_train_step", "train_step_on"]


@dataclass(frozen=True)
class TrainSpec:
    """What a training step does besides the forward: ``loss(output, target)`` and the optimizer.

    ``loss`` None: the sum of the output's floating-point tensors. ``optimizer`` None:
    forward and backward only. See :func:`~.optimizers.optimizer_factory` for the rest.
    """

    target: Any = None
    loss: Any = None
    optimizer: Any = None


def require_a_step(model: torch.nn.Module, spec: TrainSpec) -> None:
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


def twin(tensor: torch.Tensor, to_meta: bool) -> torch.Tensor:
    """A leaf of the same shape, strides, dtype and ``requires_grad``: meta, or a real clone."""
    if to_meta:
        twin = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device="meta")
    else:
        twin = tensor.detach().clone()
    return twin.requires_grad_(tensor.requires_grad)


class Twins(NamedTuple):
    """The stand-ins a step runs on: parameters and buffers (by name, bound to the model
    with :func:`bound`) and the inputs, target included."""

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
    ) -> Twins:
        # named_parameters() lists a tied tensor once; bound ties its other names.
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
    twins = Twins.of(model, args, kwargs, spec.target, lambda t: twin(t.to(device), False))
    trainable = [t for t in twins.parameters if t.requires_grad]
    optimizer = (
        steady_optimizer(build_optimizer, twins.parameters, on_meta=False) if build_optimizer else None
    )
    held = twins.held_bytes() + (state_bytes(optimizer) if optimizer else 0)
    with bound(model, twins.bound):
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
            loss = loss_of(self._model(*self._args, **self._kwargs), self._target, self._spec)
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
    require_a_step(model, spec)
    inventory = Inventory.of(model)
    device = torch.device(device_of(inventory, args))
    with (
        model_left_as_it_was(inventory, restore_values=False),
        train_step_on(model, args, kwargs, device, spec) as step,
    ):
        step()


def bound(model: torch.nn.Module, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The model with ``tensors`` in place of its parameters and buffers (tied names
    follow), as ``torch.func.functional_call`` binds them, for as long as the block runs."""
    from torch.nn.utils.stateless import _reparametrize_module

    return _reparametrize_module(model, dict(tensors), tie_weights=True)


def steady_optimizer(build: Factory, twins: list[torch.Tensor], *, on_meta: bool) -> torch.optim.Optimizer:
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


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return distinct_bytes(
        value
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )


def loss_of(output: Any, target: Any, spec: TrainSpec) -> torch.Tensor:
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
