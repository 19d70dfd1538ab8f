"""Latency of a forward pass: warm-up, synchronized timing, statistics, a noise-aware verdict.

How one measurement works:

* **Where**: on the device the model is on, or a named one (the model is moved there and
  back, so it is left as it was). On CPU at a fixed thread count (default 1), recorded in
  the fingerprint.
* **Warm-up**: the first calls (lazy init, cuDNN autotuning, allocator growth) are run and
  thrown away.
* **Blocks**: calls are timed in blocks long enough that the clock's resolution and the
  per-block overhead vanish; one sample = block time / calls in the block. On CUDA a
  block is bracketed by CUDA events and synchronized once at its end, never per call.
* **CUDA graphs** (optional): the forward is captured once and replays are timed,
  which removes host launch overhead -- the only stable latency for small GPU batches.
* **Adaptive**: blocks are run until the median is known to ``precision`` or the time
  budget is spent; the summary keeps median, p90, min, mean, IQR, counts and wall time.

How a measurement is judged against its baseline (:func:`judge`): a slowdown fails only
when it is beyond the tolerance *and* survives re-measurement *and* is not explained by
the machine itself being slower (probes in :mod:`.devices`); a slowdown that noise or the
machine can explain is "inconclusive", a warning by default.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .errors import MeasurementError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TimingSettings:
    device: str | None = None  # None: where the model's parameters are
    threads: int = 1  # CPU threads while timing
    time_budget_s: float = 1.5  # wall time for one measurement, warm-up included
    precision: float = 0.01  # stop early once the median's relative standard error is below this
    cuda_graph: bool = False
    min_samples: int = 10
    max_samples: int = 2000
    block_s: float = 0.01  # target duration of one timed block


@dataclass(frozen=True)
class TimingStats:
    """Summary of the per-call samples of one measurement, in milliseconds."""

    median_ms: float
    p90_ms: float
    min_ms: float
    mean_ms: float
    iqr_ms: float
    samples: int
    calls: int
    wall_s: float
    fingerprint: str = ""
    batch_size: int = 1
    peak_memory: int | None = None  # CUDA allocator peak above the pre-forward level

    @property
    def spread(self) -> float:
        """IQR relative to the median: the noise inside this measurement."""
        return self.iqr_ms / self.median_ms if self.median_ms else 0.0

    @property
    def throughput(self) -> float:
        """Items per second at ``batch_size`` items per call."""
        return self.batch_size * 1e3 / self.median_ms if self.median_ms else math.inf

    def stat(self, name: str) -> float:
        return self.p90_ms if name == "p90" else self.median_ms

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TimingStats:
        return cls(**data)


def summarize(samples_s: Sequence[float], *, calls: int, wall_s: float) -> TimingStats:
    """Per-call samples in seconds -> :class:`TimingStats` in milliseconds."""
    if not samples_s:
        raise ValueError("no samples")
    ms = sorted(s * 1e3 for s in samples_s)
    if len(ms) >= 2:
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
        p90 = statistics.quantiles(ms, n=10, method="inclusive")[-1]
    else:
        q1 = q3 = p90 = ms[0]
    return TimingStats(
        median_ms=statistics.median(ms),
        p90_ms=p90,
        min_ms=ms[0],
        mean_ms=statistics.fmean(ms),
        iqr_ms=q3 - q1,
        samples=len(ms),
        calls=calls,
        wall_s=wall_s,
    )


def _relative_error(samples: Sequence[float]) -> float:
    # Standard error of a median, from the IQR (robust to the odd outlier):
    # 1.2533 * sigma / sqrt(n) with sigma ~= IQR / 1.349.
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return 0.929 * (q3 - q1) / math.sqrt(len(samples)) / median if median else 0.0


def run_rounds(
    run_block: Callable[[int], float],
    settings: TimingSettings,
    *,
    clock: Callable[[], float] = time.perf_counter,
    progress: Progress | None = None,
) -> TimingStats:
    """The adaptive loop: calibrate the block size, then time blocks until precise or out of time.

    ``run_block(n)`` runs ``n`` calls and returns their total time in seconds; ``clock``
    measures wall time spent (both are replaceable, so the loop is tested with fakes).
    """
    start = clock()
    deadline = start + settings.time_budget_s
    # Warm-up: at least two calls, then up to a tenth of the budget.
    warm_calls = 0
    while warm_calls < 2 or (clock() - start < settings.time_budget_s * 0.1 and warm_calls < 50):
        one = run_block(1)
        warm_calls += 1
    per_call = max(one, 1e-9)
    number = max(1, min(10_000, math.ceil(settings.block_s / per_call)))
    if progress:
        progress(f"warm-up {warm_calls} calls, {per_call * 1e3:.3g} ms per call; blocks of {number}")
    samples: list[float] = []
    calls = 0
    while True:
        samples.append(run_block(number) / number)
        calls += number
        enough = len(samples) >= settings.min_samples
        if enough and _relative_error(samples) <= settings.precision:
            break
        if len(samples) >= settings.max_samples or (clock() >= deadline and len(samples) >= 3):
            break
    stats = summarize(samples, calls=calls, wall_s=clock() - start)
    if progress:
        progress(
            f"{stats.samples} samples of {number} calls in {stats.wall_s:.2f} s: "
            f"median {stats.median_ms:.4g} ms, spread {stats.spread:.1%}"
        )
    return stats


# -- running on a device ------------------------------------------------------------


def model_device(model: Any, args: Sequence[Any]) -> Any:
    import torch

    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    for arg in args:
        if isinstance(arg, torch.Tensor):
            return arg.device
    return torch.device("cpu")


def _dtype_of(model: Any, args: Sequence[Any]) -> Any:
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


@contextmanager
def _on_device(model: Any, device: Any) -> Iterator[None]:
    original = model_device(model, ())
    if original == device:
        yield
        return
    model.to(device)
    try:
        yield
    finally:
        model.to(original)


@contextmanager
def _threads(count: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cuda_block_timer(call: Callable[[], object]) -> Callable[[int], float]:
    import torch

    def run_block(number: int) -> float:
        start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
        torch.cuda.synchronize()
        start.record()
        for _ in range(number):
            call()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end)) / 1e3

    return run_block


def _cpu_block_timer(call: Callable[[], object]) -> Callable[[int], float]:
    def run_block(number: int) -> float:
        start = time.perf_counter()
        for _ in range(number):
            call()
        return time.perf_counter() - start

    return run_block


def _capture_cuda_graph(forward: Callable[[], object]) -> Callable[[], object]:
    import torch

    stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm up on a side stream, as capture requires
            forward()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            forward()
    except Exception as error:
        raise MeasurementError(
            f"the forward cannot be captured as a CUDA graph ({type(error).__name__}: {error}); "
            "time it without cuda_graph, or make the forward capturable "
            "(static shapes, no host synchronisation, no CPU tensors)"
        ) from error
    return graph.replay


def time_forward(
    model: Any,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any] | None = None,
    settings: TimingSettings | None = None,
    *,
    batch_size: int | None = None,
    progress: Progress | None = None,
) -> TimingStats:
    """Time ``model(*args, **kwargs)``; the model is left as it was."""
    import torch
    from torch.utils._pytree import tree_map_only

    from .devices import device_lock
    from .model_state import Inventory, model_left_as_it_was

    settings = settings or TimingSettings()
    kwargs = dict(kwargs or {})
    device = torch.device(settings.device) if settings.device else model_device(model, args)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MeasurementError(f"cannot time on {device}: CUDA is not available on this machine")
    if settings.cuda_graph and device.type != "cuda":
        raise MeasurementError(f"cuda_graph timing needs a CUDA device, but the model runs on {device}")
    threads = settings.threads if device.type == "cpu" else torch.get_num_threads()
    key = fingerprint_for(model, args, settings)
    batch = batch_size if batch_size is not None else batch_size_of(args, kwargs)
    if progress:
        progress(f"timing on {key}")
    with (
        device_lock(device),
        model_left_as_it_was(Inventory.of(model), restore_values=True),
        _on_device(model, device),
        _threads(threads),
        torch.inference_mode(),
    ):
        args = tree_map_only(torch.Tensor, lambda t: t.to(device), args)
        kwargs = tree_map_only(torch.Tensor, lambda t: t.to(device), kwargs)

        def forward() -> object:
            return model(*args, **kwargs)

        try:
            if device.type == "cuda":
                peak = _cuda_peak_memory(forward, device)
                call = _capture_cuda_graph(forward) if settings.cuda_graph else forward
                stats = run_rounds(_cuda_block_timer(call), settings, progress=progress)
            else:
                peak = None
                stats = run_rounds(_cpu_block_timer(forward), settings, progress=progress)
        except torch.OutOfMemoryError as error:
            raise MeasurementError(
                f"ran out of memory on {device} while timing ({str(error).splitlines()[0]}); "
                "use a smaller batch or a larger device"
            ) from None
        finally:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.empty_cache()
    return TimingStats(**{**stats.to_dict(), "fingerprint": key, "batch_size": batch, "peak_memory": peak})


def cuda_peak_memory(model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """CUDA allocator peak of one forward above the level before it; the model is left as it was."""
    import torch

    from .model_state import Inventory, model_left_as_it_was

    device = model_device(model, args)
    with model_left_as_it_was(Inventory.of(model), restore_values=True), torch.inference_mode():
        try:
            return _cuda_peak_memory(lambda: model(*args, **kwargs), device)
        except torch.OutOfMemoryError as error:
            raise MeasurementError(f"ran out of memory on {device} ({str(error).splitlines()[0]})") from None
        finally:
            torch.cuda.empty_cache()


def _cuda_peak_memory(forward: Callable[[], object], device: Any) -> int:
    import torch

    forward()  # first call: lazy init and workspaces are not the forward's own memory
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    forward()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - before)


# -- judging against a baseline -----------------------------------------------------


@dataclass(frozen=True)
class LatencyBaseline:
    """What budgets.yaml keeps per device fingerprint."""

    median_ms: float
    p90_ms: float
    spread: float
    probes: Mapping[str, float] = field(default_factory=dict)
    min_ms: float | None = None  # the fastest call: what interference cannot inflate
    samples: int = 0

    def stat(self, name: str) -> float:
        return self.p90_ms if name == "p90" else self.median_ms


def _standard_error(spread: float, samples: int) -> float:
    # Relative standard error of a median from the IQR: 1.2533 * sigma / sqrt(n), sigma ~= IQR / 1.349.
    return 0.929 * spread / math.sqrt(samples) if samples > 0 else spread


@dataclass(frozen=True)
class TimingVerdict:
    status: str  # "ok", "over" or "inconclusive"
    measured_ms: float  # the statistic of the best (least disturbed) measurement
    reference_ms: float
    reason: str = ""


def judge(
    measurements: Sequence[TimingStats],
    baseline: LatencyBaseline,
    *,
    tolerance: float,
    stat: str = "median",
    slowdown: float | None = None,
) -> TimingVerdict:
    """Pure decision for one call, from the measurements taken so far.

    A slowdown beyond ``tolerance`` fails only when nothing else explains it:

    * ``measured`` is the best of the measurements: interference only ever makes a run
      slower, so the fastest run is the closest to the model's real speed;
    * *interference*: when the fastest calls are still within tolerance of the baseline's
      fastest calls, the model itself did not get slower -- time was lost to other work on
      the machine (a slower model makes every call slower, the fastest ones too);
    * *noise*: the difference must exceed three standard errors of both medians;
    * *the machine*: ``slowdown`` is how much slower the speed probes run than when the
      baseline was recorded (None: not probed yet).
    """
    best = min(measurements, key=lambda m: m.stat(stat))
    measured, reference = best.stat(stat), baseline.stat(stat)
    allowed = reference * (1.0 + tolerance)
    if measured <= allowed:
        return TimingVerdict("ok", measured, reference)
    fastest = min(m.min_ms for m in measurements)
    if baseline.min_ms and fastest <= baseline.min_ms * (1.0 + tolerance):
        return TimingVerdict(
            "inconclusive",
            measured,
            reference,
            f"the fastest calls ({fastest:.4g} ms) are within {tolerance:.0%} of the baseline's "
            f"({baseline.min_ms:.4g} ms): the time was lost to other work on this machine",
        )
    error = max(
        _standard_error(best.spread, best.samples), _standard_error(baseline.spread, baseline.samples)
    )
    if measured <= allowed * (1.0 + 3.0 * error):
        return TimingVerdict(
            "inconclusive",
            measured,
            reference,
            f"beyond the {tolerance:.0%} tolerance but within the measured noise (spread {best.spread:.1%})",
        )
    machine_explains = slowdown is not None and measured <= allowed * slowdown
    if slowdown is not None and slowdown > 1.0 + tolerance / 2 and machine_explains:
        return TimingVerdict(
            "inconclusive",
            measured,
            reference,
            f"this machine is {slowdown - 1:.0%} slower than when the baseline was recorded "
            "(speed probes), which explains the slowdown",
        )
    return TimingVerdict("over", measured, reference)


def judge_limit(
    measurements: Sequence[TimingStats], limit_ms: float, *, stat: str = "median"
) -> TimingVerdict:
    """A hard latency limit: over when even the best measurement is clearly above it."""
    best = min(measurements, key=lambda m: m.stat(stat))
    measured = best.stat(stat)
    if measured <= limit_ms:
        return TimingVerdict("ok", measured, limit_ms)
    if measured <= limit_ms * (1.0 + 2.0 * best.spread):
        reason = f"above the limit but within the measured noise (spread {best.spread:.1%})"
        return TimingVerdict("inconclusive", measured, limit_ms, reason)
    return TimingVerdict("over", measured, limit_ms)


REMEASUREMENTS = 2  # extra measurements before a slowdown is believed


def measure_and_judge(
    measure: Callable[[], TimingStats],
    *,
    limits_ms: Sequence[float],
    baseline: LatencyBaseline | None,
    tolerance: float,
    stat: str,
    probe: Callable[[], Mapping[str, float]],
) -> tuple[list[TimingStats], list[TimingVerdict], float | None]:
    """Measure, and re-measure (then probe the machine) only while something looks slow.

    Returns every measurement taken; one verdict per limit, then one for the baseline if
    there is one; and the machine slowdown if the probes were run.
    """
    measurements = [measure()]
    slowdown: float | None = None

    def verdicts() -> list[TimingVerdict]:
        found = [judge_limit(measurements, limit, stat=stat) for limit in limits_ms]
        if baseline is not None:
            found.append(judge(measurements, baseline, tolerance=tolerance, stat=stat, slowdown=slowdown))
        return found

    current = verdicts()
    while any(v.status != "ok" for v in current) and len(measurements) <= REMEASUREMENTS:
        measurements.append(measure())
        current = verdicts()
    if baseline is not None and baseline.probes and current[-1].status == "over":
        from .devices import machine_slowdown

        slowdown = machine_slowdown(probe(), baseline.probes)
        current = verdicts()
    return measurements, current, slowdown


def fingerprint_for(model: Any, args: Sequence[Any], settings: TimingSettings) -> str:
    """The fingerprint :func:`time_forward` will record, without timing anything."""
    import torch

    from .devices import fingerprint

    device = torch.device(settings.device) if settings.device else model_device(model, args)
    threads = settings.threads if device.type == "cpu" else torch.get_num_threads()
    mode = "cuda-graph" if settings.cuda_graph else "eager"
    return fingerprint(device, threads=threads, dtype=_dtype_of(model, args), mode=mode)


# -- largest batch that fits --------------------------------------------------------


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
    model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], settings: TimingSettings, *, limit: int
) -> int:
    """Largest batch of the inputs' first row that fits one forward on the CUDA device.

    Every tensor input is rebuilt with its leading dimension set to the batch. Out of
    memory is caught and the memory released after each try.
    """
    import torch
    from torch.utils._pytree import tree_map_only

    from .devices import device_lock
    from .model_state import Inventory, model_left_as_it_was

    device = torch.device(settings.device) if settings.device else model_device(model, args)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise MeasurementError(
            f"min_max_batch needs a CUDA device, but the model runs on {device}: searching "
            "CPU memory for out-of-memory would endanger the test process itself"
        )

    def fits(batch: int) -> bool:
        def resized(tensor: torch.Tensor) -> torch.Tensor:
            row = tensor[:1].to(device)
            return row.expand(batch, *row.shape[1:]).contiguous()

        try:
            model(
                *tree_map_only(torch.Tensor, resized, args),
                **tree_map_only(torch.Tensor, resized, dict(kwargs)),
            )
            torch.cuda.synchronize(device)
            return True
        except torch.OutOfMemoryError:
            return False
        finally:
            torch.cuda.empty_cache()

    with (
        device_lock(device),
        model_left_as_it_was(Inventory.of(model), restore_values=True),
        _on_device(model, device),
        torch.inference_mode(),
    ):
        return search_max_batch(fits, limit=limit)
