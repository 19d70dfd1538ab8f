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
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import MeasurementError

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TimingSettings:
    device: str | None = None  # None: where the model's parameters are
    threads: int = 1  # CPU threads while timing
    time_budget_s: float = 1.5  # wall time for one measurement, warm-up included
    # Sample at least this long even when the median is already precise: a shared machine's
    # speed changes over seconds, and a tenth of a second would see one moment of it.
    min_time_s: float = 1.0
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
    # CPU: the median over blocks of (time per call / time of the speed probe run just before
    # the block) -- the model's cost in units of the machine's speed at that moment.
    relative: float | None = None
    relative_spread: float | None = None  # IQR / median of those ratios: the noise of `relative`
    probes: Mapping[str, float] = field(default_factory=dict)  # median probe times during the measurement, ms

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
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"probes": dict(self.probes)}

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


def _spread(values: Sequence[float]) -> float:
    """IQR / median (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (q3 - q1) / median if median else 0.0


def _standard_error(spread: float, samples: int) -> float:
    # Relative standard error of a median from the IQR: 1.2533 * sigma / sqrt(n), sigma ~= IQR / 1.349.
    return 0.929 * spread / math.sqrt(samples) if samples > 0 else spread


def _relative_error(samples: Sequence[float]) -> float:
    """The relative standard error of the median of ``samples``."""
    return _standard_error(_spread(samples), len(samples))


# The clock of every measurement; a module attribute so end-to-end tests can replace it
# together with the block timer (``run_block``) and so fake the passing of time.
wall_clock: Callable[[], float] = time.perf_counter


def run_rounds(
    run_block: Callable[[int], float],
    settings: TimingSettings,
    *,
    clock: Callable[[], float] | None = None,
    progress: Progress | None = None,
    speed_probe: Callable[[], float] | None = None,
) -> TimingStats:
    """The adaptive loop: calibrate the block size, then time blocks until precise or out of time.

    ``run_block(n)`` runs ``n`` calls and returns their total time in seconds; ``clock``
    measures wall time spent (default :data:`wall_clock`; both are replaceable, so the loop
    is tested with fakes).
    ``speed_probe()`` (CPU) runs a small fixed workload before every block and returns its
    time; the ratio of each block's time per call to it goes into ``relative``.
    """
    clock = clock or wall_clock
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
    ratios: list[float] = []
    while True:
        probe_s = speed_probe() if speed_probe else None
        samples.append(run_block(number) / number)
        if probe_s:
            ratios.append(samples[-1] / probe_s)
        calls += number
        enough = len(samples) >= settings.min_samples and clock() - start >= settings.min_time_s
        if enough and _relative_error(samples) <= settings.precision:
            break
        if len(samples) >= settings.max_samples or (clock() >= deadline and len(samples) >= 3):
            break
    stats = summarize(samples, calls=calls, wall_s=clock() - start)
    if ratios:
        stats = replace(stats, relative=statistics.median(ratios), relative_spread=_spread(ratios))
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

    from .devices import SpeedProbe, device_lock
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
                probe = SpeedProbe()
                stats = run_rounds(_cpu_block_timer(forward), settings, progress=progress, speed_probe=probe)
                stats = replace(stats, probes=probe.medians_ms())
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
    min_ms: float | None = None
    samples: int = 0
    # The model's cost relative to the machine's speed (TimingStats.relative; CPU only).
    # Baselines without it (CUDA, or written before it existed) are judged by the latency alone.
    relative: float | None = None
    relative_spread: float | None = None

    def stat(self, name: str) -> float:
        return self.p90_ms if name == "p90" else self.median_ms

    @classmethod
    def from_stats(cls, stats: TimingStats, probes: Mapping[str, float] | None = None) -> LatencyBaseline:
        """The baseline a measurement records (``probes``: when not taken during it)."""
        return cls(
            median_ms=stats.median_ms,
            p90_ms=stats.p90_ms,
            spread=stats.spread,
            probes=dict(stats.probes if probes is None else probes),
            min_ms=stats.min_ms,
            samples=stats.samples,
            relative=stats.relative,
            relative_spread=stats.relative_spread,
        )

    @classmethod
    def from_stored(cls, stored: Mapping[str, Any]) -> LatencyBaseline | None:
        """From a ``timing:`` entry of budgets.yaml; None when it holds no latency."""
        if not all(key in stored for key in ("median_ms", "p90_ms", "spread")):
            return None
        return cls(
            median_ms=stored["median_ms"],
            p90_ms=stored["p90_ms"],
            spread=stored["spread"],
            probes=dict(stored.get("probes", {})),
            min_ms=stored.get("min_ms"),
            samples=int(stored.get("samples", 0)),
            relative=stored.get("relative"),
            relative_spread=stored.get("relative_spread"),
        )


@dataclass(frozen=True)
class TimingVerdict:
    status: str  # "ok", "over" or "inconclusive"
    measured_ms: float  # the statistic of the best (least disturbed) measurement
    reference_ms: float
    reason: str = ""
    own_slowdown: float | None = None  # the model's own slowdown, when the baseline allows it (see judge)
    machine: float | None = None  # how much slower the machine ran, from probes during the measurements


def _own_slowdown(
    measurements: Sequence[TimingStats], baseline: LatencyBaseline
) -> tuple[float, float] | None:
    """The model's slowdown relative to the machine's speed, and its standard error.

    The least slowed of the measurements: interference only ever slows one down.
    """
    found = [
        (m.relative / baseline.relative, _standard_error(_or(m.relative_spread, m.spread), m.samples))
        for m in measurements
        if m.relative and baseline.relative
    ]
    if not found:
        return None
    own, error = min(found)
    baseline_error = _standard_error(_or(baseline.relative_spread, baseline.spread), baseline.samples)
    return own, max(error, baseline_error)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def judge(
    measurements: Sequence[TimingStats],
    baseline: LatencyBaseline,
    *,
    tolerance: float,
    stat: str = "median",
    slowdown: float | None = None,
) -> TimingVerdict:
    """Pure decision for one call, from the measurements taken so far.

    It looks at the measurements two ways:

    * the *latency* the user reads: the best measurement's median (or p90) against the
      baseline's. Within ``tolerance`` that is fine -- unless the second view shows the
      model clearly slower;
    * on CPU, the model's *own* slowdown: its time per call relative to a speed probe (a
      small matmul) timed just before each block of calls, against the same ratio in the
      baseline. A shared machine goes through slow periods in which the model and the probe
      slow down together, and the ratio barely moves; a slower model moves it.

    "over" needs the own slowdown beyond the tolerance *and* beyond three standard errors
    of the median ratios. A latency beyond the tolerance that the own slowdown does not confirm
    is "inconclusive": the time was lost to the machine, not the model.

    Where there is no ratio (CUDA, or a baseline recorded without it) the latency decides,
    and ``slowdown`` -- the machine's slowdown from probes timed *after* the measurements,
    None when not probed -- can make a slowdown inconclusive.
    """
    best = min(measurements, key=lambda m: m.stat(stat))
    measured, reference = best.stat(stat), baseline.stat(stat)
    error = max(
        _standard_error(best.spread, best.samples), _standard_error(baseline.spread, baseline.samples)
    )
    found = _own_slowdown(measurements, baseline)
    if found is None:
        return _judge_latency_only(measured, reference, tolerance, error, best.spread, slowdown)
    own, own_error = found
    # How much slower the machine ran: the part of the latency change the model does not explain.
    machine = measured / reference / own
    verdict = _judge_own_slowdown(own, own_error, machine, measured, reference, tolerance)
    return replace(verdict, own_slowdown=own, machine=machine)


def _judge_own_slowdown(
    own: float, error: float, machine: float, measured: float, reference: float, tolerance: float
) -> TimingVerdict:
    relative = (
        f"relative to this machine's speed (a probe timed before each block of calls) the model is "
        f"{_change(own)} the baseline; the machine ran {_change(machine)} when the baseline was recorded"
    )
    if own > (1.0 + tolerance) * (1.0 + 3.0 * error):
        return TimingVerdict("over", measured, reference, relative)
    if measured <= reference * (1.0 + tolerance):
        return TimingVerdict("ok", measured, reference)
    if own <= 1.0 + tolerance:
        return TimingVerdict(
            "inconclusive",
            measured,
            reference,
            f"{relative}: within the {tolerance:.0%} tolerance, the time was lost to the machine",
        )
    return TimingVerdict(
        "inconclusive",
        measured,
        reference,
        f"{relative}: beyond the {tolerance:.0%} tolerance but within the measured noise "
        f"(standard error {error:.1%})",
    )


def _change(ratio: float) -> str:
    """1.22 -> ``22% slower than``; 0.9 -> ``10% faster than``; 1.001 -> ``as fast as``."""
    if round(abs(ratio - 1.0), 2) == 0:
        return "as fast as"
    return f"{abs(ratio - 1.0):.0%} {'slower' if ratio > 1.0 else 'faster'} than"


def _judge_latency_only(
    measured: float,
    reference: float,
    tolerance: float,
    error: float,
    spread: float,
    slowdown: float | None,
) -> TimingVerdict:
    """The verdict without a ``relative`` ratio: the latency, its noise, the machine."""
    ratio = measured / reference
    if ratio <= 1.0 + tolerance:
        return TimingVerdict("ok", measured, reference)
    if ratio <= (1.0 + tolerance) * (1.0 + 3.0 * error):
        return TimingVerdict(
            "inconclusive",
            measured,
            reference,
            f"beyond the {tolerance:.0%} tolerance but within the measured noise (spread {spread:.1%})",
        )
    if slowdown is not None and slowdown > 1.0 + tolerance / 2 and ratio <= (1.0 + tolerance) * slowdown:
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
RECORD_MEASUREMENTS = 3  # measurements when a baseline is recorded (see recorded)


def measure_and_judge(
    measure: Callable[[], TimingStats],
    *,
    limits_ms: Sequence[float],
    baseline: LatencyBaseline | None,
    tolerance: float,
    stat: str,
    probe: Callable[[], Mapping[str, float]],
    at_least: int = 1,
) -> tuple[list[TimingStats], list[TimingVerdict], float | None]:
    """Measure, and re-measure (then probe the machine) only while something looks slow.

    ``at_least`` measurements are taken regardless (``RECORD_MEASUREMENTS`` when a baseline
    is being recorded: a baseline taken in a slow moment would hide later regressions).
    Returns every measurement taken; one verdict per limit, then one for the baseline if
    there is one; and the machine slowdown if the probes were run after the fact.
    """
    measurements = [measure() for _ in range(max(1, at_least))]
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
    # Probes after the fact, where no ratio to the machine's speed was measured (CUDA).
    if baseline is not None and baseline.probes:
        verdict = current[-1]  # the baseline's
        if verdict.status == "over" and verdict.own_slowdown is None:
            from .devices import machine_slowdown

            slowdown = machine_slowdown(probe(), baseline.probes)
            current = verdicts()
    return measurements, current, slowdown


def recorded(measurements: Sequence[TimingStats], stat: str = "median") -> TimingStats:
    """What a baseline keeps of the measurements taken to record it.

    With a ``relative`` ratio (CPU) the ratio decides regressions, so the baseline keeps the
    typical measurement -- the median by latency -- with the median of the ratios. A
    latency baseline from the fastest moment would make every later run of an unchanged
    model look slow ("inconclusive") for no reason. Without a ratio (CUDA) the latency
    decides, and a baseline taken in a slow moment would hide later regressions: the
    fastest measurement is kept.
    """
    ordered = sorted(measurements, key=lambda m: m.stat(stat))
    ratios = [m.relative for m in measurements if m.relative]
    if not ratios:
        return ordered[0]
    return replace(ordered[(len(ordered) - 1) // 2], relative=statistics.median(ratios))


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
