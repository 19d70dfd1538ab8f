"""What the counter knows about an ATen overload, whatever its arguments: :class:`OpInfo`.

Its name, MAC formula, whether it moves data, how a cached meta call rebuilds its output,
and which arguments it writes into -- facts of the schema and the formula registry, looked up
once per process (:func:`op_info`) and dropped when a formula is registered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .formulas import Formula, is_mac_free, mac_formula
from .formulas.registry import generation as formula_generation

# Ops that produce their result without moving data: allocation, aliasing, and views
# that are not flagged as views (``_unsafe_view``) or change a tensor's view in place.
_NO_TRAFFIC = frozenset(
    """
    empty empty_strided empty_like new_empty new_empty_strided detach alias lift_fresh
    _unsafe_view _reshape_alias resize_ set_
    """.split()
)


@dataclass(frozen=True)
class OpInfo:
    """What the counter needs to know about an ATen overload, whatever its arguments."""

    name: str
    formula: Formula | None
    mac_free: bool
    moves_data: bool
    # How a cached meta call rebuilds its output. "fresh": outputs are new tensors,
    # rebuilt from a template. An int: the op is in place and returns that argument
    # (relu_, add_); on meta the argument itself is the result. None: not cacheable
    # (views, ops that change an argument's shape in place, out= variants).
    plan: int | str | None
    mutated: tuple[int, ...] = ()  # positions of the arguments it writes into (index_put_, copy_)


# Per-overload facts (schema, tags, formula lookup), not per-model results: computing
# them once per process saves a few microseconds per op call and changes no count.
_OP_INFO: dict[Any, OpInfo] = {}


_OP_INFO_GENERATION = [formula_generation()]  # the registry's, when _OP_INFO was filled


def op_info(func: Any) -> OpInfo:
    if _OP_INFO_GENERATION[0] != formula_generation():  # a formula was registered since
        _OP_INFO.clear()
        _OP_INFO_GENERATION[0] = formula_generation()
    info = _OP_INFO.get(func)
    if info is None:
        name = func.overloadpacket.__name__
        inplace_view = torch.Tag.inplace_view in func.tags
        info = OpInfo(
            name=str(func.overloadpacket),
            formula=mac_formula(func),
            mac_free=is_mac_free(func),
            moves_data=not (func.is_view or inplace_view or name in _NO_TRAFFIC),
            plan=_output_plan(func, inplace_view),
            mutated=tuple(
                i
                for i, a in enumerate(func._schema.arguments)
                if a.alias_info is not None and a.alias_info.is_write
            ),
        )
        _OP_INFO[func] = info
    return info


def _output_plan(func: Any, inplace_view: bool) -> int | str | None:
    schema = func._schema
    if func.is_view or inplace_view or func.overloadpacket.__name__ in ("resize_", "set_"):
        return None
    if all(r.alias_info is None for r in schema.returns):
        return "fresh"
    if len(schema.returns) == 1 and schema.arguments and not schema.arguments[0].kwarg_only:
        first, ret = schema.arguments[0].alias_info, schema.returns[0].alias_info
        if first is not None and first.is_write and first.before_set == ret.before_set:
            return 0
    return None
