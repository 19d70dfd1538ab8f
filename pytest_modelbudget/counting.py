"""Count MACs, params, size and memory traffic of one forward pass, at the ATen level.

The forward runs under a ``TorchDispatchMode`` that sees every ATen op, so functional
code (``@``, ``einsum``, ``F.linear``, SDPA) counts exactly like modules do. By default
it runs on the *meta* device: each real tensor an op touches (weights, buffers,
inputs) is swapped for a meta tensor of the same shape inside the dispatch mode, so no
arithmetic is done, no weight is copied, and the model object is never touched. A
model whose forward needs real values (``.item()``, data-dependent shapes) is counted
with real tensors instead; :attr:`Counts.executed_on` says which happened.

On meta, an op's outputs and cost depend only on its signature (shapes, strides, dtypes
and the other arguments), so each count caches them per signature: a repeated layer
costs a dictionary lookup, not a meta kernel. Where a meta kernel is a slow Python
decomposition, :mod:`.shape_rules` gives its outputs directly. The cache lives for one
count; nothing about a model is remembered between counts.

Either way the model is left exactly as it was (:mod:`.model_state`): module
attributes, hooks, buffers and parameters, the training flag, ``requires_grad`` and the
global RNG states are snapshotted before the forward and restored after it, also when
it raises.
"""

from __future__ import annotations

import weakref
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only

from .errors import MeasurementError
from .mac_formulas import CONVENTION, Formula, is_mac_free, mac_formula
from .model_state import Inventory, model_left_as_it_was
from .shape_rules import meta_outputs

EXECUTION_MODES = ("auto", "meta", "real")


@dataclass(frozen=True)
class ModuleStats:
    """Counts attributed to one module path (inclusive of its children in breakdowns)."""

    macs: int = 0
    params: int = 0
    memory_traffic: int = 0

    def __add__(self, other: ModuleStats) -> ModuleStats:
        return ModuleStats(
            self.macs + other.macs,
            self.params + other.params,
            self.memory_traffic + other.memory_traffic,
        )


@dataclass(frozen=True)
class OpRecord:
    """One ATen op call: where it ran in the module tree and what it cost."""

    module: str
    op: str
    macs: int
    memory_traffic: int
    dtype: str


@dataclass(frozen=True)
class Counts:
    """The deterministic metrics of one forward pass of one model."""

    macs: int
    params: int
    trainable_params: int
    buffers: int
    size_bytes: int
    size_by_dtype: Mapping[str, int]
    memory_traffic: int
    modules: Mapping[str, ModuleStats]
    uncounted: Mapping[str, int]
    executed_on: str
    convention: str = CONVENTION
    # Estimated peak of the bytes of tensors the forward allocated and still held: an
    # estimate of activation memory from the dispatch trace (no allocator, caching or
    # workspace; views share their base's bytes).
    peak_memory: int = 0
    ops: tuple[OpRecord, ...] = field(default=(), compare=False, repr=False)

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def arithmetic_intensity(self) -> float:
        """FLOPs per byte of memory traffic (0 when nothing moved)."""
        return self.flops / self.memory_traffic if self.memory_traffic else 0.0

    def by_module(self, depth: int) -> dict[str, ModuleStats]:
        """Inclusive stats per module path cut at ``depth`` levels ("" is the root's own ops)."""
        grouped: dict[str, ModuleStats] = defaultdict(ModuleStats)
        for path, stats in self.modules.items():
            key = ".".join(path.split(".")[: max(depth, 0)])
            grouped[key] = grouped[key] + stats
        return dict(grouped)

    def to_dict(self) -> dict[str, Any]:
        return {
            "macs": self.macs,
            "params": self.params,
            "trainable_params": self.trainable_params,
            "buffers": self.buffers,
            "size_bytes": self.size_bytes,
            "size_by_dtype": dict(self.size_by_dtype),
            "memory_traffic": self.memory_traffic,
            "modules": {path: [s.macs, s.params, s.memory_traffic] for path, s in self.modules.items()},
            "uncounted": dict(self.uncounted),
            "executed_on": self.executed_on,
            "convention": self.convention,
            "peak_memory": self.peak_memory,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Counts:
        return cls(
            macs=int(data["macs"]),
            params=int(data["params"]),
            trainable_params=int(data["trainable_params"]),
            buffers=int(data["buffers"]),
            size_bytes=int(data["size_bytes"]),
            size_by_dtype={str(k): int(v) for k, v in data["size_by_dtype"].items()},
            memory_traffic=int(data["memory_traffic"]),
            modules={p: ModuleStats(*map(int, v)) for p, v in data["modules"].items()},
            uncounted={str(k): int(v) for k, v in data["uncounted"].items()},
            executed_on=str(data["executed_on"]),
            convention=str(data["convention"]),
            peak_memory=int(data.get("peak_memory", 0)),
        )


def count(
    model: torch.nn.Module,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    execution: str = "auto",
) -> Counts:
    """Count one forward ``model(*args, **kwargs)``.

    ``execution``: ``"meta"`` never does real arithmetic (raises if the model cannot run
    on meta tensors), ``"real"`` runs on the tensors as given, ``"auto"`` tries meta
    first and falls back to real.
    """
    if not isinstance(model, torch.nn.Module):
        raise MeasurementError(
            f"expected a torch.nn.Module, got {type(model).__name__}; call model_budget(model, *inputs)"
        )
    if execution not in EXECUTION_MODES:
        raise MeasurementError(f"execution must be one of {EXECUTION_MODES}, got {execution!r}")
    kwargs = dict(kwargs or {})
    if execution in ("auto", "meta"):
        try:
            return _count_forward(model, args, kwargs, to_meta=True)
        except Exception as error:  # any failure on meta means "try real"
            if execution == "meta":
                raise MeasurementError(
                    f"the forward cannot run on the meta device ({type(error).__name__}: "
                    f"{error}); count with execution='real'"
                ) from error
    return _count_forward(model, args, kwargs, to_meta=False)


def _count_forward(
    model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], *, to_meta: bool
) -> Counts:
    inventory = Inventory.of(model)
    mode = _CountingMode(to_meta=to_meta)
    tracker = _ModuleTracker({id(module): path for path, module in inventory.modules})
    with model_left_as_it_was(inventory, restore_values=not to_meta):
        if to_meta:
            args = tree_map_only(torch.Tensor, mode.meta_tensor, args)
            kwargs = tree_map_only(torch.Tensor, mode.meta_tensor, kwargs)
        # A function mode costs every torch call in the forward a Python round trip, so
        # it is only pushed where it is needed (see _DEVICE_CHECKING_COMPOSITES).
        has_rnn = any(isinstance(module, torch.nn.RNNBase) for _, module in inventory.modules)
        function_mode = _MetaArguments(mode) if to_meta and has_rnn else nullcontext()
        with torch.no_grad(), tracker, function_mode, mode:
            mode.current_module = tracker.current
            model(*args, **kwargs)
    return _assemble(inventory, mode, "meta" if to_meta else _device_of(inventory, args))


def _device_of(inventory: Inventory, args: tuple[Any, ...]) -> str:
    for _, tensor in inventory.parameters:
        return str(tensor.device)
    for arg in args:
        if isinstance(arg, torch.Tensor):
            return str(arg.device)
    return "cpu"


def _assemble(inventory: Inventory, mode: _CountingMode, executed_on: str) -> Counts:
    params = trainable = buffers = 0
    size_by_dtype: Counter[str] = Counter()
    module_params: Counter[str] = Counter()
    for path, param in inventory.parameters:
        numel = param.numel()
        params += numel
        trainable += numel if param.requires_grad else 0
        size_by_dtype[_dtype_name(param.dtype)] += numel * param.element_size()
        module_params[path] += numel
    for _, buffer in inventory.buffers:
        buffers += buffer.numel()
        size_by_dtype[_dtype_name(buffer.dtype)] += buffer.numel() * buffer.element_size()
    modules: dict[str, ModuleStats] = {}
    for path in sorted(set(mode.module_macs) | set(mode.module_traffic) | set(module_params)):
        stats = ModuleStats(mode.module_macs[path], module_params[path], mode.module_traffic[path])
        if stats != ModuleStats():
            modules[path] = stats
    return Counts(
        macs=sum(mode.module_macs.values()),
        params=params,
        trainable_params=trainable,
        buffers=buffers,
        size_bytes=sum(size_by_dtype.values()),
        size_by_dtype=dict(sorted(size_by_dtype.items())),
        memory_traffic=sum(mode.module_traffic.values()),
        modules=modules,
        uncounted=dict(sorted(mode.uncounted.items())),
        executed_on=executed_on,
        peak_memory=mode.memory.peak,
        ops=tuple(mode.ops),
    )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class _ModuleTracker:
    """Knows which module of the model is running, through global module hooks.

    Global hooks are registered only for the duration of the count and removed after,
    so no module of the model ever carries a hook of ours.
    """

    def __init__(self, names: Mapping[int, str]) -> None:
        self._names = names
        self._stack = [""]
        self._handles: list[Any] = []

    def current(self) -> str:
        return self._stack[-1]

    def _enter(self, module: torch.nn.Module, _args: Any) -> None:
        # Modules outside the model (built inside forward) belong to their caller.
        self._stack.append(self._names.get(id(module), self._stack[-1]))

    def _exit(self, _module: torch.nn.Module, _args: Any, _out: Any) -> None:
        if len(self._stack) > 1:
            self._stack.pop()

    def __enter__(self) -> _ModuleTracker:
        hooks = torch.nn.modules.module
        self._handles = [
            hooks.register_module_forward_pre_hook(self._enter),
            hooks.register_module_forward_hook(self._exit, always_call=True),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


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


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _first_tensor(value: Any) -> torch.Tensor | None:
    return next(_tensors(value), None)


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
    buffer is only written.
    """
    inputs = (v for k, v in kwargs.items() if k != "out")
    reads = _unique(_tensors((*args, *inputs)))
    writes = _unique(_tensors(out))
    return sum(map(_touched_bytes, reads)) + sum(map(_touched_bytes, writes))


# Ops that produce their result without moving data: allocation, aliasing, and views
# that are not flagged as views (``_unsafe_view``) or change a tensor's view in place.
_NO_TRAFFIC = frozenset(
    """
    empty empty_strided empty_like new_empty new_empty_strided detach alias lift_fresh
    _unsafe_view _reshape_alias resize_ set_
    """.split()
)


@dataclass(frozen=True)
class _OpInfo:
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


# Per-overload facts (schema, tags, formula lookup), not per-model results: computing
# them once per process saves a few microseconds per op call and changes no count.
_OP_INFO: dict[Any, _OpInfo] = {}


def _op_info(func: Any) -> _OpInfo:
    info = _OP_INFO.get(func)
    if info is None:
        name = func.overloadpacket.__name__
        inplace_view = torch.Tag.inplace_view in func.tags
        info = _OpInfo(
            name=str(func.overloadpacket),
            formula=mac_formula(func),
            mac_free=is_mac_free(func),
            moves_data=not (func.is_view or inplace_view or name in _NO_TRAFFIC),
            plan=_output_plan(func, inplace_view),
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


class _OpCost(NamedTuple):
    """One call's cost, as recorded; shared by all calls with the same meta signature."""

    name: str
    macs: int
    traffic: int
    dtype: str
    counted: bool  # False: arithmetic the convention has no formula for


class _LiveBytes:
    """Bytes of the tensors that ops allocated and that are still alive, and their peak.

    Each fresh output gets a finalizer that subtracts its bytes when the forward drops it,
    which CPython does as soon as the last reference goes.
    """

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0

    def allocated(self, out: Any) -> None:
        for tensor in _tensors(out):
            nbytes = tensor.numel() * tensor.element_size()
            self.live += nbytes
            weakref.finalize(tensor, self._freed, nbytes)
        self.peak = max(self.peak, self.live)

    def _freed(self, nbytes: int) -> None:
        self.live -= nbytes


class _CountingMode(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Counts each ATen op; in meta mode also swaps real tensors for meta ones."""

    def __init__(self, *, to_meta: bool) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.to_meta = to_meta
        self.current_module: Any = lambda: ""
        self.module_macs: Counter[str] = Counter()
        self.module_traffic: Counter[str] = Counter()
        self.uncounted: Counter[str] = Counter()
        self.ops: list[OpRecord] = []
        self.memory = _LiveBytes()
        # id(real tensor) -> (real tensor, meta twin). Holding the real tensor keeps
        # its id from being reused by a new tensor during the count.
        self._meta_twins: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
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
        return twin[1]

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
        info = _op_info(func)
        out = self._run_meta(func, info, args, kwargs) if self.to_meta else func(*args, **kwargs)
        if not self.to_meta:
            self._record(self._costs(info, args, kwargs, out))
        if info.plan == "fresh":  # a new tensor, not a view or an argument changed in place
            self.memory.allocated(out)
        return out

    def _run_meta(self, func: Any, info: _OpInfo, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if info.plan is None:  # views and the like: their outputs alias inputs, never cached
            args = self.to_meta_args(args)
            kwargs = {k: self.to_meta_args(v) for k, v in kwargs.items()}
            out = func(*args, **kwargs)
            self._record(self._costs(info, args, kwargs, out))
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
            out = func(*args, **kwargs)
        cost = self._costs(info, args, kwargs, out)
        if key is not None:
            self._cache[key] = (_template(out), cost)
        self._record(cost)
        return out

    @staticmethod
    def _costs(info: _OpInfo, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> _OpCost:
        first_out = out if isinstance(out, torch.Tensor) else _first_tensor(out)
        macs = 0
        if info.formula is not None:
            macs = int(info.formula(*args, **{**kwargs, "out": first_out}))
        traffic = _memory_traffic(args, kwargs, out) if info.moves_data else 0
        typed = first_out if first_out is not None else _first_tensor(args)
        dtype = _dtype_name(typed.dtype) if typed is not None else "none"
        counted = info.formula is not None or info.mac_free
        return _OpCost(info.name, macs, traffic, dtype, counted)

    def _record(self, cost: _OpCost) -> None:
        module = self.current_module()
        if not cost.counted:
            self.uncounted[cost.name] += 1
        self.module_macs[module] += cost.macs
        self.module_traffic[module] += cost.traffic
        self.ops.append(OpRecord(module, cost.name, cost.macs, cost.traffic, cost.dtype))


# Composite ops that compare the devices of their arguments before any of their ATen
# ops reaches the dispatch mode. The RNN modules (nn.RNNBase) hand their real weights
# straight to these, next to a meta input, so on meta their arguments are swapped one
# level up. (Code that calls them directly, without an RNN module, counts on real.)
_DEVICE_CHECKING_COMPOSITES = frozenset(
    getattr(torch._C._VariableFunctions, name) for name in ("lstm", "gru", "rnn_tanh", "rnn_relu")
)


class _MetaArguments(TorchFunctionMode):
    """Gives the device-checking composites meta twins of their real tensor arguments."""

    def __init__(self, mode: _CountingMode) -> None:
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
