"""MACs of the dense families: matmuls (``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``mv``, ``dot``,
``linear``), convolutions and their backward, ``_trilinear`` (nn.Bilinear) and the fused RNN
kernels -- the product of the dimensions of each multiplication; bias additions are not MACs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .registry import _register

aten = torch.ops.aten


def _prod(values: Sequence[int]) -> int:
    return math.prod(int(v) for v in values)


@_register(aten.mm, aten._int_mm)
def _mm(a: torch.Tensor, b: torch.Tensor, *_: Any, **__: Any) -> int:
    return int(a.shape[0]) * int(a.shape[1]) * int(b.shape[1])


@_register(*(getattr(aten, name) for name in ("_scaled_mm", "_scaled_mm_v2") if hasattr(aten, name)))
def _scaled_mm(a: torch.Tensor, b: torch.Tensor, *_: Any, **__: Any) -> int:
    # A float8 (or MX) matmul: its MACs run in the inputs' dtype.
    return _mm(a, b)


@_register(aten.addmm, aten._addmm_activation)
def _addmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *_: Any, **__: Any) -> int:
    return _mm(a, b)


@_register(aten.bmm)
def _bmm(a: torch.Tensor, b: torch.Tensor, *_: Any, **__: Any) -> int:
    return int(a.shape[0]) * int(a.shape[1]) * int(a.shape[2]) * int(b.shape[2])


@_register(aten.baddbmm, aten.addbmm)
def _baddbmm(bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *_: Any, **__: Any) -> int:
    return _bmm(a, b)


@_register(aten.mv)
def _mv(a: torch.Tensor, v: torch.Tensor, *_: Any, **__: Any) -> int:
    return int(a.shape[0]) * int(a.shape[1])


@_register(aten.addmv)
def _addmv(bias: torch.Tensor, a: torch.Tensor, v: torch.Tensor, *_: Any, **__: Any) -> int:
    return _mv(a, v)


@_register(aten.dot, aten.vdot)
def _dot(a: torch.Tensor, b: torch.Tensor, *_: Any, **__: Any) -> int:
    return int(a.shape[0])


@_register(aten.linear)
def _linear(x: torch.Tensor, weight: torch.Tensor, *_: Any, **__: Any) -> int:
    # Usually decomposed into t + addmm before dispatch reaches us; kept for backends
    # that keep it whole.
    return (x.numel() // int(x.shape[-1])) * weight.numel()


def _conv_macs(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, transposed: bool) -> int:
    # weight is [C_out, C_in/groups, *k] (or [C_in, C_out/groups, *k] when transposed),
    # so prod(weight.shape[1:]) is the work per output (per input when transposed).
    per_element = _prod(weight.shape[1:])
    return (x.numel() if transposed else out.numel()) * per_element


@_register(aten.convolution, aten._convolution, aten.convolution_overrideable)
def _convolution(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    transposed: bool,
    *_: Any,
    out: torch.Tensor,
    **__: Any,
) -> int:
    return _conv_macs(x, weight, out, bool(transposed))


@_register(aten.convolution_backward)
def _convolution_backward(
    grad_output: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias_sizes: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    transposed: bool,
    output_padding: Any,
    groups: Any,
    output_mask: Sequence[bool],
    *_: Any,
    **__: Any,
) -> int:
    # The input gradient is the transposed convolution of grad_output with the weight and
    # the weight gradient the correlation of input and grad_output: each as many MACs as
    # the forward. Autograd asks only for the gradients it needs (output_mask): a frozen
    # weight or an input without requires_grad costs nothing. The bias gradient is a sum.
    forward = _conv_macs(x, weight, grad_output, bool(transposed))
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


@_register(
    aten.cudnn_convolution,
    aten.mkldnn_convolution,
    aten.miopen_convolution,
    aten._slow_conv2d_forward,
    aten.thnn_conv2d,
    aten.slow_conv3d,
    aten.slow_conv_dilated2d,
    aten.slow_conv_dilated3d,
    aten._nnpack_spatial_convolution,
)
def _direct_convolution(x: torch.Tensor, weight: torch.Tensor, *_: Any, out: torch.Tensor, **__: Any) -> int:
    return _conv_macs(x, weight, out, transposed=False)


@_register(
    aten.cudnn_convolution_transpose,
    aten.miopen_convolution_transpose,
    aten.slow_conv_transpose2d,
    aten.slow_conv_transpose3d,
)
def _direct_transposed_convolution(
    x: torch.Tensor, weight: torch.Tensor, *_: Any, out: torch.Tensor, **__: Any
) -> int:
    return _conv_macs(x, weight, out, transposed=True)


@_register(aten._trilinear)
def _trilinear(
    i1: torch.Tensor,
    i2: torch.Tensor,
    i3: torch.Tensor,
    expand1: Sequence[int],
    expand2: Sequence[int],
    expand3: Sequence[int],
    *_: Any,
    **__: Any,
) -> int:
    # nn.Bilinear's kernel: each input is unsqueezed at its expand dims, the three are
    # multiplied over their common broadcast shape and summed over some dims. One MAC
    # per point of that shape: ``batch * out * in1 * in2`` for nn.Bilinear.
    def expanded(t: torch.Tensor, dims: Sequence[int]) -> list[int]:
        shape = [int(s) for s in t.shape]
        for dim in sorted(dims):
            shape.insert(dim, 1)
        return shape

    # All three have the same rank once expanded; each dim is 1 or the common size.
    shapes = [expanded(t, d) for t, d in ((i1, expand1), (i2, expand2), (i3, expand3))]
    return math.prod(max(sizes) for sizes in zip(*shapes, strict=True))


def _rnn_macs(tokens: int, weights: Sequence[Any]) -> int:
    # Each 2-D weight (input-hidden, hidden-hidden, projection) is applied once per
    # token and direction; biases are additions, not MACs.
    return tokens * sum(w.numel() for w in weights if isinstance(w, torch.Tensor) and w.dim() == 2)


@_register(aten.mkldnn_rnn_layer)
def _mkldnn_rnn_layer(x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, *_: Any, **__: Any) -> int:
    return _rnn_macs(x.numel() // int(x.shape[-1]), [w_ih, w_hh])


@_register(aten._cudnn_rnn, aten.miopen_rnn)
def _cudnn_rnn(x: torch.Tensor, weights: Sequence[Any], *_: Any, **__: Any) -> int:
    return _rnn_macs(x.numel() // int(x.shape[-1]), weights)
