"""The model's own time in a block of calls: its wall time less what other processes took.

The timing thread's wall time in a block is spent three ways: on the CPU, *runnable but
waiting for a CPU* (the scheduler gave the core to another process: noise), and *blocked*
(the forward itself waits: a sleep, I/O, a lock, a worker thread it handed work to). The
first and the last are the model's; only the middle is the machine's.

On Linux the scheduler keeps, per thread, the time it spent waiting on a run queue
(``/proc/thread-self/schedstat``: run time, run-queue delay, time slices, in ns;
CONFIG_SCHED_INFO, on in every common distribution kernel). :class:`SchedClock` takes the
block's wall time and subtracts

* the timing thread's own run-queue delay -- less the CPU time the process's other threads
  had meanwhile: a worker the forward wakes often takes the forward's own core, and the
  forward then waits in the run queue for its own work, and
* the run-queue delay of the process's other threads, but never more than the time the
  timing thread was blocked: a worker that a neighbour kept off the CPU while the forward
  waited for it made the forward wait, and that wait was the neighbour's. Work handed to
  other threads counts as the model's; their queueing does not.

(Per block, not per moment: a worker that runs in parallel while a neighbour holds the
timing thread's core makes that wait look like the model's. A forward that waits for its
workers, the common case, is what the rule is for.)

Where the figures are not there (macOS, Windows, a kernel without scheduler statistics)
:class:`CpuClock` is today's rule: the timing thread's CPU time, which leaves out the
neighbour and every wait of the forward alike. The report says so, once.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

SCHEDSTAT = "/proc/thread-self/schedstat"
TASKS = "/proc/self/task"

# The own clock a measurement's `relative` is in (TimingStats.own_clock): "sched" wall time
# less run-queue waits; "thread" the thread's CPU time (no scheduler figures); "wall".
SCHED, THREAD, WALL = "sched", "thread", "wall"
OWN_CLOCKS = frozenset({SCHED, THREAD})  # clocks that leave other processes' time out


class Split(NamedTuple):
    """Where a block's wall time went, in seconds."""

    wall_s: float
    own_s: float  # the model's: on the CPU, or blocked on its own waits
    preempted_s: float  # other processes': runnable, waiting for a CPU


@dataclass(frozen=True)
class Mark:
    """The clocks at one moment: wall, the thread's CPU time, its run-queue delay, and the
    process's other threads' (thread id -> (CPU time, run-queue delay), seconds)."""

    wall: float
    cpu: float
    queued: float = 0.0
    others: Mapping[int, tuple[float, float]] = field(default_factory=dict)


def split(start: Mark, end: Mark) -> Split:
    """The block between two marks: see the module's docstring."""
    wall = end.wall - start.wall
    cpu = end.cpu - start.cpu
    queued = max(0.0, end.queued - start.queued)
    # A thread born during the block counts from zero; one that ended is not in `end`.
    others_cpu = others_queued = 0.0
    for tid, (run, delay) in end.others.items():
        run_before, delay_before = start.others.get(tid, (0.0, 0.0))
        others_cpu += max(0.0, run - run_before)
        others_queued += max(0.0, delay - delay_before)
    blocked = max(0.0, wall - cpu - queued)
    # Queued while the process's own threads ran: the model's time, not a neighbour's.
    queued_for_others = max(0.0, queued - others_cpu)
    preempted = min(wall, queued_for_others + min(others_queued, blocked))
    return Split(wall, max(cpu, wall - preempted), preempted)


class OwnClock(Protocol):
    """Marks taken around a block, and the block's :class:`Split` between them
    (``others=False``: the timing thread's figures only, for a speed probe, which hands
    nothing to other threads)."""

    name: str

    def start(self, *, others: bool = True) -> Mark: ...
    def end(self, *, others: bool = True) -> Mark: ...
    def split(self, start: Mark, end: Mark) -> Split: ...


class CpuClock:
    """The fallback: the thread's CPU time; the rest of the wall time, the forward's waits
    included, is taken for other processes'."""

    name = THREAD

    def start(self, *, others: bool = True) -> Mark:
        return Mark(time.perf_counter(), time.thread_time())

    def end(self, *, others: bool = True) -> Mark:
        return Mark(time.perf_counter(), time.thread_time())

    def split(self, start: Mark, end: Mark) -> Split:
        wall, cpu = end.wall - start.wall, end.cpu - start.cpu
        return Split(wall, cpu, max(0.0, wall - cpu))


def _run_and_delay_s(text: str) -> tuple[float, float]:
    """(CPU time, run-queue delay) of one ``schedstat`` line (``run_ns delay_ns slices``), in s."""
    run, delay = text.split()[:2]
    return int(run) / 1e9, int(delay) / 1e9


class SchedClock:
    """Wall time less run-queue waits, from the kernel's per-thread scheduler statistics.

    Made in the timing thread (``/proc/thread-self`` is that thread's when it is opened).
    ``read_own`` (its run-queue delay) and ``read_others`` (the other threads' CPU time and
    delay, by thread id) are replaceable for tests.
    """

    name = SCHED

    def __init__(
        self,
        read_own: Callable[[], float] | None = None,
        read_others: Callable[[], Mapping[int, tuple[float, float]]] | None = None,
    ) -> None:
        if read_own is None:
            path = os.path.realpath(SCHEDSTAT)  # /proc/<pid>/task/<tid>: this thread's, for good

            def read_own() -> float:
                with open(path, "rb") as stat:
                    return _run_and_delay_s(stat.read().decode())[1]

        self._read_own = read_own
        tid = threading.get_native_id()
        self._read_others = read_others or (lambda: _other_threads(tid))

    def start(self, *, others: bool = True) -> Mark:
        # The other threads' files are read outside the block's wall time: first here, last in end().
        delays = self._read_others() if others else {}
        queued, cpu, wall = self._read_own(), time.thread_time(), time.perf_counter()
        return Mark(wall, cpu, queued, delays)

    def end(self, *, others: bool = True) -> Mark:
        wall, cpu, queued = time.perf_counter(), time.thread_time(), self._read_own()
        return Mark(wall, cpu, queued, self._read_others() if others else {})

    def split(self, start: Mark, end: Mark) -> Split:
        return split(start, end)


def _other_threads(own: int) -> dict[int, tuple[float, float]]:
    figures = {}
    try:
        names = os.listdir(TASKS)
    except OSError:
        return {}
    for name in names:
        tid = int(name)
        if tid == own:
            continue
        try:
            with open(f"{TASKS}/{name}/schedstat") as stat:
                figures[tid] = _run_and_delay_s(stat.read())
        except (OSError, ValueError):  # the thread ended meanwhile
            continue
    return figures


def own_clock(threads: int) -> OwnClock | None:
    """The clock a CPU measurement's own cost is read on, made in the timing thread.

    One timing thread: wall time less run-queue waits where the kernel keeps them, else the
    thread's CPU time. More than one thread (intra-op workers): None, wall time -- see
    docs/benchmarks.md for why.
    """
    if threads != 1:
        return None
    if sched_available():
        return SchedClock()
    return CpuClock()


def sched_available() -> bool:
    """Whether this thread's scheduler statistics are there and kept (a kernel built
    without them reports ``0 0 0``; a running thread has had at least one time slice)."""
    try:
        with open(SCHEDSTAT) as stat:
            fields = stat.read().split()
    except OSError:
        return False
    return len(fields) == 3 and int(fields[2]) > 0
