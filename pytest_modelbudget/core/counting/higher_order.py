"""Higher-order operators in a count: flex_attention by its block mask, the others through their subgraph.

A higher-order operator (``torch.ops.higher_order.*``) takes functions as well as tensors.
The dispatch mode (:class:`~.dispatch.CountingMode`) hands every one to :func:`run`:

* ``flex_attention`` counts the blocks its ``BlockMask`` makes the kernel compute -- full
  and partial blocks alike, each a block of queries by a block of keys (smaller at the ends
  of the sequences) -- for ``Q @ K^T`` and ``P @ V``, per batch and query head; without a
  mask, dense attention. ``score_mod`` and ``mask_mod`` arithmetic is not MACs. (SDPA counts
  dense whatever its mask: its kernels compute every block.) ``flex_attention_backward``
  counts twice the forward's products, as SDPA's backward does.
* ``cond``, ``while_loop``, ``invoke_subgraph``, ``wrap`` and checkpoint tags run their
  subgraph with the mode on, so its ops are counted as themselves (a ``cond`` or a loop
  whose predicate is a meta tensor counts on real tensors). Any other runs as it is and is
  listed as uncounted -- never a crash.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import torch


class _Mode(Protocol):
    """What running an operator needs of the dispatch mode (a :class:`~.dispatch.CountingMode`)."""

    @property
    def to_meta(self) -> bool: ...
    @property
    def real_of(self) -> Mapping[int, torch.Tensor]: ...

    def to_meta_args(self, value: Any) -> Any: ...
    def record_call(self, name: str, macs: int, args: Any, out: Any, *, counted: bool) -> None: ...
    def record_op(self, op: Any, args: tuple[Any, ...], out: Any) -> None: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: Any) -> Any: ...


_FLEX_FORWARD = "flex_attention"
_FLEX_BACKWARD = "flex_attention_backward"
# Where the BlockMask's parts are in the tuple flex_attention's operator takes (BlockMask.as_tuple).
_KV_NUM_BLOCKS, _KV_INDICES, _FULL_KV_NUM_BLOCKS, _FULL_KV_INDICES = 2, 3, 4, 5
_Q_BLOCK, _KV_BLOCK, _MASK_MOD = 14, 15, 16


def is_higher_order(func: Any) -> bool:
    return isinstance(func, torch._ops.HigherOrderOperator)


def _computed_cols(num: torch.Tensor, indices: torch.Tensor, kv_len: int, kv_block: int) -> torch.Tensor:
    """Per (batch, head, query block): the keys of the blocks it computes (edge blocks are short)."""
    slots = torch.arange(indices.shape[-1]).expand(indices.shape)
    used = slots < num.unsqueeze(-1)
    cols = (kv_len - indices.long() * kv_block).clamp(min=0, max=kv_block)
    return (cols * used).sum(-1)


def _real_block_mask(
    block_mask: tuple[Any, ...], real_of: Mapping[int, torch.Tensor]
) -> tuple[Any, ...] | None:
    """The mask's block tables on real tensors: as given; through ``real_of`` (meta twin ->
    real tensor) for a mask the count was given; or made again from its ``mask_mod`` for a
    mask the forward made on meta tensors. None for a mask of a single block (the default of
    ``flex_attention`` without one): dense."""
    if all(
        int(n) >= int(size) for n, size in zip(block_mask[_Q_BLOCK:_MASK_MOD], block_mask[:2], strict=True)
    ):
        return None
    parts = [real_of.get(id(part), part) if isinstance(part, torch.Tensor) else part for part in block_mask]
    if not parts[_KV_NUM_BLOCKS].is_meta:
        return tuple(parts)
    from torch.nn.attention.flex_attention import create_block_mask

    num = parts[_KV_NUM_BLOCKS]
    made = create_block_mask(
        block_mask[_MASK_MOD],
        int(num.shape[0]),
        int(num.shape[1]),
        int(block_mask[0]),
        int(block_mask[1]),
        device="cpu",
        BLOCK_SIZE=(int(block_mask[_Q_BLOCK]), int(block_mask[_KV_BLOCK])),
    )
    return made.as_tuple()


def meta_block_mask(block_mask: Any, meta_tensor: Any) -> Any:
    """A BlockMask given to a count on meta tensors, with meta twins of its tensors (a BlockMask
    is no pytree container, so the inputs' swap does not reach inside it)."""
    twin = copy.copy(block_mask)
    for name, value in vars(block_mask).items():
        if isinstance(value, torch.Tensor):
            setattr(twin, name, meta_tensor(value))
    return twin


def flex_attention_macs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: tuple[Any, ...],
    real_of: Mapping[int, torch.Tensor] | None = None,
) -> int:
    """``Q @ K^T`` plus ``P @ V`` over the blocks the mask computes, per batch and query head."""
    batch, heads, q_len, qk_dim = (int(s) for s in q.shape)
    kv_len, v_dim = int(k.shape[-2]), int(v.shape[-1])
    mask = _real_block_mask(block_mask, real_of or {})
    if mask is None:
        return batch * heads * q_len * kv_len * (qk_dim + v_dim)
    q_block, kv_block = int(mask[_Q_BLOCK]), int(mask[_KV_BLOCK])
    num, indices = mask[_KV_NUM_BLOCKS], mask[_KV_INDICES]
    cols = _computed_cols(num, indices, kv_len, kv_block)
    if mask[_FULL_KV_NUM_BLOCKS] is not None:
        cols = cols + _computed_cols(mask[_FULL_KV_NUM_BLOCKS], mask[_FULL_KV_INDICES], kv_len, kv_block)
    blocks = cols.shape[-1]
    rows = (q_len - torch.arange(blocks) * q_block).clamp(min=0, max=q_block)
    scores = int((cols.long() * rows).sum())  # over the mask's batch and heads
    # A mask made for one batch entry or head stands for all of them (broadcast).
    scores *= (batch // int(cols.shape[0])) * (heads // int(cols.shape[1]))
    return scores * (qk_dim + v_dim)


@contextlib.contextmanager
def flex_attention_countable() -> Iterator[None]:
    """flex_attention as a count can run it, for as long as the count runs: the operator
    itself, without the ``torch.compile`` its eager path wraps it in (which refuses to run
    under a dispatch mode) -- as its own debugging switch runs it, with the same results --
    and without its device check (meta tensors; gradients on the CPU), which is about the
    fused kernels, not the dense implementation a count runs."""
    module = sys.modules.get("torch.nn.attention.flex_attention")
    if module is None:  # not imported: nothing in this forward uses it
        yield
        return
    saved = {name: getattr(module, name) for name in (_SWITCH, _DEVICE_CHECK)}
    setattr(module, _SWITCH, True)
    setattr(module, _DEVICE_CHECK, _no_check)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


_SWITCH = "_FLEX_ATTENTION_DISABLE_COMPILE_DEBUG"
_DEVICE_CHECK = "_validate_device"


def _no_check(*_: Any) -> None:
    return None


def run(mode: _Mode, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Count and run one higher-order operator under ``mode`` (its ``__torch_dispatch__``)."""
    name = func.name()
    if name in (_FLEX_FORWARD, _FLEX_BACKWARD):
        q, k, v = args[0], args[1], args[2]
        block_mask = args[4] if name == _FLEX_FORWARD else args[9]
        macs = flex_attention_macs(q, k, v, block_mask, mode.real_of)
        if name == _FLEX_BACKWARD:
            macs *= 2
        call_args = mode.to_meta_args(args) if mode.to_meta else args
        out = func(*call_args, **kwargs)  # the mode is off here: its math is not counted again
        mode.record_call(f"higher_order.{name}", macs, call_args, out, counted=True)
        return out
    if name == "out_dtype":  # out_dtype(op, dtype, *operands): op's arithmetic, in the operands' dtype
        call_args = mode.to_meta_args(args) if mode.to_meta else args
        out = func(*call_args, **kwargs)
        mode.record_op(args[0], tuple(call_args[2:]), out)
        return out
    through = _THROUGH_SUBGRAPH.get(name)
    if through is None:
        out = func(*args, **kwargs)  # the mode is off here: its ops go uncounted, and it says so
        mode.record_call(f"higher_order.{name}", 0, args, out, counted=False)
        return out
    with mode:  # the subgraph's ops reach the mode as themselves
        return through(*args, **kwargs)


def _cond(pred: Any, true_fn: Any, false_fn: Any, operands: Any) -> Any:
    return true_fn(*operands) if bool(pred) else false_fn(*operands)  # a meta pred: count on real


def _while_loop(cond_fn: Any, body_fn: Any, carried: Any, additional: Any = ()) -> Any:
    carried = tuple(carried)
    while bool(cond_fn(*carried, *additional)):
        out = body_fn(*carried, *additional)
        carried = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    return carried


def _call_first(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


def _invoke_subgraph(subgraph: Any, identifier: Any, *operands: Any) -> Any:
    return subgraph(*operands)


# Higher-order operators whose subgraph is run here with the mode on, as their dense
# implementations run it (those refuse a mode that is on).
_THROUGH_SUBGRAPH: dict[str, Callable[..., Any]] = {
    "cond": _cond,
    "while_loop": _while_loop,
    "invoke_subgraph": _invoke_subgraph,
    "wrap": _call_first,
    "tag_activation_checkpoint": _call_first,
}
