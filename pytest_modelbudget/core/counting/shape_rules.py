"""Output metadata of the hottest ATen ops on meta tensors, without running their meta kernels.

Counting on the meta device runs an op's meta kernel once per distinct signature (see
``dispatch.CountingMode``). Many of those kernels are Python decompositions -- batch norm,
activations, matmuls, convolution -- that cost 0.1 to 3 ms per call, which is most of what
a count of a convolutional network costs. For the common, unambiguous cases the rules here
give the same outputs (shape, strides, dtype) directly. Anything else -- mixed dtypes,
unusual layouts, arguments a kernel would reject -- makes a rule return None, and the real
meta kernel runs, so error messages and corner cases stay torch's.

tests/test_counting_ops.py checks every rule against the meta kernel it stands in for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

aten = torch.ops.aten

Rule = Callable[..., Any]
_RULES: dict[Any, Rule] = {}


def _rule(*overloads: Any) -> Callable[[Rule], Rule]:
    """Registers a rule for ATen overloads (``aten.mm.default``); one rule per overload."""

    def wrap(rule: Rule) -> Rule:
        taken = [o for i, o in enumerate(overloads) if o in _RULES or o in overloads[:i]]
        if taken:  # checked before any is added, so a refused registration changes nothing
            raise RuntimeError(f"duplicate shape rule registrations for {', '.join(map(str, taken))}")
        _RULES.update(dict.fromkeys(overloads, rule))
        return rule

    return wrap


def meta_outputs(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """What ``func(*args, **kwargs)`` returns on meta tensors, or None when no rule applies."""
    rule = _RULES.get(func)
    if rule is None:
        return None
    try:
        return rule(*args, **kwargs)
    except TypeError:  # an argument spelled in a way the rule does not take: ask the kernel
        return None


def overloads_with_rules() -> frozenset[Any]:
    return frozenset(_RULES)


# --- layouts -------------------------------------------------------------------------


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(int(size), 1)
    return tuple(reversed(strides))


def _channels_last_strides(shape: Sequence[int]) -> tuple[int, ...]:
    # Channels innermost, then the spatial dims from last to first, then batch: the
    # order torch.channels_last / channels_last_3d lay memory out in.
    strides = [0] * len(shape)
    step = 1
    for dim in (1, *range(len(shape) - 1, 1, -1), 0):
        strides[dim] = step
        step *= max(int(shape[dim]), 1)
    return tuple(strides)


def _dense_strides(tensor: torch.Tensor) -> tuple[int, ...] | None:
    """The tensor's strides when they are exactly the canonical contiguous or
    channels-last ones -- the layouts whose outputs every kernel here lays out the same
    way as its input. None for anything else (slices, odd strides on size-1 dims...)."""
    stride = tensor.stride()
    shape = tensor.shape
    if stride == contiguous_strides(shape):
        return stride
    if len(shape) in (4, 5) and stride == _channels_last_strides(shape):
        return stride
    return None


def _is_contiguous(tensor: torch.Tensor) -> bool:
    return tensor.stride() == contiguous_strides(tensor.shape)


def _empty(shape: Sequence[int], strides: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty_strided(tuple(shape), tuple(strides), dtype=dtype, device="meta")


def _like(tensor: torch.Tensor, strides: Sequence[int]) -> torch.Tensor:
    return _empty(tensor.shape, strides, tensor.dtype)


def _broadcastable_to(shape: Sequence[int], target: Sequence[int]) -> bool:
    if len(shape) > len(target):
        return False
    return all(
        s in (1, t)
        for s, t in zip(reversed(shape), reversed(target[len(target) - len(shape) :]), strict=True)
    )


def _broadcast(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...] | None:
    """The broadcast shape of two shapes, or None when they do not broadcast."""
    ndim = max(len(a), len(b))
    a = (1,) * (ndim - len(a)) + tuple(a)
    b = (1,) * (ndim - len(b)) + tuple(b)
    if any(x != y and 1 not in (x, y) for x, y in zip(a, b, strict=True)):
        return None
    return tuple(max(x, y) if 0 not in (x, y) else 0 for x, y in zip(a, b, strict=True))


# --- pointwise -----------------------------------------------------------------------

# Activations and other unary ops that map a floating tensor to one of the same dtype,
# shape and layout; in place, they return their input unchanged in metadata.
_UNARY = """
    relu sigmoid hardsigmoid hardswish silu gelu tanh hardtanh leaky_relu elu mish
    neg exp sqrt rsqrt clamp clamp_min clamp_max
""".split()


def _unary_strides(x: Any, *rest: Any, **options: Any) -> tuple[int, ...] | None:
    """The result's strides when ``x`` is the op's only tensor, floating, and densely
    laid out: the result then has x's dtype, shape and strides."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return None
    if any(isinstance(v, torch.Tensor) for v in (*rest, *options.values())):
        return None
    return _dense_strides(x)


def _unary(x: Any, *rest: Any, **options: Any) -> torch.Tensor | None:
    strides = _unary_strides(x, *rest, **options)
    return None if strides is None else _like(x, strides)


def _unary_inplace(x: Any, *rest: Any, **options: Any) -> torch.Tensor | None:
    return None if _unary_strides(x, *rest, **options) is None else x


for _name in _UNARY:
    _rule(getattr(aten, _name).default)(_unary)
    _rule(getattr(aten, _name + "_").default)(_unary_inplace)
# With a Python number for the other operand, a floating tensor keeps its dtype.
_rule(aten.add.Scalar, aten.sub.Scalar, aten.mul.Scalar, aten.div.Scalar)(_unary)
_rule(aten.add_.Scalar, aten.sub_.Scalar, aten.mul_.Scalar, aten.div_.Scalar)(_unary_inplace)


@_rule(aten.masked_fill.Scalar)
def _masked_fill(x: Any, mask: Any, value: Any) -> torch.Tensor | None:
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        return None
    if not _broadcastable_to(mask.shape, x.shape):
        return None
    # Its kernel (like softmax's) returns a contiguous result even for channels-last input.
    return _unary(x) if _is_contiguous(x) else None


@_rule(aten._softmax.default, aten._log_softmax.default)
def _softmax(x: Any, dim: int, half_to_float: bool) -> torch.Tensor | None:
    if half_to_float or not _is_contiguous(x) or not -max(x.dim(), 1) <= dim < max(x.dim(), 1):
        return None
    return _unary(x)


@_rule(aten._safe_softmax.default)
def _safe_softmax(x: Any, dim: int, dtype: Any = None) -> torch.Tensor | None:
    return None if dtype is not None else _softmax(x, dim, False)


@_rule(aten.roll.default)
def _roll(x: Any, shifts: Sequence[int], dims: Sequence[int] = ()) -> torch.Tensor | None:
    # Swin's shifted windows; the (decomposed) kernel returns a contiguous copy.
    if not isinstance(x, torch.Tensor) or not _is_contiguous(x) or len(shifts) != len(dims):
        return None
    if any(not -x.dim() <= d < x.dim() for d in dims):
        return None
    return _like(x, x.stride())


def _binary_layout(a: Any, b: Any) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(shape, strides) of a binary pointwise result in the unambiguous cases.

    Both operands are floating tensors of one dtype; those with the full (broadcast)
    shape share one canonical layout, which the result takes; a broadcast operand is
    plainly contiguous. Those are the cases where torch's stride rules cannot pick
    anything else.
    """
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return None
    if a.dtype != b.dtype or not a.is_floating_point():
        return None
    shape = _broadcast(a.shape, b.shape)
    if shape is None:  # the kernel raises, with its own message
        return None
    full = [t for t in (a, b) if tuple(t.shape) == shape]
    if not full:
        return None
    strides = _dense_strides(full[0])
    if strides is None or any(t.stride() != strides for t in full[1:]):
        return None
    if any(tuple(t.shape) != shape and not _is_contiguous(t) for t in (a, b)):
        return None
    return shape, strides


@_rule(aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor)
def _binary(a: Any, b: Any, *, alpha: Any = 1, rounding_mode: Any = None) -> torch.Tensor | None:
    if rounding_mode is not None:
        return None
    layout = _binary_layout(a, b)
    return None if layout is None else _empty(*layout, a.dtype)


@_rule(aten.add_.Tensor, aten.sub_.Tensor, aten.mul_.Tensor, aten.div_.Tensor)
def _binary_inplace(a: Any, b: Any, *, alpha: Any = 1, rounding_mode: Any = None) -> torch.Tensor | None:
    # In place the result is ``a``; it is valid when ``b`` broadcasts to a's shape.
    if rounding_mode is not None:
        return None
    layout = _binary_layout(a, b)
    return a if layout is not None and layout[0] == tuple(a.shape) else None


# --- normalisation -------------------------------------------------------------------


def _statistics_dtype(dtype: torch.dtype) -> torch.dtype:
    # Means and inverse standard deviations are kept in float32 for reduced precisions.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _per_channel(tensors: Sequence[Any], shape: Sequence[int]) -> bool:
    """Whether each optional affine/statistics tensor has exactly ``shape`` (the kernels
    reject any other -- a BatchNorm2d(64) fed 32 channels must fail, not count)."""
    return all(t is None or (isinstance(t, torch.Tensor) and tuple(t.shape) == tuple(shape)) for t in tensors)


def _batch_norm(x: Any, per_channel: Sequence[Any], training: bool) -> tuple[torch.Tensor, ...] | None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        return None
    if not _per_channel(per_channel, (x.shape[1],)):
        return None
    strides = _dense_strides(x)
    if strides is None:
        return None
    if training and x.numel() // max(int(x.shape[1]), 1) <= 1:
        return None  # one value per channel: the kernel raises
    # The saved statistics exist only in training. In eval the CPU and CUDA kernels
    # return empty ones, and so does this rule -- the meta kernel returns per-channel
    # ones, which would count as memory traffic that no real run has.
    channels = (int(x.shape[1]) if training else 0,)
    statistics = _statistics_dtype(x.dtype)
    return (_like(x, strides), _empty(channels, (1,), statistics), _empty(channels, (1,), statistics))


@_rule(aten.native_batch_norm.default, aten._native_batch_norm_legit.default)
def _native_batch_norm(
    x: Any, weight: Any, bias: Any, mean: Any, var: Any, training: bool, *_: Any
) -> tuple[torch.Tensor, ...] | None:
    return _batch_norm(x, (weight, bias, mean, var), bool(training))


@_rule(aten._native_batch_norm_legit_no_training.default)
def _batch_norm_no_training(
    x: Any, weight: Any, bias: Any, mean: Any, var: Any, *_: Any
) -> tuple[torch.Tensor, ...] | None:
    return _batch_norm(x, (weight, bias, mean, var), training=False)


@_rule(aten.native_layer_norm.default)
def _layer_norm(
    x: Any, normalized_shape: Sequence[int], weight: Any = None, bias: Any = None, *_: Any
) -> tuple[torch.Tensor, ...] | None:
    # The output is laid out contiguously whatever the input's layout (ConvNeXt feeds
    # it permuted tensors).
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return None
    axis = x.dim() - len(normalized_shape)
    if axis < 0 or tuple(x.shape[axis:]) != tuple(normalized_shape):
        return None
    if not _per_channel((weight, bias), normalized_shape):
        return None
    stats_shape = (*x.shape[:axis], *([1] * len(normalized_shape)))
    statistics = _statistics_dtype(x.dtype)
    stats_strides = contiguous_strides(stats_shape)
    return (
        _like(x, contiguous_strides(x.shape)),
        _empty(stats_shape, stats_strides, statistics),
        _empty(stats_shape, stats_strides, statistics),
    )


# --- matmuls and convolution ---------------------------------------------------------


def _same_floating_dtype(*tensors: Any) -> torch.dtype | None:
    if not all(isinstance(t, torch.Tensor) for t in tensors):
        return None
    dtype = tensors[0].dtype
    if not dtype.is_floating_point or any(t.dtype != dtype for t in tensors):
        return None
    return dtype  # type: ignore[no-any-return]


def _matmul_out(shape: tuple[int, ...], dtype: torch.dtype | None) -> torch.Tensor | None:
    return None if dtype is None else _empty(shape, contiguous_strides(shape), dtype)


@_rule(aten.mm.default)
def _mm(a: Any, b: Any) -> torch.Tensor | None:
    dtype = _same_floating_dtype(a, b)
    if dtype is None or a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        return None
    return _matmul_out((int(a.shape[0]), int(b.shape[1])), dtype)


@_rule(aten.addmm.default)
def _addmm(bias: Any, a: Any, b: Any, *, beta: Any = 1, alpha: Any = 1) -> torch.Tensor | None:
    out = _mm(a, b)
    if out is None or _same_floating_dtype(bias, a) is None:
        return None
    return out if _broadcastable_to(bias.shape, out.shape) else None


@_rule(aten.bmm.default)
def _bmm(a: Any, b: Any) -> torch.Tensor | None:
    dtype = _same_floating_dtype(a, b)
    if dtype is None or a.dim() != 3 or b.dim() != 3:
        return None
    if a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        return None
    return _matmul_out((int(a.shape[0]), int(a.shape[1]), int(b.shape[2])), dtype)


@_rule(aten._grouped_mm.default)
def _grouped_mm(
    a: Any, b: Any, offs: Any = None, bias: Any = None, out_dtype: Any = None
) -> torch.Tensor | None:
    # Not a shortcut but a stand-in: the meta kernel checks the dtypes the CUDA kernel takes
    # (bfloat16, float16) and refuses float32, which the CPU kernel multiplies (a float32
    # mixture-of-experts model). The output is the meta kernel's own, for any float dtype.
    dtype = _same_floating_dtype(a, b)
    if dtype is None or bias is not None or out_dtype not in (None, dtype):
        return None
    if a.dim() not in (2, 3) or b.dim() not in (2, 3) or ((a.dim() == 2 or b.dim() == 2) and offs is None):
        return None
    if a.dim() == 3 and b.dim() == 3 and (offs is not None or a.shape[0] != b.shape[0]):
        return None
    if not (a.dim() == 2 and b.dim() == 2) and a.shape[-1] != b.shape[-2]:
        return None
    from torch._meta_registrations import _create_grouped_mm_output_tensor

    return _create_grouped_mm_output_tensor(a, b, offs, dtype)  # type: ignore[no-untyped-call,no-any-return]


@_rule(aten.baddbmm.default)
def _baddbmm(bias: Any, a: Any, b: Any, *, beta: Any = 1, alpha: Any = 1) -> torch.Tensor | None:
    out = _bmm(a, b)
    if out is None or _same_floating_dtype(bias, a) is None:
        return None
    return out if _broadcastable_to(bias.shape, out.shape) else None


@_rule(aten.convolution.default)
def _convolution(
    x: Any,
    weight: Any,
    bias: Any,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    output_padding: Sequence[int],
    groups: int,
) -> torch.Tensor | None:
    # Forward (not transposed) convolutions; the meta kernel lays the output out
    # contiguously whatever the input's layout, since meta tensors carry no backend.
    if transposed or _same_floating_dtype(x, weight) is None:
        return None
    if bias is not None and (
        _same_floating_dtype(bias, x) is None or tuple(bias.shape) != (weight.shape[0],)
    ):
        return None
    spatial = x.dim() - 2
    if spatial < 1 or weight.dim() != x.dim():
        return None
    if not len(stride) == len(padding) == len(dilation) == spatial:
        return None
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        return None
    if int(weight.shape[1]) * int(groups) != int(x.shape[1]):
        return None
    shape = [int(x.shape[0]), int(weight.shape[0])]
    for size, kernel, s, p, d in zip(x.shape[2:], weight.shape[2:], stride, padding, dilation, strict=True):
        reach = d * (int(kernel) - 1) + 1
        if int(size) + 2 * p < reach:
            return None  # kernel larger than the padded input: the kernel raises
        shape.append((int(size) + 2 * p - reach) // s + 1)
    return _empty(shape, contiguous_strides(shape), x.dtype)


# --- data movement -------------------------------------------------------------------


@_rule(aten.cat.default)
def _cat(tensors: Sequence[Any], dim: int = 0) -> torch.Tensor | None:
    # DenseNet concatenates ever longer lists: every call a new signature.
    if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):
        return None
    first = tensors[0]
    ndim = first.dim()
    if ndim == 0 or not -ndim <= dim < ndim:
        return None
    dim %= ndim
    if any(t.dtype != first.dtype or t.dim() != ndim or not _is_contiguous(t) for t in tensors):
        return None
    rest = [s for i, s in enumerate(first.shape) if i != dim]
    if any([s for i, s in enumerate(t.shape) if i != dim] != rest for t in tensors[1:]):
        return None
    shape = list(first.shape)
    shape[dim] = sum(int(t.shape[dim]) for t in tensors)
    return _empty(shape, contiguous_strides(shape), first.dtype)


# --- reductions ----------------------------------------------------------------------


@_rule(aten.mean.dim)
def _mean(
    x: Any, dim: Sequence[int] | None, keepdim: bool = False, *, dtype: Any = None
) -> torch.Tensor | None:
    if dtype is not None or not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return None
    if not dim or not _is_contiguous(x):
        return None
    ndim = x.dim()
    if any(not -ndim <= d < ndim for d in dim):
        return None
    reduced = {d % ndim for d in dim}
    if len(reduced) != len(dim):
        return None
    if keepdim:
        shape = [1 if i in reduced else int(s) for i, s in enumerate(x.shape)]
    else:
        shape = [int(s) for i, s in enumerate(x.shape) if i not in reduced]
    return _empty(shape, contiguous_strides(shape), x.dtype)
