"""Where timing happens: device fingerprints, exclusive use of a device, the model moved there.

* A *fingerprint* names the kind of device a timing baseline belongs to (GPU name, or
  CPU model and thread count, plus dtype and mode). Baselines are compared only on the
  same fingerprint. A :class:`Placement` resolves device, threads and fingerprint once
  per measured call.
* :func:`exclusive_use` is the one context every timed or memory-measuring run goes
  through: a cross-process lock per device on this host (so pytest-xdist workers never
  time on the same device at once; counting stays parallel), the model moved to the
  device and back, a fixed CPU thread count, and the model left exactly as it was
  afterwards. What runs inside it is a :data:`Repeat`, which each kind of call supplies.
"""

from __future__ import annotations

import os
import platform
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported only where it is used: the report needs cpu_model() alone
    import torch


@cache
def cpu_model() -> str:
    """The CPU's marketing name, e.g. ``AMD EPYC 7B13``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def fingerprint(device: torch.device, *, threads: int, dtype: str, mode: str) -> str:
    """``cpu | AMD EPYC 7B13 | 1 thread | float32 | eager``; the key of timing baselines."""
    import torch

    kind = dtype
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"cuda | {name} | {kind} | {mode}"
    if device.type == "cpu":
        plural = "thread" if threads == 1 else "threads"
        return f"cpu | {cpu_model()} | {threads} {plural} | {kind} | {mode}"
    return f"{device.type} | {kind} | {mode}"


def model_device(model: Any, args: Sequence[Any]) -> torch.device:
    """Where the model's parameters (else buffers, else first tensor input) are."""
    import torch

    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device  # type: ignore[no-any-return]
    for arg in args:
        if isinstance(arg, torch.Tensor):
            return arg.device
    return torch.device("cpu")


def _dtype_of(model: Any, args: Sequence[Any]) -> torch.dtype:
    import torch

    for tensor in (*model.parameters(), *model.buffers(), *args):
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            return tensor.dtype
    return torch.float32


def batch_size_of(args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    """The first tensor input's leading dimension (1 for a scalar input)."""
    import torch

    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return int(value.shape[0]) if value.dim() else 1
    return 1


@dataclass(frozen=True)
class Placement:
    """Where a call is timed and under which fingerprint its timing baseline is kept."""

    device: torch.device
    threads: int | None  # CPU threads while timing; None: leave the setting alone (GPUs)
    fingerprint: str


def target_device(model: Any, args: Sequence[Any], device: str | None) -> torch.device:
    """Where the call runs when timed: ``device`` when named, else the model's device."""
    import torch

    return torch.device(device) if device else model_device(model, args)


def placement(
    model: Any,
    args: Sequence[Any],
    *,
    device: str | None,
    threads: int,
    cuda_graph: bool,
    autocast: str | None = None,
    mode: str = "eager",
) -> Placement:
    """The device (``device``, else the model's), thread count and fingerprint of a timed call.

    ``mode`` names the kind of call in the fingerprint (``eager``; ``train step``; a compiled
    call's ``compiled``, ``compiled:max-autotune``), so that a latency is only ever compared
    with a baseline of the same kind of call; an eager forward replayed as a CUDA graph is
    ``cuda-graph``.
    """
    import torch

    from ..errors import MeasurementError

    where = target_device(model, args, device)
    if where.type == "cuda" and not torch.cuda.is_available():
        raise MeasurementError(f"cannot time on {where}: CUDA is not available on this machine")
    cpu_threads = threads if where.type == "cpu" else None
    if cuda_graph and mode == "eager":
        mode = "cuda-graph"
    dtype = f"{autocast} autocast" if autocast else dtype_name(_dtype_of(model, args))
    key = fingerprint(where, threads=cpu_threads or torch.get_num_threads(), dtype=dtype, mode=mode)
    return Placement(where, cpu_threads, key)


def _lock_path(device: torch.device) -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else 0
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", str(device))
    return Path(tempfile.gettempdir()) / f"pytest-modelbudget-{uid}-{name}.lock"


@contextmanager
def device_lock(device: torch.device) -> Iterator[None]:
    """Exclusive use of ``device`` for timing among the processes of this host."""
    from filelock import FileLock  # imported with the first measurement, not at start-up

    with FileLock(_lock_path(device)):
        yield


@contextmanager
def _on_device(model: Any, device: torch.device) -> Iterator[None]:
    original = model_device(model, ())
    if original == device:
        yield
        return
    model.to(device)
    try:
        yield
    finally:
        model.to(original)


Repeat = Callable[["torch.device"], AbstractContextManager[Callable[[], object]]]
"""``repeat(device)`` opens what a run on a device repeats, once the model is there
(:func:`exclusive_use`), and yields the call: a forward (:func:`repeated_forward`), a
training step, a compiled forward."""


@dataclass(frozen=True)
class Repeated:
    """What a kind of call has timed and its CUDA peak taken: the model (what is moved to
    the device and fingerprinted), the call to repeat there, and its autocast dtype."""

    model: Any
    repeat: Repeat
    autocast: str | None = None  # the dtype torch.autocast runs the call in, for the fingerprint


def autocast_dtype(autocast: bool | str, device: torch.device) -> str | None:
    """The dtype of an ``autocast`` option: ``True`` is the device's usual half dtype
    (float16 on CUDA, bfloat16 elsewhere); ``False`` is none."""
    if autocast is True:
        return "float16" if device.type == "cuda" else "bfloat16"
    return autocast or None


@contextmanager
def repeated_forward(
    model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], device: torch.device, autocast: str | None
) -> Iterator[Callable[[], object]]:
    """The forward a run on ``device`` repeats (:func:`forward_on`), in inference mode; what
    the calls change in their inputs (a decode step's KV cache) is put back after."""
    import torch

    from .model_state import inputs_left_as_they_were

    with inputs_left_as_they_were((args, kwargs), restore_values=True), torch.inference_mode():
        yield forward_on(model, args, kwargs, device, autocast)


# glibc's mallopt parameters, and the values steady_heap() fixes them at: the largest
# threshold glibc's own dynamic adjustment can reach (32 MiB on 64-bit), and twice that for
# trimming, as glibc pairs them.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 * 2**20


@cache
def steady_heap() -> bool:
    """Fix glibc malloc's mmap and trim thresholds in this process, once, before CPU timing.

    By default glibc serves a large allocation with a fresh mmap until a free raises its
    threshold -- which depends on the order of the process's earlier allocations. Some
    processes end up mapping and zero-filling a forward's activation buffers on every call,
    others reuse them: the same unchanged model ran at 1.9 ms in some fresh processes and
    3.5 ms in others (docs/benchmarks.md), which no baseline can tell from a regression.
    With the thresholds fixed, buffers under 32 MiB are reused from the heap in every
    process. It changes only where this process's memory comes from (and keeps up to 64 MiB
    of freed heap instead of returning it); other platforms and allocators are left alone.
    Returns whether it applied.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD)
    )


@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    import torch

    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def autocast_to(device_type: str, dtype: str | None) -> AbstractContextManager[object]:
    """``torch.autocast`` to ``dtype`` on that device type; nothing when ``dtype`` is None."""
    import torch

    return torch.autocast(device_type, dtype=getattr(torch, dtype)) if dtype else nullcontext()


def forward_on(
    model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], device: torch.device, autocast: str | None
) -> Callable[[], object]:
    """``model(*args, **kwargs)`` with the tensor inputs moved to ``device`` once, under autocast
    when asked: the forward every real run on a device (timing, CUDA memory) repeats."""
    import torch
    from torch.utils._pytree import tree_map_only

    args = tree_map_only(torch.Tensor, lambda t: t.to(device), args)
    kwargs = tree_map_only(torch.Tensor, lambda t: t.to(device), dict(kwargs))

    def forward() -> object:
        with autocast_to(device.type, autocast):
            return model(*args, **kwargs)

    return forward


@contextmanager
def exclusive_use(model: Any, device: torch.device, threads: int | None = None) -> Iterator[None]:
    """Run the model alone on ``device`` (at ``threads`` CPU threads); leave it as it was after.

    Grad mode is the caller's: a forward repeats itself in inference mode
    (:func:`repeated_forward`), a training step needs autograd.
    """
    from .model_state import Inventory, model_left_as_it_was

    if device.type == "cpu":
        steady_heap()
    with (
        device_lock(device),
        model_left_as_it_was(Inventory.of(model), restore_values=True),
        _on_device(model, device),
        _threads(threads),
    ):
        yield
