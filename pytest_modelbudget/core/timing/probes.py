"""Machine-speed probes: tiny fixed workloads timed next to the model.

Shared CI machines go through slow periods, seconds to minutes long, in which all work
slows down by 20-50%. On CPU a probe runs before every timed block (:class:`SpeedProbe`),
so a measurement knows how fast the machine was at each moment, and the verdict compares
the model's time *relative to the machine's speed* with the baseline's. Elsewhere (CUDA)
the probes run once after a slow-looking measurement (:func:`measure_probes`): when they
slowed as much as the model did, the machine explains the slowdown and the verdict is
"inconclusive", not a failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .own_time import OwnClock


def _probe_matmul() -> Callable[[], object]:
    import torch

    a = torch.randn(192, 192)
    return lambda: torch.mm(a, a)


def _probe_copy() -> Callable[[], object]:
    import torch

    src = torch.empty(2**21)  # 8 MiB: past most L2 caches
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def _probe_python() -> Callable[[], object]:
    def loop() -> int:
        total = 0
        for i in range(20_000):
            total += i * i
        return total

    return lambda: loop()


PROBES: Mapping[str, Callable[[], Callable[[], object]]] = {
    "matmul": _probe_matmul,
    "copy": _probe_copy,
    "python": _probe_python,
}


class ProbeRun(NamedTuple):
    """The speed probe before one block, run twice, in seconds of the block's own clock.

    The first run follows the previous block's last call: its matrix has been evicted from
    the cache, and after a forward that slept or waited the core has just idled, so it runs
    slower there -- by how much depends on what the model did (a slowdown made of a sleep
    reads smaller against it: docs/benchmarks.md). The second, straight after, finds its
    matrix in cache and the core awake: it follows the machine's speed, not the model's
    last call.
    """

    first_s: float  # what baselines before budgets.yaml version 2 were divided by
    settled_s: float


class SpeedProbe:
    """The machine's speed at this moment: the matmul probe run twice, in seconds
    (:class:`ProbeRun`: the first run, and the settled one straight after it).

    Called before every timed block on CPU, so each block's time can be divided by the
    machine's speed just before it. Of the probes the matmul follows models best through a
    slow period (measured: see docs/benchmarks.md), and it costs about 0.1 ms a run. With
    ``own_clock`` it is timed by its own time, like the blocks it is compared with
    (:mod:`.own_time`; the stored median, ``medians_ms``, stays the first run's wall time,
    as it was before the second run was added).
    """

    def __init__(self, *, own_clock: OwnClock | None = None) -> None:
        self._work = PROBES["matmul"]()
        self._work()  # warm-up
        self._own_clock = own_clock
        self.runs_s: list[float] = []

    def __call__(self) -> ProbeRun:
        first_wall, first = self._run()
        self.runs_s.append(first_wall)
        return ProbeRun(first, self._run()[1])

    def _run(self) -> tuple[float, float]:
        """One run of the probe: its wall time and its own time, in seconds."""
        if self._own_clock is None:
            start = time.perf_counter()
            self._work()
            elapsed = time.perf_counter() - start
            return elapsed, elapsed
        begin = self._own_clock.start(others=False)  # the probe hands nothing to other threads
        self._work()
        block = self._own_clock.split(begin, self._own_clock.end(others=False))
        return block.wall_s, block.own_s

    def medians_ms(self) -> dict[str, float]:
        """The probe's median time, as stored with a baseline (``{"matmul": ms}``)."""
        import statistics

        return {"matmul": statistics.median(self.runs_s) * 1e3} if self.runs_s else {}


def measure_probes(repeats: int = 21) -> dict[str, float]:
    """Milliseconds of each probe at one thread: the median of ``repeats`` runs.

    The median, like the model's latency: a machine shared with other work slows both the
    model and the probes, and the verdict compares the two.
    """
    import statistics

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = {}
        for name, make in PROBES.items():
            work = make()
            work()  # warm-up
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                work()
                runs.append(time.perf_counter() - start)
            results[name] = statistics.median(runs) * 1e3
        return results
    finally:
        torch.set_num_threads(threads)


def machine_slowdown(now: Mapping[str, float], then: Mapping[str, float]) -> float:
    """How much slower the machine is now than when ``then`` was probed (1.0 = same).

    The median of the per-probe ratios, so one probe hit by an interruption does not
    decide; 1.0 when there is nothing to compare.
    """
    ratios = sorted(now[name] / then[name] for name in now if then.get(name))
    if not ratios:
        return 1.0
    middle = len(ratios) // 2
    return ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2
