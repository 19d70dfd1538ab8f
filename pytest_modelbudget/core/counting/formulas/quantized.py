"""MACs of torch.ao's quantized kernels (static and dynamic): exactly like the float op each replaces.

They take their weights as packed parameters (a ScriptObject whose ``unpack()`` gives the
int8 weight and the float bias); a dynamically quantized kernel multiplies in a dtype its
arguments do not show (``compute=``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..held import unpacked
from .dense import _conv_macs, _rnn_macs
from .registry import _register

aten = torch.ops.aten
quantized = torch.ops.quantized


def _packed_weight(packed: Any) -> torch.Tensor:
    weight: torch.Tensor = packed.unpack()[0]
    return weight


@_register(
    quantized.conv1d,
    quantized.conv2d,
    quantized.conv3d,
    quantized.conv1d_relu,
    quantized.conv2d_relu,
    quantized.conv3d_relu,
)
def _quantized_conv(x: torch.Tensor, packed: Any, *_: Any, out: torch.Tensor, **__: Any) -> int:
    return _conv_macs(x, _packed_weight(packed), out, transposed=False)


@_register(quantized.conv2d_add, quantized.conv2d_add_relu)
def _quantized_conv_add(
    x: torch.Tensor, accumulated: torch.Tensor, packed: Any, *_: Any, out: torch.Tensor, **__: Any
) -> int:
    # conv(x) + accumulated: the addition is not a MAC.
    return _conv_macs(x, _packed_weight(packed), out, transposed=False)


@_register(quantized.conv_transpose1d, quantized.conv_transpose2d, quantized.conv_transpose3d)
def _quantized_conv_transpose(x: torch.Tensor, packed: Any, *_: Any, out: torch.Tensor, **__: Any) -> int:
    return _conv_macs(x, _packed_weight(packed), out, transposed=True)


def _quantized_linear_macs(x: torch.Tensor, packed: Any) -> int:
    weight = _packed_weight(packed)  # [out_features, in_features]
    return (x.numel() // int(x.shape[-1])) * weight.numel()


@_register(quantized.linear, quantized.linear_relu, quantized.linear_leaky_relu, quantized.linear_tanh)
def _quantized_linear(x: torch.Tensor, packed: Any, *_: Any, **__: Any) -> int:
    return _quantized_linear_macs(x, packed)


@_register(quantized.linear_dynamic, quantized.linear_relu_dynamic, compute="int8")
def _quantized_linear_dynamic(x: torch.Tensor, packed: Any, *_: Any, **__: Any) -> int:
    return _quantized_linear_macs(x, packed)


@_register(quantized.linear_dynamic_fp16, quantized.linear_relu_dynamic_fp16, compute="float16")
def _quantized_linear_dynamic_fp16(x: torch.Tensor, packed: Any, *_: Any, **__: Any) -> int:
    return _quantized_linear_macs(x, packed)


@_register(aten.quantized_lstm, aten.quantized_gru, compute="int8")  # or its dtype= (float16)
def _quantized_rnn(data: torch.Tensor, *args: Any, **__: Any) -> int:
    # .input(input, hx, params, ...) and .data(data, batch_sizes, hx, params, ...): the cell
    # parameters are the first list of ScriptObjects.
    cells = next(
        a for a in args if isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.ScriptObject)
    )
    return _rnn_macs(data.numel() // int(data.shape[-1]), list(unpacked(cells)))
