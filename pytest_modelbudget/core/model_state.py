"""What a forward pass could change on a model and in the process: snapshotted, then restored.

Measuring must leave the model exactly as it was (DESIGN.md section 2): module
attributes, hooks, parameters and buffers, training flags, ``requires_grad``, and the
global RNG states -- also when the forward raises. Counting and timing both run the
forward inside :func:`model_left_as_it_was`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Inventory:
    """One walk of the module tree: every module with its path, and every distinct
    parameter and buffer once, with the path of the first module that holds it -- so
    tied weights count once (the same rule as ``named_parameters``)."""

    modules: list[tuple[str, torch.nn.Module]]
    parameters: list[tuple[str, torch.Tensor]]
    buffers: list[tuple[str, torch.Tensor]]

    @classmethod
    def of(cls, model: torch.nn.Module) -> Inventory:
        modules = list(model.named_modules())
        return cls(modules, _distinct(modules, "_parameters"), _distinct(modules, "_buffers"))

    def tensors(self) -> list[torch.Tensor]:
        return [t for _, t in self.parameters] + [t for _, t in self.buffers]


def _distinct(modules: list[tuple[str, torch.nn.Module]], kind: str) -> list[tuple[str, torch.Tensor]]:
    seen: set[int] = set()
    found = []
    for path, module in modules:
        for tensor in getattr(module, kind).values():
            if tensor is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                found.append((path, tensor))
    return found


@contextmanager
def model_left_as_it_was(inventory: Inventory, *, restore_values: bool) -> Iterator[None]:
    """Snapshot what a forward could change on the model and the RNGs; restore it after.

    Attributes are restored for every module (a forward that caches a tensor, adds a
    hook or flips ``training`` leaves no trace). Tensor *values* can only change when
    the forward runs on real tensors, so only then are they copied and written back.
    """
    saved_modules = [(module, _snapshot(module)) for _, module in inventory.modules]
    tensors = inventory.tensors()
    requires_grad = [t.requires_grad for t in tensors]
    values = [t.detach().clone() for t in tensors] if restore_values else []
    cpu_rng = torch.get_rng_state()
    cuda_initialized = torch.cuda.is_initialized()  # type: ignore[no-untyped-call]
    cuda_rng = torch.cuda.get_rng_state_all() if cuda_initialized else None
    python_rng = random.getstate()
    try:
        yield
    finally:
        for module, saved in saved_modules:
            _restore(module, saved)
        if restore_values:
            with torch.no_grad():
                for tensor, value in zip(tensors, values, strict=True):
                    tensor.copy_(value)
        for tensor, flag in zip(tensors, requires_grad, strict=True):
            if tensor.requires_grad != flag:
                tensor.requires_grad_(flag)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        random.setstate(python_rng)


# A module's attributes, and for each dict among them (_parameters, _buffers, _modules,
# the hook dicts) that dict and a copy of its contents -- None when it was empty, as
# most hook dicts are. Those dicts are restored in place, not replaced: hook handles
# hold weak references to the very objects.
_Snapshot = tuple[dict[str, Any], list[tuple[dict[Any, Any], dict[Any, Any] | None]]]


def _snapshot(module: torch.nn.Module) -> _Snapshot:
    attributes = vars(module)
    inner = [
        (value, dict(value) if value else None) for value in attributes.values() if isinstance(value, dict)
    ]
    return attributes.copy(), inner


def _restore(module: torch.nn.Module, saved: _Snapshot) -> None:
    attributes, inner = saved
    current = vars(module)
    for key in current.keys() - attributes.keys():
        del current[key]
    current.update(attributes)
    for value, contents in inner:
        if contents is None:
            if value:
                value.clear()
        elif len(value) != len(contents) or any(value.get(k, _MISSING) is not v for k, v in contents.items()):
            value.clear()
            value.update(contents)


_MISSING = object()


# -- the inputs ------------------------------------------------------------------------

# Plain values: nothing inside them a forward could change.
_ATOMS = (str, bytes, int, float, complex, bool, type(None), torch.dtype, torch.device, torch.Size)
_WALKED = 10_000  # objects at most: a cache or a config is small; an object graph may not be


@contextmanager
def inputs_left_as_they_were(inputs: Any, *, restore_values: bool) -> Iterator[None]:
    """Snapshot what a forward could change in its inputs; restore it after, also when it raises.

    A decode step's KV cache is the example: the forward appends the new keys and values to
    the user's cache object (on a count on meta, as meta tensors). Restored are the contents
    of every list and dict and the attributes of every plain object reachable from the inputs
    (a HF ``DynamicCache`` and its layers); with ``restore_values`` (a forward on real
    tensors), also the values of the input tensors it changed in place. Modules are left to
    :func:`model_left_as_it_was`.
    """
    containers: list[tuple[Any, Any]] = []
    tensors: list[tuple[torch.Tensor, int, torch.Tensor | None]] = []
    seen: set[int] = set()
    pending = [inputs]
    while pending and len(seen) < _WALKED:
        value = pending.pop()
        if isinstance(value, _ATOMS) or id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            snapshot = value.detach().clone() if restore_values and not value.is_meta else None
            tensors.append((value, value._version, snapshot))
        elif isinstance(value, list):
            containers.append((value, list(value)))
            pending.extend(value)
        elif isinstance(value, dict):
            containers.append((value, dict(value)))
            pending.extend(value.values())
        elif isinstance(value, tuple):
            pending.extend(value)
        elif isinstance(value, torch.nn.Module) or callable(value) or not hasattr(value, "__dict__"):
            continue
        else:
            attributes = vars(value)
            containers.append((value, dict(attributes)))
            pending.extend(attributes.values())
    try:
        yield
    finally:
        for container, saved in containers:
            if isinstance(container, list):
                container[:] = saved
            else:
                contents = container if isinstance(container, dict) else vars(container)
                contents.clear()
                contents.update(saved)
        with torch.no_grad():
            for tensor, version, snapshot in tensors:
                if snapshot is not None and tensor._version != version:
                    tensor.copy_(snapshot)
