"""GPU memory of a forward pass: the allocator's peak, and the largest batch that fits.

Both run the model for real on a CUDA device, through :func:`~..devices.exclusive_use`
(the device to themselves, the model left as it was). On CPU the peak is the counter's
estimate from the dispatch trace instead (:attr:`~..counting.count.Counts.peak_memory`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

from ...errors import MeasurementError

if TYPE_CHECKING:
    import torch

    from ..devices import Repeat


def forward_peak_memory(forward: Callable[[], object], device: torch.device) -> int:
    """Allocator peak of one ``forward()`` above the level before it, after a first call.

    A training step (:func:`~..training.step.train_step_on`) adds what it holds between steps
    (parameters, buffers, optimizer state), so its peak is the whole step's, as estimated.
    """
    import torch

    forward()  # first call: lazy init and workspaces are not the forward's own memory
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    forward()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - before) + getattr(forward, "held_bytes", 0)


def cuda_peak_memory(
    model: Any,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    device: str | None = None,
    autocast: str | None = None,
    repeat: Repeat | None = None,
) -> int:
    """CUDA allocator peak of one forward on ``device`` (default: the model's), or of what
    ``repeat`` opens there (a steady-state training step, say: :data:`~..devices.Repeat`).

    The model and its inputs are moved there for the measurement and the model back after;
    ``autocast`` runs the forward under ``torch.autocast`` to that dtype, as timing does.
    """
    import torch

    from ..devices import exclusive_use, repeated_forward, target_device

    where = target_device(model, args, device)
    if where.type != "cuda" or not torch.cuda.is_available():
        raise MeasurementError(f"the CUDA memory peak needs a CUDA device, but the model runs on {where}")
    if repeat is None:
        repeat = partial(repeated_forward, model, args, kwargs, autocast=autocast)
    with exclusive_use(model, where), repeat(where) as run:
        try:
            return forward_peak_memory(run, where)
        except torch.OutOfMemoryError as error:
            raise MeasurementError(f"ran out of memory on {where} ({str(error).splitlines()[0]})") from None
        finally:
            torch.cuda.empty_cache()


def search_max_batch(fits: Callable[[int], bool], *, start: int = 1, limit: int = 1 << 16) -> int:
    """The largest batch for which ``fits(batch)`` holds: double until it fails, then bisect.

    0 when not even ``start`` fits; ``limit`` caps the search (reaching it means "at least").
    """
    if not fits(start):
        return 0
    low, high = start, None
    while high is None:
        candidate = min(low * 2, limit)
        if candidate == low:
            return low
        if fits(candidate):
            low = candidate
        else:
            high = candidate
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def max_batch(
    model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], *, device: str | None, limit: int
) -> int:
    """Largest batch of the inputs' first row that fits one forward on the CUDA device.

    ``device`` names the device (default: the model's). Every tensor input is rebuilt with
    its leading dimension set to the batch. Out of memory is caught and the memory released
    after each try.
    """
    import torch
    from torch.utils._pytree import tree_map_only

    from ..devices import exclusive_use, target_device

    where = target_device(model, args, device)
    if where.type != "cuda" or not torch.cuda.is_available():
        raise MeasurementError(
            f"min_max_batch needs a CUDA device, but the model runs on {where}: searching "
            "CPU memory for out-of-memory would endanger the test process itself"
        )

    def fits(batch: int) -> bool:
        def resized(tensor: torch.Tensor) -> torch.Tensor:
            row = tensor[:1].to(where)
            return row.expand(batch, *row.shape[1:]).contiguous()

        try:
            model(
                *tree_map_only(torch.Tensor, resized, args),
                **tree_map_only(torch.Tensor, resized, dict(kwargs)),
            )
            torch.cuda.synchronize(where)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()

    with exclusive_use(model, where), torch.inference_mode():
        return search_max_batch(fits, limit=limit)
