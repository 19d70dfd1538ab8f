"""The per-op half of a count: a ``TorchDispatchMode`` that sees every ATen op and prices it.

:class:`CountingMode` owns everything that happens at one op call: swapping real tensors
for meta twins (so no arithmetic is done and no weight is copied), caching an op's outputs
and cost per signature on meta (a repeated layer costs a dictionary lookup, not a meta
kernel; :mod:`.shape_rules` stands in for the slowest meta kernels), pricing the call --
MACs from :mod:`.formulas`, bytes read plus written as its memory traffic -- and the
live-bytes peak of the tensors the forward allocates. It attributes each call to the
module the caller says is running and records it as an :class:`OpRecord`.

:class:`MetaArguments` is the one torch-function-level piece: it gives the RNN composites,
which check devices before any of their ATen ops reaches the dispatch mode, meta twins of
their real arguments.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import weakref
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ...errors import MeasurementError
from . import higher_order
from .experts import ExpertTracker
from .formulas import compute_dtype
from .held import unpacked
from .higher_order import is_higher_order
from .op_facts import OpInfo, op_info
from .shape_rules import meta_outputs


@dataclass(frozen=True)
class OpRecord:
    """One ATen op call: where it ran in the module tree and what it cost."""

    module: str
    op: str
    macs: int
    memory_traffic: int
    dtype: str


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _template(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return (tuple(out.shape), out.stride(), out.dtype)
    if isinstance(out, (list, tuple)):
        return [type(out), [_template(o) for o in out]]
    return out


def _from_template(template: Any) -> Any:
    if isinstance(template, tuple):
        shape, stride, dtype = template
        return torch.empty_strided(shape, stride, dtype=dtype, device="meta")
    if isinstance(template, list):
        kind, items = template
        return kind(_from_template(t) for t in items)
    return template


def iter_tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from iter_tensors(item)


def _first_tensor(value: Any) -> torch.Tensor | None:
    return next(iter_tensors(value), None)


def _touched_bytes(tensor: torch.Tensor) -> int:
    # A broadcast (stride-0) dimension is read once, not once per repeat.
    if 0 not in tensor.stride():
        return tensor.numel() * tensor.element_size()
    elements = 1
    for size, stride in zip(tensor.shape, tensor.stride(), strict=True):
        if stride != 0:
            elements *= int(size)
    return elements * tensor.element_size()


def _unique(tensors: Iterator[torch.Tensor]) -> list[torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}
    for tensor in tensors:
        seen.setdefault(id(tensor), tensor)
    return list(seen.values())


def _memory_traffic(args: Any, kwargs: Mapping[str, Any], out: Any) -> int:
    """Bytes read plus bytes written by one op, if nothing were cached or fused.

    Each distinct input tensor is read once (``x * x`` reads x once) and each output
    written once; an in-place op both reads and writes its destination. An ``out=``
    buffer is only written. A quantized kernel's packed weights are read too.
    """
    inputs = (*args, *(v for k, v in kwargs.items() if k != "out"))
    packed = (t for v in inputs if isinstance(v, torch.ScriptObject) for t in unpacked(v))
    reads = _unique(itertools.chain(iter_tensors(inputs), packed))
    writes = _unique(iter_tensors(out))
    return sum(map(_touched_bytes, reads)) + sum(map(_touched_bytes, writes))


_TO_COPY = torch.ops.aten._to_copy.default


class _OpCost(NamedTuple):
    """One call's cost, as recorded; shared by all calls with the same meta signature."""

    name: str
    macs: int
    traffic: int
    dtype: str
    counted: bool  # False: arithmetic the convention has no formula for
    compute: str  # the dtype its MACs ran in ("none" for an op without MACs)


class _LiveBytes:
    """Bytes of the tensors that ops allocated and that are still alive, and their peak.

    Each fresh output gets a finalizer that subtracts its bytes when the forward drops it,
    which CPython does as soon as the last reference goes.
    """

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0

    def allocated(self, out: Any) -> None:
        for tensor in iter_tensors(out):
            nbytes = tensor.numel() * tensor.element_size()
            self.live += nbytes
            weakref.finalize(tensor, self._freed, nbytes)
        self.peak = max(self.peak, self.live)

    def _freed(self, nbytes: int) -> None:
        self.live -= nbytes


# op -> the function that torch._compile._disable_dynamo wraps in front of the op's Python
# meta kernel (the function its wrapper caches a dynamo-disabled twin on); None if none.
_DYNAMO_WRAPPED: dict[Any, Any] = {}


def _dynamo_wrapped(func: Any) -> Any:
    if func not in _DYNAMO_WRAPPED:
        found = None
        kernel = getattr(func, "py_kernels", {}).get(torch._C.DispatchKey.Meta)
        while kernel is not None and found is None:
            code = getattr(kernel, "__code__", None)
            if code is not None and code.co_filename.endswith("_compile.py") and "fn" in code.co_freevars:
                found = kernel.__closure__[code.co_freevars.index("fn")].cell_contents
            kernel = getattr(kernel, "__wrapped__", None)
        _DYNAMO_WRAPPED[func] = found
    return _DYNAMO_WRAPPED[func]


@contextmanager
def _dynamo_left_unimported(func: Any) -> Iterator[None]:
    """Run an op's Python meta kernel without the import of torch._dynamo its wrapper does.

    Many meta kernels are Python references behind ``torch._compile._disable_dynamo``,
    which imports torch._dynamo (0.8 s: most of a check run's overhead over
    pytest-benchmark's) the first time it runs, only to keep dynamo from tracing the
    reference. A count is never traced by dynamo, so for the duration of the call the
    wrapper finds its disabled twin cached already (as the function itself), and the cache
    is emptied after. Once torch._dynamo is imported anyway, nothing is touched.
    """
    wrapped = None if "torch._dynamo" in sys.modules else _dynamo_wrapped(func)
    if wrapped is None or hasattr(wrapped, _DYNAMO_CACHE):
        yield
        return
    setattr(wrapped, _DYNAMO_CACHE, wrapped)
    try:
        yield
    finally:
        with suppress(AttributeError):
            delattr(wrapped, _DYNAMO_CACHE)


_DYNAMO_CACHE = "__dynamo_disable"  # the attribute torch._compile._disable_dynamo caches in


class CountingMode(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Counts each ATen op; in meta mode also swaps real tensors for meta ones."""

    # Higher-order operators (flex_attention, cond, ...) come through __torch_dispatch__ too.
    supports_higher_order_operators = True

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # TorchDispatchMode wraps a subclass's __torch_dispatch__ in torch._dynamo.disable,
        # which imports torch._dynamo (0.8 s) on the first op. A count never runs inside a
        # compiled region, so there is nothing for that wrapper to keep dynamo out of.
        return False

    def __init__(self, *, to_meta: bool, memory: Any = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.to_meta = to_meta
        self.current_module: Any = lambda: ""
        self.module_macs: Counter[str] = Counter()
        self.module_traffic: Counter[str] = Counter()
        self.uncounted: Counter[str] = Counter()
        self.macs_by_dtype: Counter[str] = Counter()
        self.ops: list[OpRecord] = []
        # What tracks the bytes of fresh outputs: anything with allocated(out) (a training
        # step shares one tracker across its forward, backward and optimizer step).
        self.memory = memory if memory is not None else _LiveBytes()
        # id(real tensor) -> (real tensor, meta twin). Holding the real tensor keeps
        # its id from being reused by a new tensor during the count.
        self._meta_twins: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.real_of: dict[int, torch.Tensor] = {}  # id(meta twin) -> the real tensor
        # The tensors that are the model's parameters (ids), and its mixture-of-experts banks
        # and routers as the forward uses them (for the active parameters).
        self.parameter_ids: frozenset[int] = frozenset()
        self.experts = ExpertTracker()
        # The model's buffers (ids), and those an op wrote into: a static KV cache in buffers.
        self.buffer_ids: frozenset[int] = frozenset()
        self.written: dict[int, torch.Tensor] = {}
        self._entered: list[contextlib.ExitStack] = []
        # signature -> (output template, cost): on meta, outputs and costs depend only
        # on the signature, so repeated layers skip the meta kernels. One cache per
        # count: a second count of the same model starts from scratch.
        self._cache: dict[Any, tuple[Any, _OpCost]] = {}

    def meta_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_meta:
            return tensor
        twin = self._meta_twins.get(id(tensor))
        if twin is None:
            meta = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device="meta")
            twin = (tensor, meta)
            self._meta_twins[id(tensor)] = twin
            self.real_of[id(meta)] = tensor
        return twin[1]

    def adopt(self, tensor: torch.Tensor, meta: torch.Tensor) -> None:
        """Take ``meta`` as the twin of ``tensor`` (one made by another mode of the same count)."""
        self._meta_twins[id(tensor)] = (tensor, meta)
        self.real_of[id(meta)] = tensor

    def _note_writes(self, info: OpInfo, args: tuple[Any, ...]) -> None:
        for position in info.mutated:
            target = args[position] if position < len(args) else None
            real = self._real_base(target)
            if real is not None and id(real) in self.buffer_ids:
                self.written.setdefault(id(real), real)

    def _real_base(self, tensor: Any) -> torch.Tensor | None:
        """The real tensor that ``tensor`` is, or views (through its meta twin)."""
        if not isinstance(tensor, torch.Tensor):
            return None
        base = tensor._base if tensor._base is not None else tensor
        return self.real_of.get(id(base), base)

    def _parameter_of(self, tensor: Any) -> torch.Tensor | None:
        """The model's parameter that ``tensor`` is, or is a view of (its meta twin too)."""
        real = self._real_base(tensor)
        return real if real is not None and id(real) in self.parameter_ids else None

    def to_meta_args(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value if value.is_meta else self.meta_tensor(value)
        if isinstance(value, (list, tuple)):
            return type(value)([self.to_meta_args(v) for v in value])
        return value

    def _prepare(self, value: Any) -> tuple[Any, Any]:
        """The value with its real tensors swapped for their meta twins, and its
        signature: what decides an op's outputs and cost on meta tensors -- per tensor
        its shape, strides and dtype, any other value as it is."""
        if isinstance(value, torch.Tensor):
            if not value.is_meta:
                value = self.meta_tensor(value)
            return value, (value.shape, value.stride(), value.dtype)
        if isinstance(value, (list, tuple)):
            prepared = [self._prepare(v) for v in value]
            return type(value)([p[0] for p in prepared]), tuple([p[1] for p in prepared])
        return value, value

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if is_higher_order(func):
            return higher_order.run(self, func, args, kwargs)
        info = op_info(func)
        if func in ExpertTracker.WATCHED:
            self.experts.saw(func, args, self.current_module(), self._parameter_of)
        if self.buffer_ids and info.mutated:
            self._note_writes(info, args)
        out = self._run_meta(func, info, args, kwargs) if self.to_meta else func(*args, **kwargs)
        if not self.to_meta:
            self._record(self._costs(func, info, args, kwargs, out))
        if info.plan == "fresh":  # a new tensor, not a view or an argument changed in place
            self.memory.allocated(out)
        return out

    def _run_meta(self, func: Any, info: OpInfo, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if func is _TO_COPY and kwargs.get("device") is not None:
            # A move to a real device (``.to(model.device)``, ``.cpu()``) stays on meta: it
            # copies nothing a count could use, and a meta tensor has no data to copy out.
            kwargs = {**kwargs, "device": torch.device("meta")}
        if info.plan is None:  # views and the like: their outputs alias inputs, never cached
            args = self.to_meta_args(args)
            kwargs = {k: self.to_meta_args(v) for k, v in kwargs.items()}
            out = func(*args, **kwargs)
            self._record(self._costs(func, info, args, kwargs, out))
            return out
        args, signature = self._prepare(args)
        if kwargs:
            values, kwargs_signature = self._prepare(tuple(kwargs.values()))
            kwargs = dict(zip(kwargs, values, strict=True))
            signature = (signature, tuple(kwargs), kwargs_signature)
        try:
            key = (func, signature)
            hit = self._cache.get(key)
        except TypeError:  # an unhashable argument: no caching for this call
            key, hit = None, None
        if hit is not None:
            template, cost = hit
            out = args[info.plan] if isinstance(info.plan, int) else _from_template(template)
            self._record(cost)
            return out
        # Cheap shape rules stand in for the hottest (Python) meta kernels.
        out = meta_outputs(func, args, kwargs)
        if out is None:
            with _dynamo_left_unimported(func):
                out = func(*args, **kwargs)
        cost = self._costs(func, info, args, kwargs, out)
        if key is not None:
            self._cache[key] = (_template(out), cost)
        self._record(cost)
        return out

    @staticmethod
    def _costs(func: Any, info: OpInfo, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> _OpCost:
        first_out = out if isinstance(out, torch.Tensor) else _first_tensor(out)
        macs = 0
        if info.formula is not None:
            try:
                macs = int(info.formula(*args, **{**kwargs, "out": first_out}))
            except Exception as error:  # a bug of ours, not the model's: say so
                raise MeasurementError(
                    f"internal error in pytest-modelbudget: the MAC formula of {info.name} failed "
                    f"({type(error).__name__}: {error}); please report it with the model"
                ) from error
        traffic = _memory_traffic(args, kwargs, out) if info.moves_data else 0
        typed = first_out if first_out is not None else _first_tensor(args)
        dtype = dtype_name(typed.dtype) if typed is not None else "none"
        counted = info.formula is not None or info.mac_free
        compute = compute_dtype(func, _first_tensor(args), kwargs.get("dtype")) if macs else "none"
        return _OpCost(info.name, macs, traffic, dtype, counted, compute)

    def record_op(self, op: Any, args: tuple[Any, ...], out: Any) -> None:
        """Records ``op(*args) -> out`` priced as that ATen op, for a higher-order operator
        that runs one (``out_dtype``: an int8 matmul accumulated in int32)."""
        self._record(self._costs(op, op_info(op), args, {}, out))
        self.memory.allocated(out)

    def record_call(self, name: str, macs: int, args: Any, out: Any, *, counted: bool) -> None:
        """Records one call that is not an ATen op (a higher-order operator) like one."""
        typed = _first_tensor(out) if _first_tensor(out) is not None else _first_tensor(args)
        dtype = dtype_name(typed.dtype) if typed is not None else "none"
        self._record(
            _OpCost(name, macs, _memory_traffic(args, {}, out), dtype, counted, dtype if macs else "none")
        )
        self.memory.allocated(out)

    def __enter__(self) -> CountingMode:
        entered = contextlib.ExitStack()
        entered.enter_context(higher_order.flex_attention_countable())
        self._entered.append(entered)
        super().__enter__()  # type: ignore[no-untyped-call]
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            super().__exit__(*exc)  # type: ignore[no-untyped-call]
        finally:
            self._entered.pop().close()

    def _record(self, cost: _OpCost) -> None:
        module = self.current_module()
        if not cost.counted:
            self.uncounted[cost.name] += 1
        self.module_macs[module] += cost.macs
        self.module_traffic[module] += cost.traffic
        if cost.macs:
            self.macs_by_dtype[cost.compute] += cost.macs
        self.ops.append(OpRecord(module, cost.name, cost.macs, cost.traffic, cost.dtype))


class _DynamoSafeCountingMode(CountingMode):  # type: ignore[no-untyped-call]
    """The mode once torch._dynamo is loaded: its ``__torch_dispatch__`` disabled for dynamo.

    Some higher-order operators (``torch.cond``, ``while_loop``) run eagerly through
    ``torch.compile``, which leaves a frame under a dispatch mode to run as it is -- but the
    mode's own ``__torch_dispatch__`` runs with the mode popped, and would be traced. Wrapping
    it costs the import of torch._dynamo, paid here only where it is loaded already.
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return True

    __torch_dispatch__ = CountingMode.__torch_dispatch__  # wrapped by TorchDispatchMode


def counting_mode(*, to_meta: bool, memory: Any = None) -> CountingMode:
    """A :class:`CountingMode` -- dynamo-safe where torch._dynamo is loaded."""
    kind = _DynamoSafeCountingMode if "torch._dynamo" in sys.modules else CountingMode
    return kind(to_meta=to_meta, memory=memory)


# Composite ops that compare the devices of their arguments before any of their ATen
# ops reaches the dispatch mode. The RNN modules (nn.RNNBase) hand their real weights
# straight to these, next to a meta input, so on meta their arguments are swapped one
# level up. (Code that calls them directly, without an RNN module, counts on real.)
_DEVICE_CHECKING_COMPOSITES = frozenset(
    getattr(torch._C._VariableFunctions, name) for name in ("lstm", "gru", "rnn_tanh", "rnn_relu")
)


class MetaArguments(TorchFunctionMode):
    """Gives the device-checking composites meta twins of their real tensor arguments."""

    def __init__(self, mode: CountingMode) -> None:
        super().__init__()
        self._mode = mode

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _DEVICE_CHECKING_COMPOSITES:
            args = self._mode.to_meta_args(args)
            kwargs = {k: self._mode.to_meta_args(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)
