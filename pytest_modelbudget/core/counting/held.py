"""What a model really holds: the tensors behind packed parameters and tensor subclasses.

Two kinds of quantized model keep their weights where ``parameters()`` does not look, or
in a shape that hides their bytes:

* ``torch.ao`` quantized modules (static and dynamic: what torchvision's quantized models
  and ``quantize_dynamic`` produce) hold their int8 weights and float biases in *packed
  parameters*, ScriptObjects that ``unpack()`` (conv, linear) or carry them in their
  state (the cells of a quantized LSTM/GRU);
* torchao's tensor subclasses are ``Parameter``s whose logical dtype is float32 while
  their data is int8 (or int4, float8) plus scales and zero points, reachable through
  ``__tensor_flatten__``.

:func:`packed_tensors` finds the first kind, :func:`storage_bytes` prices any tensor by the
bytes it really holds, by storage dtype. Counting params and size (:mod:`.count`) uses
both, so a quantized model is counted like its float twin and sized by what it stores;
:func:`has_subclass_weights` tells a count that the second kind is best run where it is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass


def unpacked(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor a packed-parameter ScriptObject (or a list of them) holds."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, torch.ScriptObject):
        packed: Any = value  # its methods are bound at run time, unknown to type checkers
        if packed._has_method("unpack"):  # conv and linear packed params: (weight, bias)
            yield from unpacked(packed.unpack())
        elif packed._has_method("__getstate__"):  # e.g. the cells of a quantized LSTM
            yield from unpacked(packed.__getstate__())
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from unpacked(item)


# Why a model with tensor-subclass weights is counted on its own device under "auto".
SUBCLASS_WEIGHTS = (
    "its weights are tensor subclasses (torchao), whose kernels are picked by the device "
    "they run on: counted on that device"
)


def has_subclass_weights(model: torch.nn.Module) -> bool:
    """Whether some parameter is a tensor subclass (torchao's quantized and float8 weights).

    Such a subclass chooses its kernel by the device its data is on (torchao's int8 matmul
    runs ``_int_mm`` on the CPU and an int32 fallback elsewhere), so a meta run may take
    another path than the model's own device and count other ops and dtypes.
    """
    return any(is_traceable_wrapper_subclass(p) for p in model.parameters())


def packed_tensors(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(module path, tensor) of every weight and bias held in packed parameters, each once.

    A packed parameter is attributed to the module that uses it: a ``LinearPackedParams``
    helper module counts for its parent ``Linear``.
    """
    found: list[tuple[str, torch.Tensor]] = []
    seen_objects: set[int] = set()
    seen_tensors: set[int] = set()
    modules = dict(model.named_modules())
    for path, module in modules.items():
        owner = _owner(path, modules)
        for value in vars(module).values():
            candidates = value if isinstance(value, list) else [value]
            for candidate in candidates:
                if not isinstance(candidate, torch.ScriptObject) or id(candidate) in seen_objects:
                    continue
                seen_objects.add(id(candidate))
                for tensor in unpacked(candidate):
                    if tensor is not None and id(tensor) not in seen_tensors:
                        seen_tensors.add(id(tensor))
                        found.append((owner, tensor))
    return found


# Modules that only hold another module's packed parameters (and the lists of them).
_HOLDERS = ("PackedParams", "PackedParameter", "ModuleList")


def _owner(path: str, modules: dict[str, torch.nn.Module]) -> str:
    """The module a packed parameter belongs to: ``lstm`` for ``lstm._all_weight_values.0``."""
    while path and type(modules[path]).__name__.endswith(_HOLDERS):
        path = path.rpartition(".")[0]
    return path


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def storage_bytes(tensor: torch.Tensor) -> Counter[str]:
    """Bytes the tensor holds, by storage dtype.

    A tensor subclass (torchao) is priced by its inner tensors; a quantized tensor by its
    integer data plus its scales and zero points (per channel: tensors; per tensor: one
    float64 and one int64).
    """
    held: Counter[str] = Counter()
    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        for name in names:
            inner = getattr(tensor, name)
            if isinstance(inner, torch.Tensor):
                held += storage_bytes(inner)
        return held
    held[_dtype_name(tensor.dtype)] += tensor.numel() * tensor.element_size()
    if tensor.is_quantized:
        if tensor.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            scales, zero_points = tensor.q_per_channel_scales(), tensor.q_per_channel_zero_points()
            held[_dtype_name(scales.dtype)] += scales.numel() * scales.element_size()
            held[_dtype_name(zero_points.dtype)] += zero_points.numel() * zero_points.element_size()
        else:
            held["float64"] += 8
            held["int64"] += 8
    return held
