"""The MAC convention: which ATen ops multiply-accumulate, and how many times.

This module is the single place where the convention lives. A MAC is one
multiply-accumulate of a convolution, a linear/matmul-family op or attention,
counted on the op's shapes at the ATen dispatch level:

* convolution: ``numel(output) * (C_in / groups) * prod(kernel)``; transposed
  convolutions swap the roles of input and output;
* ``mm``/``addmm``/``bmm``/``baddbmm``/``mv``/``dot``: the product of the
  dimensions (bias additions are not MACs);
* attention kernels: ``Q @ K^T`` plus ``P @ V`` at full (dense) size, whatever the
  mask or ``is_causal`` -- the math backend and the meta device compute it that way, so
  every backend gets the same count;
* fused kernels (``_native_multi_head_attention``, ``_transformer_encoder_layer_fwd``,
  ``mkldnn_rnn_layer``, ``_cudnn_rnn``) count exactly the matmuls their unfused
  decomposition would.

Everything else is either known to do no MACs (pointwise, normalisation, pooling,
reductions, data movement -- :func:`.mac_free.is_mac_free`) or *uncounted*: listed in the
measurement so nobody mistakes "no formula" for "no work".

This is the convention behind torchvision's published ``weights.meta["_ops"]``; FLOPs
are ``2 * MACs``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .held import unpacked

aten = torch.ops.aten

# Bumped whenever a formula changes, so a baseline written by an older counter is
# recognisable in budgets.yaml.
CONVENTION = "aten-macs/1"

Formula = Callable[..., int]
_FORMULAS: dict[Any, Formula] = {}
# Ops whose arithmetic runs in a dtype their tensor arguments do not show: dynamically
# quantized kernels take float activations and quantize them to int8 inside.
_COMPUTE_DTYPES: dict[Any, str] = {}


def _register(*packets: Any, compute: str | None = None) -> Callable[[Formula], Formula]:
    """Registers a formula for op packets (``aten.mm``: every overload); one per packet.

    ``compute`` names the dtype the op multiplies in when its arguments do not say it.
    """

    def wrap(formula: Formula) -> Formula:
        taken = [p for i, p in enumerate(packets) if p in _FORMULAS or p in packets[:i]]
        if taken:  # checked before any is added, so a refused registration changes nothing
            raise RuntimeError(f"duplicate MAC formula registrations for {', '.join(map(str, taken))}")
        _FORMULAS.update(dict.fromkeys(packets, formula))
        if compute is not None:
            _COMPUTE_DTYPES.update(dict.fromkeys(packets, compute))
        return formula

    return wrap


def _prod(values: Sequence[int]) -> int:
    return math.prod(int(v) for v in values)


@_register(aten.mm, aten._int_mm)
def _mm(a: torch.Tensor, b: torch.Tensor, *_: Any, **__: Any) -> int:
    return int(a.shape[0]) * int(a.shape[1]) * int(b.shape[1])


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


def _attention(batch_heads: int, q_len: int, kv_len: int, qk_dim: int, v_dim: int) -> int:
    # Q @ K^T then P @ V, dense.
    return batch_heads * q_len * kv_len * (qk_dim + v_dim)


@_register(
    aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_flash_attention_for_cpu,
    aten._scaled_dot_product_efficient_attention,
    aten._scaled_dot_product_cudnn_attention,
    aten._scaled_dot_product_fused_attention_overrideable,
)
def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *_: Any, **__: Any) -> int:
    # Layout [..., heads, seq, dim]; with GQA, K/V have fewer heads than Q but every
    # query head still attends over the full key length.
    batch_heads = q.numel() // (int(q.shape[-2]) * int(q.shape[-1]))
    return _attention(batch_heads, int(q.shape[-2]), int(k.shape[-2]), int(q.shape[-1]), int(v.shape[-1]))


@_register(
    aten._scaled_dot_product_flash_attention_backward,
    aten._scaled_dot_product_flash_attention_for_cpu_backward,
    aten._scaled_dot_product_cudnn_attention_backward,
    aten._scaled_dot_product_fused_attention_overrideable_backward,
)
def _sdpa_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *_: Any, **__: Any
) -> int:
    # dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q: the forward's two products twice,
    # what autograd runs for the explicit-matmul twin (a fused kernel's recompute of P is
    # not counted, as FlopCounterMode does not).
    return 2 * _sdpa(q, k, v)


@_register(aten._scaled_dot_product_efficient_attention_backward)
def _sdpa_efficient_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *_: Any, **__: Any
) -> int:
    return 2 * _sdpa(q, k, v)


@_register(aten._flash_attention_backward, aten._efficient_attention_backward)
def _attention_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *_: Any, **__: Any
) -> int:
    return 2 * _attention_forward(q, k, v)


@_register(aten._flash_attention_forward, aten._efficient_attention_forward)
def _attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *_: Any, **__: Any) -> int:
    # These low-level kernels take [batch, seq, heads, dim].
    batch, q_len, heads, qk_dim = (int(s) for s in q.shape)
    return _attention(batch * heads, q_len, int(k.shape[1]), qk_dim, int(v.shape[-1]))


@_register(aten._native_multi_head_attention)
def _native_mha(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    embed_dim: int,
    num_heads: int,
    qkv_weight: torch.Tensor,
    *_: Any,
    **__: Any,
) -> int:
    # nn.MultiheadAttention's inference fast path: in-projection, attention, out-projection.
    tokens_q = query.numel() // int(query.shape[-1])
    tokens_k = key.numel() // int(key.shape[-1])
    tokens_v = value.numel() // int(value.shape[-1])
    e = int(embed_dim)
    projections = (tokens_q + tokens_k + tokens_v) * e * e + tokens_q * e * e
    batch = tokens_q // int(query.shape[-2])
    attention = _attention(batch, int(query.shape[-2]), int(key.shape[-2]), e, e)
    return projections + attention


@_register(aten._transformer_encoder_layer_fwd)
def _encoder_layer(
    src: torch.Tensor,
    embed_dim: int,
    num_heads: int,
    qkv_weight: torch.Tensor,
    qkv_bias: torch.Tensor,
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor,
    use_gelu: bool,
    norm_first: bool,
    eps: float,
    norm_weight_1: torch.Tensor,
    norm_bias_1: torch.Tensor,
    norm_weight_2: torch.Tensor,
    norm_bias_2: torch.Tensor,
    ffn_weight_1: torch.Tensor,
    *_: Any,
    **__: Any,
) -> int:
    # nn.TransformerEncoderLayer's fast path: self-attention block plus a two-layer MLP.
    tokens = src.numel() // int(src.shape[-1])
    e = int(embed_dim)
    seq = int(src.shape[-2])
    attention = 4 * tokens * e * e + _attention(tokens // seq, seq, seq, e, e)
    feedforward = 2 * tokens * e * int(ffn_weight_1.shape[0])
    return attention + feedforward


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


# -- quantized kernels (torch.ao: static and dynamic) ---------------------------------
#
# They take their weights as packed parameters (a ScriptObject whose ``unpack()`` gives
# the int8 weight and the float bias) and count exactly like the float op they replace.

quantized = torch.ops.quantized

# 8-bit integer storage, however it is tagged: what an int8 kernel multiplies in.
_INT8_STORAGE = frozenset({torch.qint8, torch.quint8, torch.int8, torch.uint8})


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


def mac_formula(func: Any) -> Formula | None:
    """The formula for an op overload (``aten.mm.default``), or None."""
    return _FORMULAS.get(func.overloadpacket)


def compute_dtype(func: Any, first_input: torch.Tensor | None, dtype: Any = None) -> str:
    """The dtype a MAC-counting op multiplies in: its own when registered, else its first input's.

    8-bit integer storage (``qint8``, ``quint8``, ``int8``, ``uint8``) is ``int8``: an int8
    kernel whatever the tensor is tagged. ``dtype`` is the op's own ``dtype=`` argument, if any.
    """
    declared = _COMPUTE_DTYPES.get(func.overloadpacket)
    if declared is not None:
        # Dynamic RNN kernels name their own dtype: qint8 (int8) or float16.
        if dtype is not None and dtype != torch.qint8:
            return str(dtype).removeprefix("torch.")
        return declared
    if first_input is None:
        return "none"
    if first_input.dtype in _INT8_STORAGE:
        return "int8"
    return str(first_input.dtype).removeprefix("torch.")
