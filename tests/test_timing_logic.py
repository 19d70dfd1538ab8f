"""The timing core's statistics, adaptive loop and verdicts, with fake clocks and samples.

Nothing here depends on how fast this machine is.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from pytest_modelbudget.budgets.timing_verdicts import (
    RECORD_MEASUREMENTS,
    LatencyBaseline,
    decided_early,
    judge,
    judge_limit,
    measure_and_judge,
    recorded,
)
from pytest_modelbudget.core.timing.cuda_memory import max_batch, search_max_batch
from pytest_modelbudget.core.timing.probes import ProbeRun, SpeedProbe, machine_slowdown
from pytest_modelbudget.core.timing.timer import Block, TimingSettings, TimingStats, run_rounds, summarize
from pytest_modelbudget.errors import MeasurementError


def stats(median: float, spread: float = 0.0) -> TimingStats:
    return TimingStats(
        median_ms=median,
        p90_ms=median * (1 + spread),
        min_ms=median * (1 - spread),
        mean_ms=median,
        iqr_ms=median * spread,
        samples=20,
        calls=200,
        wall_s=1.0,
    )


def test_summarize_computes_order_statistics_in_ms() -> None:
    samples = [i / 1000 for i in range(1, 11)]  # 1..10 ms
    result = summarize(samples, calls=10, wall_s=0.5)
    assert result.median_ms == pytest.approx(5.5)
    assert result.min_ms == pytest.approx(1.0)
    assert result.mean_ms == pytest.approx(5.5)
    assert result.iqr_ms == pytest.approx(7.75 - 3.25)
    assert result.p90_ms == pytest.approx(9.1)
    assert (result.samples, result.calls, result.wall_s) == (10, 10, 0.5)
    assert result.spread == pytest.approx(4.5 / 5.5)


def test_throughput_uses_the_batch() -> None:
    assert TimingStats(**{**stats(4.0).to_dict(), "batch_size": 8}).throughput == pytest.approx(2000.0)


class FakeMachine:
    """A forward that takes ``per_call`` seconds on a fake clock."""

    def __init__(
        self, per_call: float, first_call: float | None = None, jitter: list[float] | None = None
    ) -> None:
        self.now = 0.0
        self.per_call = per_call
        self.first_call = first_call
        self.jitter = jitter or [0.0]
        self.blocks: list[int] = []

    def clock(self) -> float:
        return self.now

    def run_block(self, number: int) -> float:
        self.blocks.append(number)
        if self.first_call is not None and len(self.blocks) == 1:
            elapsed = self.first_call
        else:
            elapsed = number * self.per_call * (1 + self.jitter[len(self.blocks) % len(self.jitter)])
        self.now += elapsed
        return elapsed


def test_warm_up_is_excluded_and_blocks_are_calibrated() -> None:
    machine = FakeMachine(per_call=0.001, first_call=5.0)  # a slow first call (lazy init)
    result = run_rounds(machine.run_block, TimingSettings(time_budget_s=1.0), clock=machine.clock)
    assert result.median_ms == pytest.approx(1.0)
    assert result.min_ms == pytest.approx(1.0)  # the 5 s call is not a sample
    assert machine.blocks[:2] == [1, 1]  # warm-up calls, one at a time
    assert set(machine.blocks[2:]) == {10}  # 10 ms blocks of 1 ms calls


def test_a_quiet_measurement_stops_early_at_the_minimum_sample_count() -> None:
    machine = FakeMachine(per_call=0.001)
    result = run_rounds(
        machine.run_block,
        TimingSettings(time_budget_s=100.0, min_samples=10, min_time_s=0.0),
        clock=machine.clock,
    )
    assert result.samples == 10


def test_a_noisy_measurement_runs_until_the_time_budget() -> None:
    machine = FakeMachine(per_call=0.001, jitter=[0.0, 0.5, -0.3, 0.9])
    result = run_rounds(
        machine.run_block, TimingSettings(time_budget_s=2.0, precision=0.001), clock=machine.clock
    )
    assert result.wall_s == pytest.approx(2.0, abs=0.05)
    assert result.samples > 100
    assert result.spread > 0.1


def test_a_slow_model_still_gets_three_samples() -> None:
    machine = FakeMachine(per_call=5.0)
    result = run_rounds(machine.run_block, TimingSettings(time_budget_s=1.0), clock=machine.clock)
    assert result.samples == 3 and machine.blocks == [1, 1, 1, 1, 1]


def test_progress_is_reported() -> None:
    machine = FakeMachine(per_call=0.001)
    lines: list[str] = []
    run_rounds(machine.run_block, TimingSettings(), clock=machine.clock, progress=lines.append)
    assert lines[0].startswith("warm-up ") and "blocks of 10" in lines[0]
    assert "samples of 10 calls" in lines[1] and "median 1 ms" in lines[1]


BASE = LatencyBaseline(median_ms=10.0, p90_ms=12.0, spread=0.02, probes={"matmul": 1.0, "copy": 1.0})


@pytest.mark.parametrize(
    ("medians", "spread", "slowdown", "expected"),
    [
        ([10.5], 0.01, None, "ok"),  # +5%: within the 10% tolerance
        ([9.0], 0.01, None, "ok"),  # faster
        ([13.0], 0.01, None, "over"),  # +30%, quiet: a regression
        ([11.5], 0.08, None, "inconclusive"),  # +15% but the run itself spreads 8%
        ([13.0, 10.2], 0.01, None, "ok"),  # a re-measurement was fine: the first was interference
        ([13.0], 0.01, 1.3, "inconclusive"),  # the machine's probes slowed by 30% too
        ([35.0], 0.01, 1.3, "over"),  # +250%: more than the machine explains
        ([13.0], 0.01, 1.02, "over"),  # the machine is as fast as before
    ],
)
def test_judge(medians: list[float], spread: float, slowdown: float | None, expected: str) -> None:
    verdict = judge([stats(m, spread) for m in medians], BASE, tolerance=0.10, slowdown=slowdown)
    assert verdict.status == expected
    assert verdict.measured_ms == min(medians)
    if expected == "inconclusive":
        assert verdict.reason


def test_judge_p90() -> None:
    verdict = judge([stats(10.0, 0.3)], BASE, tolerance=0.10, stat="p90")
    assert (verdict.measured_ms, verdict.reference_ms) == (13.0, 12.0)


@pytest.mark.parametrize(
    ("median", "spread", "expected"),
    [(4.0, 0.0, "ok"), (5.0, 0.0, "ok"), (6.0, 0.01, "over"), (5.2, 0.05, "inconclusive")],
)
def test_judge_limit(median: float, spread: float, expected: str) -> None:
    assert judge_limit([stats(median, spread)], 5.0).status == expected


def test_remeasures_only_while_something_looks_slow_then_probes() -> None:
    medians = iter([13.0, 13.5, 13.2])
    probed: list[int] = []

    def probe() -> dict[str, float]:
        probed.append(1)
        return {"matmul": 1.3, "copy": 1.25}

    judged = measure_and_judge(
        lambda: stats(next(medians), 0.01),
        limits_ms=[],
        baseline=BASE,
        tolerance=0.1,
        stat="median",
        probe=probe,
    )
    assert len(judged.measurements) == 2  # one, then one that confirms the slowdown
    assert probed == [1]
    assert judged.slowdown == pytest.approx(1.275)
    assert judged.limits == () and judged.baseline is not None
    assert judged.baseline.status == "inconclusive"


def test_a_fine_measurement_is_taken_once() -> None:
    calls: list[int] = []

    def measure() -> TimingStats:
        calls.append(1)
        return stats(10.0)

    judged = measure_and_judge(
        measure, limits_ms=[50.0], baseline=BASE, tolerance=0.1, stat="median", probe=lambda: {}
    )
    assert calls == [1] and judged.slowdown is None
    assert judged.baseline is not None
    assert [v.status for v in (*judged.limits, judged.baseline)] == ["ok", "ok"]


def test_machine_slowdown_is_the_median_ratio() -> None:
    assert machine_slowdown({"a": 2.0, "b": 1.1, "c": 1.2}, {"a": 1.0, "b": 1.0, "c": 1.0}) == pytest.approx(
        1.2
    )
    assert machine_slowdown({"a": 2.0, "b": 1.0}, {"a": 1.0, "b": 1.0}) == pytest.approx(1.5)
    assert machine_slowdown({"a": 2.0}, {}) == 1.0


@pytest.mark.parametrize(
    ("capacity", "limit", "expected"),
    [(0, 1024, 0), (1, 1024, 1), (100, 1024, 100), (64, 1024, 64), (5000, 1024, 1024)],
)
def test_search_max_batch_finds_the_largest_fitting_batch(capacity: int, limit: int, expected: int) -> None:
    tried: list[int] = []

    def fits(batch: int) -> bool:
        tried.append(batch)
        return batch <= capacity

    assert search_max_batch(fits, limit=limit) == expected
    assert len(tried) <= 2 * max(1, capacity).bit_length() + 2  # doubling then bisection, not a scan


def test_max_batch_refuses_cpu() -> None:
    import torch

    with pytest.raises(MeasurementError, match="min_max_batch needs a CUDA device"):
        max_batch(torch.nn.Linear(2, 2), (torch.randn(1, 2),), {}, device="cpu", limit=8)


def test_the_noise_margin_shrinks_with_more_samples() -> None:
    few = LatencyBaseline(median_ms=10.0, p90_ms=12.0, spread=0.2, samples=4)
    many = LatencyBaseline(median_ms=10.0, p90_ms=12.0, spread=0.2, samples=400)
    measured = [TimingStats(11.6, 12.0, 10.0, 11.6, 0.0, samples=400, calls=400, wall_s=1.0)]
    assert judge(measured, few, tolerance=0.10).status == "inconclusive"  # 3 x 9.3% standard error
    assert judge(measured, many, tolerance=0.10).status == "over"  # 3 x 0.9%


# -- the model's own slowdown: its time relative to a speed probe run before each block


OWN = LatencyBaseline(
    median_ms=10.0, p90_ms=11.0, spread=0.02, probes={"matmul": 0.2}, min_ms=9.0, samples=100, relative=50.0
)


def run(median: float, relative: float | None, spread: float = 0.02) -> TimingStats:
    """A measurement whose calls took ``relative`` times the probe's time."""
    return TimingStats(
        median,
        median * 1.1,
        median * 0.9,
        median,
        median * spread,
        samples=100,
        calls=1000,
        wall_s=1.0,
        relative=relative,
        probes={"matmul": median / relative} if relative else {},
    )


@pytest.mark.parametrize(
    ("measured", "expected", "own", "machine"),
    [
        (run(10.5, 51.0), "ok", 1.02, 1.029),  # +5%
        (run(13.0, 51.0), "inconclusive", 1.02, 1.275),  # a slow period: the probe slowed as much
        (run(12.5, 62.5), "over", 1.25, 1.0),  # the model is 25% slower
        (run(16.25, 62.5), "over", 1.25, 1.3),  # ...and the machine is slower on top
        # ...or faster, which hides it in the latency: "over" needs the latency beyond the
        # tolerance too (a probe's speed differs between processes, the latency is what users see).
        (run(10.4, 65.0), "ok", 1.3, 0.8),
        (run(12.0, 56.5, spread=0.3), "inconclusive", 1.13, 1.062),  # +13% within a noisy run's margin
    ],
)
def test_judge_by_own_slowdown(measured: TimingStats, expected: str, own: float, machine: float) -> None:
    verdict = judge([measured], OWN, tolerance=0.10)
    assert verdict.status == expected
    assert verdict.own_slowdown == pytest.approx(own, abs=1e-3)
    assert verdict.machine == pytest.approx(machine, abs=1e-3)
    assert (verdict.measured_ms, verdict.reference_ms) == (measured.median_ms, 10.0)


def test_the_noise_margin_is_the_ratios_own_when_known() -> None:
    # The latency spreads 30% (a slow period within the run), the ratio only 2%.
    noisy_latency = replace(run(12.0, 56.5, spread=0.3), relative_spread=0.02)
    verdict = judge([noisy_latency], replace(OWN, relative_spread=0.02), tolerance=0.10)
    assert verdict.status == "over"


def test_an_own_slowdown_verdict_explains_itself() -> None:
    over = judge([run(16.25, 62.5)], OWN, tolerance=0.10)
    assert over.reason == (
        "relative to this machine's speed (a probe timed before each block of calls) the model is "
        "25% slower than the baseline; the machine ran 30% slower than when the baseline was recorded"
    )
    slow_period = judge([run(13.0, 50.0)], OWN, tolerance=0.10)
    assert slow_period.reason.endswith(
        "the model is as fast as the baseline; the machine ran 30% slower than when the baseline "
        "was recorded: within the 10% tolerance, the time was lost to the machine"
    )


def test_the_least_slowed_measurement_decides() -> None:
    # The first run looked 25% slower; the re-measurement is back to normal.
    verdict = judge([run(12.5, 62.5), run(12.0, 51.0)], OWN, tolerance=0.10)
    assert verdict.status == "inconclusive"
    assert verdict.measured_ms == 12.0
    assert verdict.own_slowdown == pytest.approx(1.02)


def test_without_a_ratio_the_latency_decides_and_a_late_probe_can_excuse_it() -> None:
    # CUDA: no probe between blocks; probes timed afterwards may explain the slowdown.
    verdict = judge([run(13.0, None)], OWN, tolerance=0.10)
    assert (verdict.status, verdict.own_slowdown, verdict.machine) == ("over", None, None)
    excused = judge([run(13.0, None)], OWN, tolerance=0.10, slowdown=1.3)
    assert excused.status == "inconclusive" and "30% slower" in excused.reason


def test_baselines_without_a_ratio_are_judged_by_the_latency() -> None:
    old = LatencyBaseline(median_ms=10.0, p90_ms=11.0, spread=0.02, probes={"matmul": 0.2}, samples=100)
    verdict = judge([run(13.0, 51.0)], old, tolerance=0.10)
    assert verdict.status == "over" and verdict.own_slowdown is None


def test_recording_takes_several_measurements() -> None:
    taken = iter([run(10.0, 52.0), run(9.0, 50.0), run(11.0, 49.0)])
    judged = measure_and_judge(
        lambda: next(taken),
        limits_ms=[],
        baseline=None,
        tolerance=0.1,
        stat="median",
        probe=dict,
        at_least=RECORD_MEASUREMENTS,
    )
    assert len(judged.measurements) == 3 and judged.limits == () and judged.baseline is None
    kept = recorded(judged.measurements)
    assert (kept.median_ms, kept.relative) == (10.0, 50.0)  # the typical latency, the median ratio
    assert recorded([run(9.0, 50.0), run(9.5, 40.0), run(8.0, 60.0)]).relative == 50.0
    # Without a ratio (CUDA) the latency decides: the fastest measurement is kept.
    assert recorded([run(10.0, None), run(9.0, None), run(11.0, None)]).median_ms == 9.0


def settled_run(median: float, first: float, settled: float) -> TimingStats:
    """A measurement with both ratios: to the probe's first run and to its settled run."""
    return replace(run(median, first), relative_settled=settled)


def test_a_baseline_with_settled_ratios_is_judged_by_them() -> None:
    # The forward waits 25% longer; the probe's first run after it slowed too, so the
    # ratio to the first run moved +6% and only the settled ratio sees the +25%.
    waiting = settled_run(12.5, 53.0, 87.5)
    settled_baseline = replace(OWN, relative_settled=70.0, relative_settled_spread=0.02)
    verdict = judge([waiting], settled_baseline, tolerance=0.10)
    assert verdict.status == "over" and verdict.own_slowdown == pytest.approx(1.25)
    # A baseline written before the settled ratio (budgets.yaml version 1) is judged as it was.
    assert OWN.relative_settled is None
    assert judge([waiting], OWN, tolerance=0.10).own_slowdown == pytest.approx(1.06)
    # A measurement without the settled ratio (a report of an earlier version) falls back too.
    assert judge([run(12.5, 53.0)], settled_baseline, tolerance=0.10).own_slowdown == pytest.approx(1.06)
    # Nothing changed: within the tolerance on the settled ratio, the verdict is ok.
    assert judge([settled_run(10.2, 51.0, 71.0)], settled_baseline, tolerance=0.10).status == "ok"


def test_a_recorded_baseline_keeps_the_median_of_both_ratios() -> None:
    kept = recorded(
        [settled_run(9.0, 50.0, 70.0), settled_run(9.5, 40.0, 60.0), settled_run(8.0, 60.0, 80.0)]
    )
    assert (kept.relative, kept.relative_settled) == (50.0, 70.0)
    stored = LatencyBaseline.from_stats(kept).to_stored()
    assert stored["relative"] == 50.0 and stored["relative_settled"] == 70.0


def test_no_late_probes_when_the_measurements_carried_a_ratio() -> None:
    probed: list[int] = []

    def probe() -> dict[str, float]:
        probed.append(1)
        return {"matmul": 0.4}

    judged = measure_and_judge(
        lambda: run(12.5, 62.5), limits_ms=[], baseline=OWN, tolerance=0.1, stat="median", probe=probe
    )
    assert judged.baseline is not None and judged.baseline.status == "over"
    assert probed == [] and judged.slowdown is None


def test_a_baseline_round_trips_through_its_stored_form() -> None:
    stored = {
        "median_ms": 10.0,
        "p90_ms": 11.0,
        "min_ms": 9.0,
        "relative": 50.0,
        "spread": 0.02,
        "samples": 100,
        "probes": {"matmul": 0.2},
    }
    assert LatencyBaseline.from_stored(stored) == OWN
    assert OWN.to_stored() == stored  # and back: the keys that hold a value, nothing else
    assert LatencyBaseline.from_stored({"peak_memory": 1024}) is None


def test_the_speed_probe_runs_before_every_block_and_gives_the_ratio() -> None:
    machine = FakeMachine(per_call=0.001)  # blocks of 10 calls
    events: list[str] = []

    def run_block(number: int) -> float:
        events.append("block")
        return machine.run_block(number)

    def speed_probe() -> float:
        events.append("probe")
        return 0.0002  # the calls take 5x the probe's time

    result = run_rounds(
        run_block, TimingSettings(time_budget_s=1.0), clock=machine.clock, speed_probe=speed_probe
    )
    timed = events[events.index("probe") :]  # after the warm-up
    assert timed == ["probe", "block"] * (len(timed) // 2)
    assert result.relative == pytest.approx(5.0)
    assert result.relative_spread == pytest.approx(0.0)
    quiet = FakeMachine(per_call=0.001)
    assert run_rounds(quiet.run_block, TimingSettings(), clock=quiet.clock).relative is None  # no probe given


def test_the_probe_runs_twice_and_each_run_gives_its_ratio() -> None:
    machine = FakeMachine(per_call=0.001)
    # The first run follows the block (slower: 0.4 ms), the settled one straight after it.
    result = run_rounds(
        machine.run_block,
        TimingSettings(time_budget_s=1.0),
        clock=machine.clock,
        speed_probe=lambda: ProbeRun(first_s=0.0004, settled_s=0.0002),
    )
    assert result.relative == pytest.approx(2.5) and result.relative_low == pytest.approx(2.5)
    assert result.relative_settled == pytest.approx(5.0)  # the lower quartile of the blocks' ratios
    assert result.relative_settled_spread == pytest.approx(0.0)


def test_the_real_speed_probe_gives_both_runs_and_keeps_the_first_runs_median() -> None:
    probe = SpeedProbe()
    runs = [probe() for _ in range(5)]
    assert all(isinstance(r, ProbeRun) and r.first_s > 0 and r.settled_s > 0 for r in runs)
    assert len(probe.runs_s) == 5  # one stored time per call: the first run's
    assert set(probe.medians_ms()) == {"matmul"}


def test_a_quiet_measurement_still_samples_for_the_minimum_time() -> None:
    machine = FakeMachine(per_call=0.001)
    result = run_rounds(
        machine.run_block, TimingSettings(time_budget_s=100.0, min_time_s=0.5), clock=machine.clock
    )
    assert result.wall_s == pytest.approx(0.5, abs=0.02)
    assert result.samples > 10


# --- noise: the thread's CPU time, sequential stopping, re-measurements ---------------


def test_the_ratio_rests_on_the_blocks_own_time() -> None:
    # A neighbour had the core for half of every block: the wall time doubles, the thread's
    # own (CPU) time does not -- and the ratio to the probe follows the own time.
    machine = FakeMachine(per_call=0.001)

    def run_block(number: int) -> Block:
        own = machine.run_block(number)
        machine.now += own  # the descheduled half
        return Block(wall_s=2 * own, own_s=own)

    result = run_rounds(
        run_block,
        TimingSettings(time_budget_s=1.0),
        clock=machine.clock,
        speed_probe=lambda: 0.0002,
        own_clock="thread",
    )
    assert result.median_ms == pytest.approx(2.0)  # the latency users read stays wall time
    assert result.relative == pytest.approx(5.0)
    assert result.own_clock == "thread"


def test_a_decided_measurement_stops_at_the_decision_minimum() -> None:
    machine = FakeMachine(per_call=0.001)
    seen: list[int] = []

    def decided(partial: TimingStats) -> bool:
        seen.append(partial.samples)
        return partial.samples >= 15

    settings = TimingSettings(time_budget_s=100.0, min_time_s=1.0, min_decide_s=0.1)
    result = run_rounds(machine.run_block, settings, clock=machine.clock, decided=decided)
    assert result.samples == 15
    assert seen[0] == 10  # asked only from min_samples and min_decide_s on
    undecided = FakeMachine(per_call=0.001)
    result = run_rounds(undecided.run_block, settings, clock=undecided.clock, decided=lambda _: False)
    assert result.wall_s == pytest.approx(1.0, abs=0.02)  # undecided: the full minimum time


def own_run(median: float, relative: float, spread: float = 0.02, clock: str = "thread") -> TimingStats:
    return replace(run(median, relative, spread), relative_spread=spread, own_clock=clock)


def test_time_lost_to_other_processes_is_ok_when_the_ratio_is_cpu_time() -> None:
    # Latency +30%, the model's own CPU time relative to the probe unchanged.
    assert judge([own_run(13.0, 51.0)], OWN, tolerance=0.10).status == "ok"
    assert judge([own_run(13.0, 51.0, clock="wall")], OWN, tolerance=0.10).status == "inconclusive"
    # A 25% slowdown with the ratio's noise at 2%: over, whatever the wall clock says.
    assert judge([own_run(16.0, 62.5)], OWN, tolerance=0.10).status == "over"


@pytest.mark.parametrize(
    ("measured", "limits", "baseline", "expected"),
    [
        (own_run(10.0, 50.0, spread=0.01), [], OWN, True),  # clearly within the baseline
        (own_run(10.9, 54.0, spread=0.2), [], OWN, False),  # within, but not by 3 standard errors
        (own_run(10.0, 54.0, spread=0.2), [], OWN, True),  # the latency is clearly within
        (own_run(13.0, 50.0, spread=0.01), [], OWN, True),  # latency +30%, own cost clearly unchanged
        (own_run(13.0, 65.0, spread=0.01), [], OWN, True),  # clearly over: re-measured anyway
        (own_run(12.0, 56.0, spread=0.10), [], OWN, False),  # over the tolerance, within the noise
        (stats(10.0, 0.01), [], None, True),  # nothing to judge
        (stats(10.0, 0.01), [20.0], None, True),  # clearly within the limit
        (stats(19.9, 0.01), [20.0], None, False),  # within the limit by less than the noise
        (stats(30.0, 0.01), [20.0], None, True),  # clearly over the limit
        (stats(10.0, 0.01), [], BASE, True),  # latency only: clearly within
        (stats(10.9, 0.20), [], BASE, False),  # latency only: within by less than the noise
    ],
)
def test_decided_early(
    measured: TimingStats, limits: list[float], baseline: LatencyBaseline | None, expected: bool
) -> None:
    assert (
        decided_early(measured, limits_ms=limits, baseline=baseline, tolerance=0.10, stat="median")
        is expected
    )


@pytest.mark.parametrize(
    ("relatives", "expected_measurements", "status"),
    [
        ([50.0], 1, "ok"),  # within the baseline: measured once
        ([65.0, 64.0], 2, "over"),  # over, confirmed by a second measurement
        ([65.0, 50.0], 2, "ok"),  # the second measurement was back to normal: the least slowed decides
        ([57.0, 57.5, 57.2], 3, "inconclusive"),  # beyond the tolerance, within the noise: up to three
    ],
)
def test_remeasurements_follow_the_verdict(
    relatives: list[float], expected_measurements: int, status: str
) -> None:
    values = iter(relatives)
    judged = measure_and_judge(
        lambda: own_run(12.0, next(values), spread=0.3),  # latency +20% in every measurement
        limits_ms=[],
        baseline=OWN,
        tolerance=0.10,
        stat="median",
        probe=lambda: {},
    )
    assert len(judged.measurements) == expected_measurements
    assert judged.baseline is not None and judged.baseline.status == status


def test_the_lower_quartile_of_the_block_ratios_decides() -> None:
    # Half the blocks ran while a neighbour had the core's caches: their ratio is 1.5x.
    machine = FakeMachine(per_call=0.001)
    blocks = iter(range(10_000))

    def run_block(number: int) -> Block:
        own = machine.run_block(number) * (1.5 if next(blocks) % 2 else 1.0)
        return Block(wall_s=own, own_s=own)

    result = run_rounds(
        run_block, TimingSettings(time_budget_s=1.0), clock=machine.clock, speed_probe=lambda: 0.0002
    )
    assert result.relative_low == pytest.approx(5.0)
    assert result.relative is not None and result.relative > 5.5
    # Judged by the quiet blocks: latency +30%, own cost as in the baseline -> not over.
    disturbed = replace(own_run(13.0, 65.0, spread=0.01), relative_low=50.5)
    assert judge([disturbed], OWN, tolerance=0.10).status == "ok"
    assert judge([replace(disturbed, relative_low=None)], OWN, tolerance=0.10).status == "over"


def test_a_remeasurement_samples_longer_than_a_neighbours_burst(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from torch import nn

    from pytest_modelbudget.budgets.baselines import Entry
    from pytest_modelbudget.budgets.budget import Budget, CallSettings
    from pytest_modelbudget.budgets.measure import measure_call
    from pytest_modelbudget.budgets.timing_verdicts import RECHECK_MIN_S
    from pytest_modelbudget.core.timing import timer as timing

    asked: list[float] = []

    def fake_time_forward(model, args, kwargs, settings, **options):  # type: ignore[no-untyped-def]
        asked.append(settings.min_decide_s)
        return replace(own_run(13.0, 65.0, spread=0.01), fingerprint=options["where"].fingerprint)

    monkeypatch.setattr(timing, "time_forward", fake_time_forward)
    model, x = nn.Linear(4, 4), torch.randn(2, 4)
    fingerprint = timing.placement_for(model, (x,), timing.TimingSettings()).fingerprint
    entry = Entry(metrics={"macs": 32}, timing={fingerprint: OWN.to_stored()})
    result, _ = measure_call(
        model,
        (x,),
        {},
        nodeid="t",
        name=None,
        marker=Budget(limits={}, options={"timing": True}),
        entry=entry,
        settings=CallSettings(),
    )
    assert result.verdict == "over"
    assert asked == [timing.TimingSettings().min_decide_s, RECHECK_MIN_S]  # confirmed once, sampled longer
