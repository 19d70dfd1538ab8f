"""The model's own time: wall time less the run-queue waits other processes caused.

The logic runs on fake scheduler figures (marks built by hand, readers replaced); one test
reads this machine's real figures for their shape only; the verdicts run end to end with a
fake block timer (no test passes or fails on wall time).
"""

from __future__ import annotations

import json
import threading

import pytest
from conftest import FIXED_MACHINE_SPEED, write_test

from pytest_modelbudget.budgets.timing_verdicts import LatencyBaseline, judge
from pytest_modelbudget.core.timing import own_time
from pytest_modelbudget.core.timing.own_time import CpuClock, Mark, SchedClock, Split, split
from pytest_modelbudget.core.timing.timer import TimingStats


def test_a_neighbour_on_the_core_is_taken_out() -> None:
    # 10 ms of wall time: 6 ms on the CPU, 4 ms runnable while another process ran.
    assert split(Mark(0.0, 0.0, 0.0), Mark(0.010, 0.006, 0.004)) == pytest.approx(Split(0.010, 0.006, 0.004))


def test_a_forward_that_sleeps_keeps_its_sleep() -> None:
    # 10 ms: 2 ms on the CPU, 8 ms asleep (blocked, not runnable): all of it the model's.
    assert split(Mark(0.0, 0.0, 0.0), Mark(0.010, 0.002, 0.0)) == pytest.approx(Split(0.010, 0.010, 0.0))
    # The same sleep on a crowded machine: waking up took 1 ms of waiting for the core.
    assert split(Mark(0.0, 0.0, 0.0), Mark(0.011, 0.002, 0.001)).own_s == pytest.approx(0.010)


def test_work_handed_to_a_worker_is_the_models_and_its_queueing_is_not() -> None:
    # The forward waited 8 ms for a worker thread (id 7): 5 ms of its work, 3 ms of it
    # kept off the CPU by a neighbour.
    start, end = Mark(0.0, 0.0, 0.0, {7: (5.0, 1.0)}), Mark(0.010, 0.002, 0.0, {7: (5.005, 1.003)})
    assert split(start, end) == pytest.approx(Split(0.010, 0.007, 0.003))


def test_waiting_in_the_run_queue_for_the_process_own_worker_is_the_models() -> None:
    # The worker the forward woke took the forward's core for 4 ms (the forward queued
    # meanwhile), then a neighbour held it for 1 ms more: only that 1 ms is the machine's.
    start, end = Mark(0.0, 0.0, 0.0, {7: (0.0, 0.0)}), Mark(0.010, 0.005, 0.005, {7: (0.004, 0.0)})
    assert split(start, end) == pytest.approx(Split(0.010, 0.009, 0.001))


def test_other_threads_queueing_counts_only_while_the_forward_waited() -> None:
    # Some unrelated thread queued 5 ms, but the forward never blocked: nothing to take out.
    start, end = Mark(0.0, 0.0, 0.0, {7: (0.0, 0.0)}), Mark(0.010, 0.010, 0.0, {7: (0.0, 0.005)})
    assert split(start, end) == pytest.approx(Split(0.010, 0.010, 0.0))
    # A thread born during the block counts from zero; one that ended is left out.
    born = split(Mark(0.0, 0.0, 0.0, {7: (1.0, 2.0)}), Mark(0.010, 0.002, 0.0, {8: (0.005, 0.003)}))
    assert born == pytest.approx(Split(0.010, 0.007, 0.003))


def test_the_fallback_clock_is_the_threads_cpu_time() -> None:
    clock = CpuClock()
    assert clock.name == "thread"
    assert clock.split(Mark(0.0, 0.0), Mark(0.010, 0.002)) == pytest.approx(Split(0.010, 0.002, 0.008))


def test_the_sched_clock_reads_its_figures_around_the_block() -> None:
    delays = iter([0.0, 0.25])
    reads: list[str] = []

    def others() -> dict[int, tuple[float, float]]:
        reads.append("others")
        return {}

    clock = SchedClock(read_own=lambda: next(delays), read_others=others)
    begin = clock.start()
    probe = clock.end(others=False)  # a speed probe hands nothing to other threads
    assert reads == ["others"]
    assert probe.queued == 0.25 and probe.wall >= begin.wall and probe.cpu >= begin.cpu
    # More run-queue delay than wall time cannot be: the own time is never below the CPU time.
    assert clock.split(begin, probe).own_s == pytest.approx(probe.cpu - begin.cpu)


def test_this_machines_figures_have_the_kernels_shape() -> None:
    if not own_time.sched_available():
        pytest.skip("no scheduler statistics here (not Linux, or a kernel without them)")
    clock = SchedClock()
    begin = clock.start()
    worker = threading.Thread(target=sum, args=(range(100_000),))
    worker.start()
    worker.join()
    block = clock.split(begin, clock.end())
    assert 0.0 <= block.preempted_s <= block.wall_s and block.own_s <= block.wall_s


def test_which_clock(monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory) -> None:
    assert own_time.own_clock(2) is None  # intra-op threads: wall time (docs/benchmarks.md)
    monkeypatch.setattr(own_time, "sched_available", lambda: False)
    assert isinstance(own_time.own_clock(1), CpuClock)
    monkeypatch.undo()
    disabled = tmp_path / "schedstat"  # type: ignore[operator]
    disabled.write_text("0 0 0\n")  # a kernel that keeps no scheduler statistics
    monkeypatch.setattr(own_time, "SCHEDSTAT", str(disabled))
    assert own_time.sched_available() is False
    monkeypatch.setattr(own_time, "SCHEDSTAT", str(tmp_path / "missing"))  # type: ignore[operator]
    assert own_time.sched_available() is False


BASELINE = LatencyBaseline(
    median_ms=2.0, p90_ms=2.1, relative=10.0, relative_spread=0.01, spread=0.01, samples=50
)


def _measured(median: float, relative: float, clock: str) -> TimingStats:
    return TimingStats(
        median_ms=median, p90_ms=median * 1.05, min_ms=median, mean_ms=median, iqr_ms=median * 0.01,
        samples=50, calls=500, wall_s=1.0, relative=relative, relative_low=relative,
        relative_spread=0.01, own_clock=clock,
    )  # fmt: skip


def test_a_busy_machine_is_ok_and_says_so() -> None:
    verdict = judge([_measured(2.8, 10.2, "sched")], BASELINE, tolerance=0.10)
    assert verdict.status == "ok"
    assert verdict.reason == "machine busy: +40% latency, own cost +2%"
    assert judge([_measured(2.0, 10.0, "sched")], BASELINE, tolerance=0.10).reason == ""


def test_a_forward_that_waits_longer_is_over_in_its_own_time() -> None:
    # +50% latency, and on the sched clock the own cost is +50% too: the model waited.
    assert judge([_measured(3.0, 15.0, "sched")], BASELINE, tolerance=0.10).status == "over"


# -- end to end: a fake block timer that knows busy machines and waiting forwards ----------

FAKE_SCHEDULER = (
    """
import os

import pytest

import pytest_modelbudget.core.timing.timer as timing
from pytest_modelbudget.core.timing.timer import Block


@pytest.fixture(autouse=True)
def fake_scheduler(monkeypatch):
    # Each call: 2 ms of work, WAIT_MS blocked (a sleep), and BUSY x the wall time lost to
    # another process. The own time a clock sees follows the clock: the sched clock keeps
    # the wait, the CPU-time fallback does not; neither keeps the neighbour's time.
    now = [0.0]

    def fake(call, own_clock=None):
        def run_block(number):
            for _ in range(number):
                call()
            work, wait = 2e-3, float(os.environ.get("WAIT_MS", "0")) / 1e3
            wall = number * (work + wait) * (1 + float(os.environ.get("BUSY", "0")))
            own = number * (work + wait if own_clock.name == "sched" else work)
            now[0] += wall
            return Block(wall, own)

        return run_block

    monkeypatch.setattr(timing, "_cpu_block_timer", fake)
    monkeypatch.setattr(timing, "wall_clock", lambda: now[0])
    fix_machine_speed(monkeypatch)
    if os.environ.get("NO_SCHEDSTAT"):
        import pytest_modelbudget.core.timing.own_time as own_time

        monkeypatch.setattr(own_time, "sched_available", lambda: False)
"""
    + FIXED_MACHINE_SPEED
)


@pytest.fixture
def scheduled(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    project.makeconftest(FAKE_SCHEDULER)
    write_test(
        project,
        """
        @pytest.mark.model_budget(timing=True)
        def test_latency(model_budget):
            model_budget(SimpleModel(), torch.randn(1, 1, 28, 28))
        """,
    )
    project.runpytest("--model-budget", "--update-budgets").assert_outcomes(passed=1)
    return project


def test_a_busy_machine_passes_and_the_summary_says_why(
    scheduled: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUSY", "0.4")
    result = scheduled.runpytest("--model-budget", "--budget-json=report.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_latency*ok (machine busy: +40% latency, own cost +0%)"])
    assert "rest on the timing thread's CPU time" not in result.stdout.str()
    (call,) = json.loads((scheduled.path / "report.json").read_text())["calls"]
    assert call["verdict"] == "ok" and call["verdict_note"] == "machine busy: +40% latency, own cost +0%"
    assert call["timing"]["own_clock"] == "sched"


def test_a_forward_that_waits_fails_its_baseline(
    scheduled: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WAIT_MS", "1")  # a 1 ms sleep in every forward: +50%
    result = scheduled.runpytest("--model-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*latency_ms 3 ms > baseline 2 ms (+50.0%, tolerance 10%)*the model is 50% slower*"]
    )


def test_without_scheduler_figures_the_wait_is_forgiven_and_the_report_says_so(
    scheduled: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WAIT_MS", "1")
    monkeypatch.setenv("NO_SCHEDSTAT", "1")
    result = scheduled.runpytest("--model-budget")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_latency*ok (machine busy: +50% latency, own cost +0%)",
            "note: latency verdicts here rest on the timing thread's CPU time: this system has no scheduler "
            "statistics (/proc/thread-self/schedstat)*",
        ]
    )
    assert result.stdout.str().count("rest on the timing thread's CPU time") == 1
