"""Latency of a forward pass: warm-up, synchronized timing, statistics.

How one measurement works:

* **Where**: on the device the model is on, or a named one (:mod:`..devices` moves the
  model there and back, so it is left as it was). On CPU at a fixed thread count
  (default 1), recorded in the fingerprint.
* **Warm-up**: the first calls (lazy init, cuDNN autotuning, allocator growth) are run and
  thrown away.
* **Blocks**: calls are timed in blocks long enough that the clock's resolution and the
  per-block overhead vanish; one sample = block time / calls in the block. On CUDA a
  block is bracketed by CUDA events and synchronized once at its end, never per call. On
  CPU with one thread a block (and the speed probe before it) is also timed by its own
  time (:mod:`.own_time`): the wall time less the moments other processes had the core
  (the kernel's run-queue figures), or the thread's CPU time where there are none.
* **CUDA graphs** (optional): the forward is captured once and replays are timed,
  which removes host launch overhead -- the only stable latency for small GPU batches.
* **Adaptive**: blocks are run until the caller's verdict is clear (``decided``), or the
  median is known to ``precision``, or the time budget is spent; the summary keeps
  median, p90, min, mean, IQR, counts, wall time and the ratios to the probe.

How a measurement is judged is :mod:`~...budgets.timing_verdicts`' job; peak memory and the largest
batch that fits are :mod:`.cuda_memory`'s.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

from ...errors import MeasurementError
from .probes import ProbeRun

if TYPE_CHECKING:
    from ..devices import Placement, Repeat
    from .own_time import OwnClock

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TimingSettings:
    device: str | None = None  # None: where the model's parameters are
    threads: int = 1  # CPU threads while timing
    time_budget_s: float = 1.5  # wall time for one measurement, warm-up included
    # Sample at least this long even when the median is already precise: a shared machine's
    # speed changes over seconds, and a tenth of a second would see one moment of it.
    min_time_s: float = 1.0
    # ...unless the caller's verdict is already clear (``run_rounds(decided=...)``): then this
    # long is enough. A call clearly within its budget pays for no more.
    min_decide_s: float = 0.15
    # Warm-up before the first timed block: at least two calls, then up to this long (or 50
    # calls). Lazy initialisation, kernel selection and the allocator settle in a few calls.
    warmup_s: float = 0.05
    precision: float = 0.01  # stop early once the median's relative standard error is below this
    cuda_graph: bool = False
    autocast: str | None = None  # time under torch.autocast to this dtype ("bfloat16", "float16")
    # The kind of call in the fingerprint: "eager" (a forward), "train step", "compiled", ...
    mode: str = "eager"
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
    # The clock `relative` was measured on (CPU, one thread): "sched", wall time less the
    # run-queue waits the scheduler gave other processes (a forward's own waits are in it);
    # "thread", the timing thread's CPU time (no scheduler figures: its waits are not);
    # "wall", wall time. The first two leave other processes out (own_time.OWN_CLOCKS).
    own_clock: str = "wall"
    # The lower quartile of those ratios: the model's cost in the blocks a neighbour disturbed
    # least (interference only ever slows a block down). What a slowdown is judged by.
    relative_low: float | None = None
    # Against the probe's second run, straight after its first (probes.ProbeRun): the lower
    # quartile of the blocks' ratios, and their IQR / median. What baselines from budgets.yaml
    # version 2 on keep and are judged by: the quartile now against the quartile then (the
    # first run's ratios compare a quartile with a median, which reads a few percent low).
    relative_settled: float | None = None
    relative_settled_spread: float | None = None
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
        return cls(**{**data, "probes": dict(data.get("probes", {}))})


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


def spread_of(values: Sequence[float]) -> float:
    """IQR / median (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (q3 - q1) / median if median else 0.0


def _lower_quartile(values: Sequence[float]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=4, method="inclusive")[0]


def standard_error(spread: float, samples: int) -> float:
    # Relative standard error of a median from the IQR: 1.2533 * sigma / sqrt(n), sigma ~= IQR / 1.349.
    return 0.929 * spread / math.sqrt(samples) if samples > 0 else spread


def _relative_error(samples: Sequence[float]) -> float:
    """The relative standard error of the median of ``samples``."""
    return standard_error(spread_of(samples), len(samples))


# The clock of every measurement; a module attribute so end-to-end tests can replace it
# together with the block timer (``run_block``) and so fake the passing of time.
wall_clock: Callable[[], float] = time.perf_counter


class Block(NamedTuple):
    """One timed block of calls, in seconds: its wall time, and the model's own time in it
    (:mod:`.own_time`) -- which leaves out the moments a neighbour had the core."""

    wall_s: float
    own_s: float


def _block(value: float | Block) -> Block:
    # A block timer may return one number: wall and own time alike (CUDA, fakes).
    return value if isinstance(value, Block) else Block(value, value)


def _probe_run(value: float | ProbeRun) -> ProbeRun:
    # A speed probe may return one number: both runs alike (fakes).
    return value if isinstance(value, ProbeRun) else ProbeRun(value, value)


def run_rounds(
    run_block: Callable[[int], float | Block],
    settings: TimingSettings,
    *,
    clock: Callable[[], float] | None = None,
    progress: Progress | None = None,
    speed_probe: Callable[[], float | ProbeRun] | None = None,
    decided: Callable[[TimingStats], bool] | None = None,
    own_clock: str = "wall",
) -> TimingStats:
    """The adaptive loop: calibrate the block size, then time blocks until precise, decided or
    out of time.

    ``run_block(n)`` runs ``n`` calls and returns their total time in seconds (or a
    :class:`Block`: wall and own time); ``clock`` measures wall time spent (default
    :data:`wall_clock`; both are replaceable, so the loop is tested with fakes).
    ``speed_probe()`` (CPU) runs a small fixed workload before every block and returns its
    time (a :class:`~.probes.ProbeRun`: the first and the settled run), on the same clock as the
    block's own time; the ratio of each block's own time per call to the first run goes into
    ``relative``, to the settled run into ``relative_settled`` (``own_clock`` names that
    clock: "sched", "thread" or "wall").
    ``decided(stats)`` says whether the samples so far already settle the caller's verdict:
    from ``min_samples`` blocks and ``min_decide_s`` on, a True stops the loop (sequential
    stopping); otherwise it samples for ``min_time_s`` and until precise, as without it.
    """
    clock = clock or wall_clock
    start = clock()
    deadline = start + settings.time_budget_s
    # Warm-up: at least two calls, then up to warmup_s.
    warm_calls = 0
    while warm_calls < 2 or (clock() - start < settings.warmup_s and warm_calls < 50):
        one = _block(run_block(1)).wall_s
        warm_calls += 1
    per_call = max(one, 1e-9)
    number = max(1, min(10_000, math.ceil(settings.block_s / per_call)))
    if progress:
        progress(f"warm-up {warm_calls} calls, {per_call * 1e3:.3g} ms per call; blocks of {number}")
    samples: list[float] = []
    calls = 0
    ratios: list[float] = []
    settled: list[float] = []
    while True:
        probe = _probe_run(speed_probe()) if speed_probe else None
        block = _block(run_block(number))
        samples.append(block.wall_s / number)
        if probe and probe.first_s and probe.settled_s:
            ratios.append(block.own_s / number / probe.first_s)
            settled.append(block.own_s / number / probe.settled_s)
        calls += number
        elapsed = clock() - start
        may_decide = len(samples) >= settings.min_samples and elapsed >= settings.min_decide_s
        so_far = partial(_stats, samples, ratios, settled, calls, elapsed, own_clock)
        if decided is not None and may_decide and decided(so_far()):
            break
        enough = len(samples) >= settings.min_samples and elapsed >= settings.min_time_s
        if enough and _relative_error(samples) <= settings.precision:
            break
        if len(samples) >= settings.max_samples or (clock() >= deadline and len(samples) >= 3):
            break
    stats = _stats(samples, ratios, settled, calls, clock() - start, own_clock)
    if progress:
        progress(
            f"{stats.samples} samples of {number} calls in {stats.wall_s:.2f} s: "
            f"median {stats.median_ms:.4g} ms, spread {stats.spread:.1%}"
        )
    return stats


def _stats(
    samples: Sequence[float],
    ratios: Sequence[float],
    settled: Sequence[float],
    calls: int,
    wall_s: float,
    own_clock: str,
) -> TimingStats:
    stats = summarize(samples, calls=calls, wall_s=wall_s)
    if ratios:
        stats = replace(
            stats,
            relative=statistics.median(ratios),
            relative_low=_lower_quartile(ratios),
            relative_spread=spread_of(ratios),
            relative_settled=_lower_quartile(settled),
            relative_settled_spread=spread_of(settled),
            own_clock=own_clock,
        )
    return stats


# -- running on a device ------------------------------------------------------------


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


def _cpu_block_timer(
    call: Callable[[], object], *, own_clock: OwnClock | None
) -> Callable[[int], float | Block]:
    """Blocks timed by the wall clock; with ``own_clock`` also by the model's own time:
    the wall time less what the scheduler gave to other processes (:mod:`.own_time`)."""

    def run_block(number: int) -> float | Block:
        if own_clock is None:
            start = time.perf_counter()
            for _ in range(number):
                call()
            return time.perf_counter() - start
        begin = own_clock.start()
        for _ in range(number):
            call()
        block = own_clock.split(begin, own_clock.end())
        return Block(block.wall_s, block.own_s)

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


def placement_for(model: Any, args: Sequence[Any], settings: TimingSettings) -> Placement:
    """Where ``settings`` time the model, and the fingerprint its timing baseline is kept under."""
    from ..devices import placement

    return placement(
        model,
        args,
        device=settings.device,
        threads=settings.threads,
        cuda_graph=settings.cuda_graph,
        autocast=settings.autocast,
        mode=settings.mode,
    )


def time_forward(
    model: Any,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any] | None = None,
    settings: TimingSettings | None = None,
    *,
    batch_size: int | None = None,
    progress: Progress | None = None,
    where: Placement | None = None,
    decided: Callable[[TimingStats], bool] | None = None,
    repeat: Repeat | None = None,
) -> TimingStats:
    """Time ``model(*args, **kwargs)`` -- or what ``repeat`` opens on the device (a training
    step, a compiled forward: see :data:`~..devices.Repeat`); the model is left as it was.

    ``where`` is the call's :class:`~..devices.Placement` when the caller has resolved it
    already (default: from ``settings``); ``decided`` stops sampling once the verdict is
    clear (see :func:`run_rounds`).

    On the CPU with one thread the model's cost relative to the speed probe is measured in
    its own time (model and probe alike, :mod:`.own_time`): a neighbour that takes the
    core away for a while does not change it, a forward that waits longer does. The latency
    reported stays wall time.
    """
    import torch

    from ..devices import batch_size_of, exclusive_use, repeated_forward
    from .cuda_memory import forward_peak_memory
    from .own_time import own_clock as own_clock_for
    from .probes import SpeedProbe

    settings = settings or TimingSettings()
    kwargs = dict(kwargs or {})
    where = where or placement_for(model, args, settings)
    device = where.device
    if settings.cuda_graph and device.type != "cuda":
        raise MeasurementError(f"cuda_graph timing needs a CUDA device, but the model runs on {device}")
    batch = batch_size if batch_size is not None else batch_size_of(args, kwargs)
    if repeat is None:
        repeat = partial(repeated_forward, model, args, kwargs, autocast=settings.autocast)
    if progress:
        progress(f"timing on {where.fingerprint}")
    with exclusive_use(model, device, where.threads), repeat(device) as forward:
        try:
            if device.type == "cuda":
                peak = forward_peak_memory(forward, device)
                call = _capture_cuda_graph(forward) if settings.cuda_graph else forward
                stats = run_rounds(_cuda_block_timer(call), settings, progress=progress, decided=decided)
            else:
                peak = None
                clock = own_clock_for(where.threads or 0)  # made here, in the timing thread
                probe = SpeedProbe(own_clock=clock)
                stats = run_rounds(
                    _cpu_block_timer(forward, own_clock=clock),
                    settings,
                    progress=progress,
                    speed_probe=probe,
                    decided=decided,
                    own_clock=clock.name if clock else "wall",
                )
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
    return replace(stats, fingerprint=where.fingerprint, batch_size=batch, peak_memory=peak)
