"""Count a greedy generation -- prefill, decode steps, KV cache -- without arithmetic.

A real ``generate`` cannot run on meta tensors: it needs token values to pick the next
token and to decide when to stop. The count runs the greedy loop of :mod:`.loop` instead
(``generate``'s own preparation, prefill and decode steps, or the user's ``step``), the
cache growing on meta.

The prefill and the decode steps are counted by two :class:`~..counting.dispatch.CountingMode`\\ s
(one module tracker), so each has its MACs, breakdown by module and traffic. The KV cache is
what the cache object holds at the end (transformers), or the buffers the steps wrote into
(a static cache in buffers): bytes by dtype. The model, its generation config, its inputs, a
cache passed in, the buffers of a static cache and the RNG states are left as they were.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import MeasurementError
from ..counting.count import EXECUTION_MODES, Counts, ModuleTracker, assemble_counts, device_of
from ..counting.dispatch import CountingMode, counting_mode
from ..counting.held import SUBCLASS_WEIGHTS, has_subclass_weights
from ..model_state import Inventory, inputs_left_as_they_were, model_left_as_it_was
from .loop import Hooks, generate_greedy
from .spec import GenerationSpec, checked

__all__ = ["GenerationCounts", "count_generation"]


@dataclass(frozen=True)
class GenerationCounts:
    """What one greedy generation costs."""

    prefill: Counts  # the prompt's forward, as generate runs it (logits only where it asks)
    decode: Counts  # the decode steps after the first token, summed
    prompt_tokens: int
    new_tokens: int
    batch: int
    step_macs: tuple[int, ...]  # MACs of each decode step, in order
    kv_cache: int  # bytes the KV cache holds at the end
    kv_cache_by_dtype: Mapping[str, int] = field(default_factory=dict)
    executed_on: str = "meta"
    meta_refused: str = ""  # why an "auto" count ran on real tensors

    @property
    def last_step_macs(self) -> int:
        return self.step_macs[-1] if self.step_macs else 0

    @property
    def last_context(self) -> int:
        """Tokens the last decode step attends over: the prompt and every token fed since."""
        return self.prompt_tokens + self.new_tokens - 1


def count_generation(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    spec: GenerationSpec,
    *,
    execution: str = "auto",
) -> GenerationCounts:
    """Count ``spec.max_new_tokens`` greedy tokens after ``input_ids`` (see the module docstring).

    ``execution`` as for :func:`~..counting.count.count`: ``"meta"``, ``"real"`` or ``"auto"``.
    """
    if execution not in EXECUTION_MODES:
        raise MeasurementError(f"execution must be one of {EXECUTION_MODES}, got {execution!r}")
    input_ids = checked(model, input_ids, spec)
    if execution == "auto" and has_subclass_weights(model):
        counts = _count(model, input_ids, spec, to_meta=False)
        return GenerationCounts(**{**vars(counts), "meta_refused": SUBCLASS_WEIGHTS})
    if execution in ("auto", "meta"):
        try:
            return _count(model, input_ids, spec, to_meta=True)
        except MeasurementError:
            raise
        except Exception as error:  # any other failure on meta means "try real"
            if execution == "meta":
                raise MeasurementError(
                    f"the generation cannot run on the meta device ({type(error).__name__}: {error}); "
                    "count with execution='real'"
                ) from error
            refused = (
                f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}" if str(error) else ""
            )
            counts = _count(model, input_ids, spec, to_meta=False)
            return GenerationCounts(**{**vars(counts), "meta_refused": refused or type(error).__name__})
    return _count(model, input_ids, spec, to_meta=False)


class _Phases(Hooks):
    """The loop's hooks for a count: a counting mode for the prefill, one for the decode steps."""

    def __init__(self, inventory: Inventory, to_meta: bool, tracker: ModuleTracker) -> None:
        self.prefill_mode = counting_mode(to_meta=to_meta)
        self.decode_mode = counting_mode(to_meta=to_meta)
        parameters = frozenset(id(p) for _, p in inventory.parameters)
        buffers = frozenset(id(b) for _, b in inventory.buffers)
        for mode in (self.prefill_mode, self.decode_mode):
            mode.parameter_ids = parameters
            mode.buffer_ids = buffers  # a static cache in buffers: what the steps write
            mode.current_module = tracker.current
        self.step_macs: list[int] = []
        self.cache: Any = None

    def prefill(self) -> AbstractContextManager[object]:
        return self.prefill_mode

    def decode(self) -> AbstractContextManager[object]:
        return self.decode_mode

    @contextmanager
    def step(self) -> Iterator[None]:
        # One decode step's MACs: the decode mode's total after it, less before.
        before = sum(self.decode_mode.module_macs.values())
        yield
        self.step_macs.append(sum(self.decode_mode.module_macs.values()) - before)

    def finished(self, cache: Any) -> None:
        self.cache = cache

    def held(self) -> list[torch.Tensor]:
        """What the KV cache holds at the end: the cache object's keys and values, else the
        buffers the steps wrote (a static cache)."""
        if self.cache is not None:
            return _tensors_of(self.cache)
        written = {**self.prefill_mode.written, **self.decode_mode.written}
        return list(written.values())


def _count(
    model: torch.nn.Module, input_ids: torch.Tensor, spec: GenerationSpec, *, to_meta: bool
) -> GenerationCounts:
    inventory = Inventory.of(model)
    tracker = ModuleTracker({id(module): path for path, module in inventory.modules})
    phases = _Phases(inventory, to_meta, tracker)
    kwargs = dict(spec.generate_kwargs)
    with (
        model_left_as_it_was(inventory, restore_values=not to_meta),
        inputs_left_as_they_were(
            (input_ids, kwargs, getattr(model, "generation_config", None)), restore_values=not to_meta
        ),
        torch.no_grad(),
        _buffers_on_meta(inventory, (phases.prefill_mode, phases.decode_mode)) if to_meta else nullcontext(),
        tracker,
    ):
        generate_greedy(model, input_ids, spec, phases)
        held = phases.held()
    executed_on = "meta" if to_meta else device_of(inventory, (input_ids,))
    by_dtype: Counter[str] = Counter()
    for tensor in held:
        by_dtype[str(tensor.dtype).removeprefix("torch.")] += tensor.numel() * tensor.element_size()
    return GenerationCounts(
        prefill=assemble_counts(model, inventory, phases.prefill_mode, executed_on),
        decode=assemble_counts(model, inventory, phases.decode_mode, executed_on),
        prompt_tokens=int(input_ids.shape[1]),
        new_tokens=spec.max_new_tokens,
        batch=int(input_ids.shape[0]),
        step_macs=tuple(phases.step_macs),
        kv_cache=sum(by_dtype.values()),
        kv_cache_by_dtype=dict(sorted(by_dtype.items())),
        executed_on=executed_on,
    )


@contextmanager
def _buffers_on_meta(inventory: Inventory, modes: tuple[CountingMode, ...]) -> Iterator[None]:
    """The model's buffers as their meta twins while the generation counts on meta.

    A static KV cache is a buffer that every step reads beside the step's own (meta) keys
    and values; ops that check their arguments' devices before they dispatch
    (``scaled_dot_product_attention``) refuse a meta query beside a real cache. Writes into
    a twin still count as the buffer's (the modes map the twin back to it).
    """
    swapped: list[tuple[dict[str, Any], str, torch.Tensor]] = []
    for _, module in inventory.modules:
        for name, buffer in list(module._buffers.items()):
            if buffer is None or buffer.is_meta:
                continue
            twin = modes[0].meta_tensor(buffer)
            for mode in modes[1:]:
                mode.adopt(buffer, twin)
            module._buffers[name] = twin
            swapped.append((module._buffers, name, buffer))
    try:
        yield
    finally:
        for buffers, name, buffer in swapped:
            buffers[name] = buffer


def _tensors_of(cache: Any) -> list[torch.Tensor]:
    """The keys and values a cache holds: of each of its ``layers`` (transformers' caches, whose
    sliding-window layers keep only their window), else every distinct tensor it holds."""
    layers = getattr(cache, "layers", None)
    if isinstance(layers, (list, tuple)) and layers and all(hasattr(x, "keys") for x in layers):
        kept = [getattr(layer, name, None) for layer in layers for name in ("keys", "values")]
        return list({id(t): t for t in kept if isinstance(t, torch.Tensor)}.values())
    found: dict[int, torch.Tensor] = {}
    pending: list[Any] = [cache]
    seen: set[int] = set()
    while pending and len(seen) < 100_000:
        value = pending.pop()
        if id(value) in seen or value is None or isinstance(value, (str, bytes, int, float, bool)):
            continue
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            found.setdefault(id(value), value)
        elif isinstance(value, (list, tuple)):
            pending.extend(value)
        elif isinstance(value, Mapping):
            pending.extend(value.values())
        elif hasattr(value, "__dict__") and not isinstance(value, torch.nn.Module) and not callable(value):
            pending.extend(vars(value).values())
    return list(found.values())
