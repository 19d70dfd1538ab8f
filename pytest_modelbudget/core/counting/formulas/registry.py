"""The MAC convention's registry: one formula per op, duplicates refused; the lookup.

The convention lives in this folder, one module per family of ops (:mod:`.dense`,
:mod:`.attention`, :mod:`.experts`, :mod:`.quantized`, and :mod:`.mac_free` for the ops
that do no MACs), all registering here. A MAC is one
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

import sys
from collections.abc import Callable
from typing import Any

import torch

aten = torch.ops.aten

# Bumped whenever a formula changes, so a baseline written by an older counter is
# recognisable in budgets.yaml. (An op that gains a formula -- it was listed as uncounted
# before -- does not change the convention of the ops counted already.)
CONVENTION = "aten-macs/1"

# ``formula(*args, out=first_output, **kwargs) -> MACs``, called with the op's own arguments.
Formula = Callable[..., int]
_FORMULAS: dict[Any, Formula] = {}  # by op packet (torch.ops.aten.mm: every overload)
_BY_NAME: dict[str, Formula] = {}  # by qualified name ("mylib::my_op"): ops of libraries loaded later
# Ops whose arithmetic runs in a dtype their tensor arguments do not show: dynamically
# quantized kernels take float activations and quantize them to int8 inside.
_COMPUTE_DTYPES: dict[Any, str] = {}
# 8-bit integer storage, however it is tagged: what an int8 kernel multiplies in.
_INT8_STORAGE = frozenset({torch.qint8, torch.quint8, torch.int8, torch.uint8})
# Counts registrations, so that what the dispatch mode caches per op is looked up again.
_generation = 0


def generation() -> int:
    return _generation


def _key(op: Any) -> Any:
    """A registry key: the op packet, or the qualified name of an op given by name."""
    if isinstance(op, str):
        if "::" not in op:
            raise ValueError(f"an op given by name is 'namespace::name' (e.g. 'mylib::my_op'), got {op!r}")
        return op
    if isinstance(op, torch._ops.OpOverload):
        return op.overloadpacket
    if isinstance(op, torch._ops.OpOverloadPacket):
        return op
    raise TypeError(f"expected an op ('mylib::my_op', torch.ops.mylib.my_op), got {type(op).__name__}")


def _name_of(key: Any) -> str:
    """``aten::mm`` for the packet aten.mm and for the name "aten::mm" alike."""
    return key if isinstance(key, str) else str(key._qualified_op_name)


def _register(*ops: Any, compute: str | None = None) -> Callable[[Formula], Formula]:
    """Registers a formula for ops (``aten.mm``: every overload; ``"ns::op"`` by name); one each.

    ``compute`` names the dtype the op multiplies in when its arguments do not say it.
    """
    keys = [_key(op) for op in ops]

    def wrap(formula: Formula) -> Formula:
        global _generation
        names = [_name_of(k) for k in keys]
        known = {_name_of(k) for k in (*_FORMULAS, *_BY_NAME)}
        taken = [k for i, (k, n) in enumerate(zip(keys, names, strict=True)) if n in known or n in names[:i]]
        if taken:  # checked before any is added, so a refused registration changes nothing
            shown = ", ".join(_name_of(k).replace("::", ".") for k in taken)  # as ops are listed
            raise RuntimeError(f"duplicate MAC formula registrations for {shown}")
        for key in keys:
            (_BY_NAME if isinstance(key, str) else _FORMULAS)[key] = formula
        if compute is not None:
            _COMPUTE_DTYPES.update(dict.fromkeys(keys, compute))
        _generation += 1
        return formula

    return wrap


def register_mac_formula(op: Any, formula: Formula | None = None, *, compute: str | None = None) -> Any:
    """Give an op -- a custom op, a Triton op, any op the counter lists as uncounted -- a MAC formula.

    ``op`` is ``"namespace::name"`` or a ``torch.ops`` packet or overload; ``formula`` is
    called with the op's arguments (tensors are meta tensors when the count runs on meta)
    and ``out=`` its first output, and returns the op's MACs (0: the op does no MACs).
    Use it as a call or as a decorator::

        @register_mac_formula("mylib::fused_mlp")
        def fused_mlp_macs(x, w1, w2, *, out):
            return x.shape[0] * w1.numel() + x.shape[0] * w2.numel()

    A second formula for the same op is refused, as for the built-in ones. Formulas
    registered with ``torch.utils.flop_counter.register_flop_formula`` count too, as FLOPs / 2.
    """
    if formula is None:
        return _register(op, compute=compute)
    return _register(op, compute=compute)(formula)


def _flop_registered(func: Any) -> Formula | None:
    """A formula registered with ``torch.utils.flop_counter.register_flop_formula`` for an op
    of the user's (a custom or Triton op), as MACs.

    Looked up only when the user's code imported flop_counter (no one can have registered
    one otherwise), so counting never imports it.
    """
    flop_counter = sys.modules.get("torch.utils.flop_counter")
    if flop_counter is None or func.namespace in ("aten", "prims", "quantized"):
        # PyTorch's own ops are the convention's to count, whatever a process imported.
        return None
    flops = flop_counter.flop_registry.get(func.overloadpacket)
    if flops is None:
        return None

    def macs(*args: Any, out: Any = None, **kwargs: Any) -> int:
        return int(flops(*args, out_val=out, **kwargs)) // 2

    return macs


def mac_formula(func: Any) -> Formula | None:
    """The formula for an op overload (``aten.mm.default``): the convention's own, one given by
    name, else a FLOP formula registered with PyTorch; None when the op has none."""
    packet = func.overloadpacket
    found = _FORMULAS.get(packet) or _BY_NAME.get(getattr(packet, "_qualified_op_name", ""))
    return found or _flop_registered(func)


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
