"""Count MACs, params, size and memory traffic of one forward pass, at the ATen level.

The forward runs under a ``TorchDispatchMode`` that sees every ATen op, so functional
code (``@``, ``einsum``, ``F.linear``, SDPA) counts exactly like modules do. By default
it runs on the *meta* device: each real tensor an op touches (weights, buffers,
inputs) is swapped for a meta tensor of the same shape inside the dispatch mode, so no
arithmetic is done, no weight is copied, and the model object is never touched. A
model whose forward needs real values (``.item()``, data-dependent shapes) is counted
with real tensors instead; :attr:`Counts.executed_on` says which happened.

Either way the model is left exactly as it was: module attributes, hooks, buffers and
parameters, the training flag, ``requires_grad`` and the global RNG states are
snapshotted before the forward and restored after it, also when it raises.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only

from .errors import MeasurementError
from .mac_formulas import CONVENTION, is_mac_free, mac_formula

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
            "modules": {
                path: [s.macs, s.params, s.memory_traffic] for path, s in self.modules.items()
            },
            "uncounted": dict(self.uncounted),
            "executed_on": self.executed_on,
            "convention": self.convention,
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
            f"expected a torch.nn.Module, got {type(model).__name__}; "
            "call model_budget(model, *inputs)"
        )
    if execution not in EXECUTION_MODES:
        raise MeasurementError(f"execution must be one of {EXECUTION_MODES}, got {execution!r}")
    kwargs = dict(kwargs or {})
    if execution in ("auto", "meta"):
        try:
            return _count_forward(model, args, kwargs, to_meta=True)
        except Exception as error:  # noqa: BLE001 -- any failure on meta means "try real"
            if execution == "meta":
                raise MeasurementError(
                    f"the forward cannot run on the meta device ({type(error).__name__}: "
                    f"{error}); count with execution='real'"
                ) from error
    return _count_forward(model, args, kwargs, to_meta=False)


def _count_forward(
    model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], *, to_meta: bool
) -> Counts:
    names = {id(module): path for path, module in model.named_modules()}
    mode = _CountingMode(to_meta=to_meta)
    tracker = _ModuleTracker(names)
    with _model_left_as_it_was(model, restore_values=not to_meta):
        if to_meta:
            args = tree_map_only(torch.Tensor, mode.meta_tensor, args)
            kwargs = tree_map_only(torch.Tensor, mode.meta_tensor, kwargs)
        with torch.no_grad(), tracker, mode:
            mode.current_module = tracker.current
            model(*args, **kwargs)
    return _assemble(model, mode, "meta" if to_meta else _device_of(model, args))


def _device_of(model: torch.nn.Module, args: tuple[Any, ...]) -> str:
    for tensor in model.parameters():
        return str(tensor.device)
    for arg in args:
        if isinstance(arg, torch.Tensor):
            return str(arg.device)
    return "cpu"


def _assemble(model: torch.nn.Module, mode: _CountingMode, executed_on: str) -> Counts:
    params = trainable = buffers = 0
    size_by_dtype: Counter[str] = Counter()
    module_params: Counter[str] = Counter()
    # named_parameters/named_buffers skip repeats of the same tensor object, so tied
    # weights count once, under the first module that owns them.
    for name, param in model.named_parameters():
        params += param.numel()
        trainable += param.numel() if param.requires_grad else 0
        size_by_dtype[_dtype_name(param.dtype)] += param.numel() * param.element_size()
        module_params[name.rpartition(".")[0]] += param.numel()
    for _, buffer in model.named_buffers():
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


# The part of an op call that decides its outputs' metadata and its cost on meta
# tensors: the op itself and, per argument, shape/stride/dtype or the plain value.
def _signature(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.stride(), value.dtype)
    if isinstance(value, (list, tuple)):
        return tuple(_signature(v) for v in value)
    return value


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


def _touched_bytes(tensor: torch.Tensor) -> int:
    # A broadcast (stride-0) dimension is read once, not once per repeat.
    elements = 1
    for size, stride in zip(tensor.shape, tensor.stride()):
        if stride != 0:
            elements *= int(size)
    return elements * tensor.element_size()


_NO_TRAFFIC = frozenset({"empty", "empty_strided", "empty_like", "new_empty", "detach", "alias"})


def _memory_traffic(func: Any, args: Any, kwargs: Mapping[str, Any], out: Any) -> int:
    """Bytes read plus bytes written by one op, if nothing were cached or fused."""
    if func.is_view or func.overloadpacket.__name__ in _NO_TRAFFIC:
        return 0
    seen: set[int] = set()
    total = 0
    for tensor in (*_tensors(args), *_tensors(tuple(kwargs.values())), *_tensors(out)):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += _touched_bytes(tensor)
    return total


_OUTPUT_PLANS: dict[Any, int | str | None] = {}


def _output_plan(func: Any) -> int | str | None:
    """How a cached meta call rebuilds its output.

    ``"fresh"``: outputs are new tensors, rebuilt from a template. An int: the op is
    in place and returns that argument (``relu_``, ``add_``); values mean nothing on
    meta, so the argument itself is the result. None: not cacheable (views, ops that
    change an argument's shape in place, ``out=`` variants).
    """
    if func in _OUTPUT_PLANS:
        return _OUTPUT_PLANS[func]
    schema = func._schema
    plan: int | str | None = None
    if func.is_view or torch.Tag.inplace_view in func.tags:
        plan = None
    elif all(r.alias_info is None for r in schema.returns):
        plan = "fresh"
    elif len(schema.returns) == 1 and schema.arguments and not schema.arguments[0].kwarg_only:
        first, ret = schema.arguments[0].alias_info, schema.returns[0].alias_info
        if first is not None and first.is_write and first.before_set == ret.before_set:
            plan = 0
    _OUTPUT_PLANS[func] = plan
    return plan


class _CountingMode(TorchDispatchMode):
    """Counts each ATen op; in meta mode also swaps real tensors for meta ones."""

    def __init__(self, *, to_meta: bool) -> None:
        super().__init__()
        self.to_meta = to_meta
        self.current_module: Any = lambda: ""
        self.module_macs: Counter[str] = Counter()
        self.module_traffic: Counter[str] = Counter()
        self.uncounted: Counter[str] = Counter()
        self.ops: list[OpRecord] = []
        # id(real tensor) -> (real tensor, meta twin). Holding the real tensor keeps
        # its id from being reused by a new tensor during the count.
        self._meta_twins: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # signature -> (output template, macs, traffic): on meta, outputs and costs
        # depend only on the signature, so repeated layers skip the meta kernels.
        self._cache: dict[Any, tuple[Any, int, int]] = {}

    def meta_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type == "meta":
            return tensor
        twin = self._meta_twins.get(id(tensor))
        if twin is None:
            meta = torch.empty_strided(
                tensor.shape, tensor.stride(), dtype=tensor.dtype, device="meta"
            )
            twin = (tensor, meta)
            self._meta_twins[id(tensor)] = twin
        return twin[1]

    def _to_meta(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return self.meta_tensor(value)
        if isinstance(value, (list, tuple)):
            return type(value)(self._to_meta(v) for v in value)
        return value

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if self.to_meta:
            args = tuple(self._to_meta(a) for a in args)
            kwargs = {k: self._to_meta(v) for k, v in kwargs.items()}
            return self._run_meta(func, args, kwargs)
        out = func(*args, **kwargs)
        self._record(func, args, kwargs, out, *self._costs(func, args, kwargs, out))
        return out

    def _run_meta(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        plan = _output_plan(func)
        key = None
        if plan is not None:
            try:
                key = (func, _signature(args), _signature(tuple(sorted(kwargs.items()))))
                hit = self._cache.get(key)
            except TypeError:  # an unhashable argument: no caching for this call
                key, hit = None, None
            if hit is not None:
                template, macs, traffic = hit
                out = args[plan] if isinstance(plan, int) else _from_template(template)
                self._record(func, args, kwargs, out, macs, traffic)
                return out
        out = func(*args, **kwargs)
        macs, traffic = self._costs(func, args, kwargs, out)
        if key is not None:
            self._cache[key] = (_template(out), macs, traffic)
        self._record(func, args, kwargs, out, macs, traffic)
        return out

    def _costs(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any
    ) -> tuple[int, int]:
        formula = mac_formula(func)
        macs = 0
        if formula is not None:
            first_out = next(_tensors(out), None)
            macs = int(formula(*args, out=first_out, **kwargs))
        elif not is_mac_free(func):
            macs = -1  # marks "uncounted" for _record
        return macs, _memory_traffic(func, args, kwargs, out)

    def _record(
        self,
        func: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        out: Any,
        macs: int,
        traffic: int,
    ) -> None:
        module = self.current_module()
        name = str(func.overloadpacket)
        if macs < 0:
            self.uncounted[name] += 1
            macs = 0
        self.module_macs[module] += macs
        self.module_traffic[module] += traffic
        first = next(_tensors(out), None)
        if first is None:
            first = next(_tensors(args), None)
        dtype = _dtype_name(first.dtype) if first is not None else "none"
        self.ops.append(OpRecord(module, name, macs, traffic, dtype))


@contextmanager
def _model_left_as_it_was(model: torch.nn.Module, *, restore_values: bool) -> Iterator[None]:
    """Snapshot what a forward could change on the model and the RNGs; restore it after.

    Attributes are restored for every module (a forward that caches a tensor, adds a
    hook or flips ``training`` leaves no trace). Tensor *values* can only change when
    the forward runs on real tensors, so only then are they copied and written back.
    """
    modules = list(model.modules())
    saved_dicts = [_shallow_dict_copy(m) for m in modules]
    tensors = [*model.parameters(), *model.buffers()]
    requires_grad = [t.requires_grad for t in tensors]
    values = [t.detach().clone() for t in tensors] if restore_values else []
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    python_rng = random.getstate()
    try:
        yield
    finally:
        for module, saved in zip(modules, saved_dicts):
            _restore_dict(module, saved)
        with torch.no_grad():
            for tensor, flag, value in zip(tensors, requires_grad, values or [None] * len(tensors)):
                if value is not None:
                    tensor.copy_(value)
                tensor.requires_grad_(flag)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        random.setstate(python_rng)


@dataclass(frozen=True)
class _SavedDict:
    original: dict[Any, Any]
    contents: dict[Any, Any]


def _shallow_dict_copy(module: torch.nn.Module) -> dict[str, Any]:
    # Inner dicts (_parameters, _buffers, _modules, hook dicts) are copied one level
    # too, and restored in place: hook handles hold weak references to those objects.
    return {
        key: _SavedDict(value, dict(value)) if isinstance(value, dict) else value
        for key, value in vars(module).items()
    }


def _restore_dict(module: torch.nn.Module, saved: dict[str, Any]) -> None:
    current = vars(module)
    for key in list(current):
        if key not in saved:
            del current[key]
    for key, value in saved.items():
        if isinstance(value, _SavedDict):
            inner, contents = value.original, value.contents
            if inner.keys() != contents.keys() or any(inner[k] is not v for k, v in contents.items()):
                inner.clear()
                inner.update(contents)
            current[key] = inner
        else:
            current[key] = value
