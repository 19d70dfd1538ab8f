"""The MAC convention: which ops multiply-accumulate, and how many times (docs/reference.md).

One registry (:mod:`.registry`) with a formula per op, duplicates refused, filled by one
module per family of ops: :mod:`.dense` (matmuls, convolutions, RNNs), :mod:`.attention`,
:mod:`.experts` (mixture-of-experts grouped matmuls), :mod:`.quantized` (torch.ao); the ops
that do no MACs are :mod:`.mac_free`'s. Users add formulas for their own ops with
:func:`~.registry.register_mac_formula`.
"""

from . import attention, dense, experts, quantized  # noqa: F401  (they register their formulas)
from .mac_free import is_mac_free
from .registry import CONVENTION, Formula, compute_dtype, mac_formula, register_mac_formula

__all__ = ["CONVENTION", "Formula", "compute_dtype", "is_mac_free", "mac_formula", "register_mac_formula"]
