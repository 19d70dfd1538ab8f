"""Count MACs, params, size and memory traffic of one forward pass: the public entry point.

:func:`count` runs the forward under :class:`.dispatch.CountingMode`, which sees and prices
every ATen op, so functional code (``@``, ``einsum``, ``F.linear``, SDPA) counts exactly
like modules do. This module owns what is around that: the result values
(:class:`Counts`, :class:`ModuleStats`, and :class:`OpRecord` re-exported from
:mod:`.dispatch`), the choice of execution, knowing which module is running, and adding
up parameters, buffers and sizes.

By default the forward runs on the *meta* device: each real tensor an op touches
(weights, buffers, inputs) is swapped for a meta tensor of the same shape inside the
dispatch mode, so no arithmetic is done, no weight is copied, and the model object is
never touched. A model whose forward needs real values (``.item()``, data-dependent
shapes) is counted with real tensors instead; :attr:`Counts.executed_on` says which
happened. Nothing about a model is remembered between counts.

Either way the model is left exactly as it was (:mod:`~..model_state`): module
attributes, hooks, buffers and parameters, the training flag, ``requires_grad`` and the
global RNG states are snapshotted before the forward and restored after it, also when
it raises.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch.utils._pytree import tree_map_only

from ...errors import MeasurementError
from ..devices import autocast_to
from ..model_state import Inventory, inputs_left_as_they_were, model_left_as_it_was
from .dispatch import CountingMode, MetaArguments, OpRecord, counting_mode
from .exported import as_module, placed_forward
from .formulas import CONVENTION
from .held import SUBCLASS_WEIGHTS, has_subclass_weights, packed_tensors, storage_bytes

__all__ = ["EXECUTION_MODES", "Counts", "ModuleStats", "ModuleTracker", "OpRecord", "count"]

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
    # MACs by the dtype they ran in (float32, bfloat16, int8, ...); sums to ``macs``.
    macs_by_dtype: Mapping[str, int] = field(default_factory=dict)
    # Parameters one token passes through: all of them, but of a mixture-of-experts bank
    # only the k of E experts its router picks (:mod:`.experts`); None when a bank has no
    # router the counter can see, whose modules ``unrouted`` names.
    active_params: int | None = None
    unrouted: tuple[str, ...] = ()
    # Why an "auto" count ran on real tensors: the error the forward raised on meta ("" when
    # it ran on meta, or was asked to run on real tensors).
    meta_refused: str = ""
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


def count(
    model: torch.nn.Module,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    execution: str = "auto",
    autocast: str | None = None,
) -> Counts:
    """Count one forward ``model(*args, **kwargs)``.

    ``execution``: ``"meta"`` never does real arithmetic (raises if the model cannot run
    on meta tensors), ``"real"`` runs on the tensors as given, ``"auto"`` tries meta
    first and falls back to real. ``autocast`` (``"bfloat16"``, ``"float16"``) runs the
    forward under ``torch.autocast`` on the model's device, so ops count in the dtypes
    autocast picks; autocast acts on real tensors only, so it counts on real ones.
    """
    model = as_module(model)
    require_module(model)
    if execution not in EXECUTION_MODES:
        raise MeasurementError(f"execution must be one of {EXECUTION_MODES}, got {execution!r}")
    kwargs = dict(kwargs or {})
    if autocast is not None:
        if execution == "meta":
            raise MeasurementError(
                "autocast acts on real tensors only: count with execution='real' or 'auto'"
            )
        return _count_forward(model, args, kwargs, to_meta=False, autocast=autocast)
    refused = ""
    if execution == "auto" and has_subclass_weights(model):
        return replace(_count_forward(model, args, kwargs, to_meta=False), meta_refused=SUBCLASS_WEIGHTS)
    if execution in ("auto", "meta"):
        try:
            return _count_forward(model, args, kwargs, to_meta=True)
        except Exception as error:  # any failure on meta means "try real"
            if execution == "meta":
                raise MeasurementError(
                    f"the forward cannot run on the meta device ({type(error).__name__}: "
                    f"{error}); count with execution='real'"
                ) from error
            refused = _first_line(error)
    return replace(_count_forward(model, args, kwargs, to_meta=False), meta_refused=refused)


def _first_line(error: BaseException) -> str:
    """Why a forward could not run on meta, in a line (``aten.nonzero``: data-dependent, say)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__


def require_module(model: object) -> None:
    """Raises :class:`~...errors.MeasurementError` unless ``model`` is a ``torch.nn.Module``."""
    if not isinstance(model, torch.nn.Module):
        raise MeasurementError(
            f"expected a torch.nn.Module, got {type(model).__name__}; pass the model as the first argument"
        )


def _count_forward(
    model: torch.nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    to_meta: bool,
    autocast: str | None = None,
) -> Counts:
    inventory = Inventory.of(model)
    mode = counting_mode(to_meta=to_meta)
    mode.parameter_ids = frozenset(id(p) for _, p in inventory.parameters)
    tracker = ModuleTracker({id(module): path for path, module in inventory.modules})
    with (
        model_left_as_it_was(inventory, restore_values=not to_meta),
        inputs_left_as_they_were((args, kwargs), restore_values=not to_meta),
    ):
        if to_meta:
            args, kwargs = meta_inputs((args, kwargs), mode)
        # A function mode costs every torch call in the forward a Python round trip, so
        # it is only pushed where it is needed (see MetaArguments).
        has_rnn = any(isinstance(module, torch.nn.RNNBase) for _, module in inventory.modules)
        function_mode = MetaArguments(mode) if to_meta and has_rnn else nullcontext()
        device_type = device_of(inventory, args).split(":")[0]
        forward = placed_forward(model, tracker.placed) or model
        with torch.no_grad(), tracker, function_mode, autocast_to(device_type, autocast), mode:
            mode.current_module = tracker.current
            forward(*args, **kwargs)
    return assemble_counts(model, inventory, mode, "meta" if to_meta else device_of(inventory, args))


def meta_inputs(inputs: Any, mode: CountingMode) -> Any:
    """The inputs with meta twins of their tensors, a flex_attention BlockMask's included."""
    from .higher_order import meta_block_mask

    def twin(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return mode.meta_tensor(value)
        return meta_block_mask(value, mode.meta_tensor)

    return tree_map_only((torch.Tensor, *_block_mask_type()), twin, inputs)


def _block_mask_type() -> tuple[type, ...]:
    flex = sys.modules.get("torch.nn.attention.flex_attention")
    return (flex.BlockMask,) if flex is not None else ()


def device_of(inventory: Inventory, args: tuple[Any, ...]) -> str:
    for _, tensor in inventory.parameters:
        return str(tensor.device)
    for arg in args:
        if isinstance(arg, torch.Tensor):
            return str(arg.device)
    return "cpu"


def assemble_counts(
    model: torch.nn.Module, inventory: Inventory, mode: CountingMode, executed_on: str
) -> Counts:
    params = trainable = buffers = 0
    size_by_dtype: Counter[str] = Counter()
    module_params: Counter[str] = Counter()
    for path, param in inventory.parameters:
        numel = param.numel()  # logical elements, also of a quantized tensor subclass
        params += numel
        trainable += numel if param.requires_grad else 0
        size_by_dtype += storage_bytes(param)
        module_params[path] += numel
    for path, tensor in packed_tensors(model):  # torch.ao quantized modules
        params += tensor.numel()
        size_by_dtype += storage_bytes(tensor)
        module_params[path] += tensor.numel()
    for _, buffer in inventory.buffers:
        buffers += buffer.numel()
        size_by_dtype += storage_bytes(buffer)
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
        macs_by_dtype=dict(sorted(mode.macs_by_dtype.items())),
        active_params=mode.experts.active_params(params),
        unrouted=tuple(mode.experts.unrouted),
        ops=tuple(mode.ops),
    )


class ModuleTracker:
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

    @property
    def depth(self) -> int:
        """1 outside the model's forward, more inside a module's forward."""
        return len(self._stack)

    def _enter(self, module: torch.nn.Module, _args: Any) -> None:
        # Modules outside the model (built inside forward) belong to their caller.
        self._stack.append(self._names.get(id(module), self._stack[-1]))

    def _exit(self, _module: torch.nn.Module, _args: Any, _out: Any) -> None:
        if len(self._stack) > 1:
            self._stack.pop()

    @contextmanager
    def placed(self, path: str) -> Iterator[None]:
        """Ops run in this block belong to the module at ``path`` (an exported graph's node)."""
        self._stack.append(path)
        try:
            yield
        finally:
            self._stack.pop()

    def __enter__(self) -> ModuleTracker:
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
