"""Latency and throughput budgets end to end, with a fake clock injected into the timing core.

The forward really runs; only the time each block of calls reports is fake (FAKE_MS per
call), so verdicts do not depend on this machine's speed.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from conftest import write_test

FAKE_CLOCK = """
import os
import time

import pytest

import pytest_modelbudget.core.timing.probes as probes
import pytest_modelbudget.core.timing.timer as timing


@pytest.fixture(autouse=True)
def fake_block_timer(monkeypatch):
    now = [0.0]  # the fake clock: advanced by the time each block reports

    def fake(call, own_clock=False):
        def run_block(number):
            for _ in range(number):
                call()
            record = os.environ.get("RECORD_INTERVALS")
            if record:  # hold the device a little, and note when
                start = time.time()
                time.sleep(0.02)
                with open(record, "a") as handle:
                    handle.write(f"{os.getpid()} {start} {time.time()}\\n")
            elapsed = number * float(os.environ.get("FAKE_MS", "2")) / 1e3
            now[0] += elapsed
            return elapsed

        return run_block

    monkeypatch.setattr(timing, "_cpu_block_timer", fake)
    monkeypatch.setattr(timing, "wall_clock", lambda: now[0])
    # The machine-speed probes are faked too: FAKE_MACHINE=1.3 is a machine 30% slower.
    speed = float(os.environ.get("FAKE_MACHINE", "1"))
    monkeypatch.setattr(probes, "measure_probes", lambda: {"matmul": speed, "copy": speed, "python": speed})

    # The probe before each block: 0.2 ms on a machine of FAKE_MACHINE=1; its first run
    # FAKE_FIRST times that (a probe that follows a forward that waited runs slower).
    first = float(os.environ.get("FAKE_FIRST", "1"))

    class FakeSpeedProbe:
        def __init__(self, own_clock=False):
            pass

        def __call__(self):
            return probes.ProbeRun(first * speed * 0.2e-3, speed * 0.2e-3)

        def medians_ms(self):
            return {"matmul": speed * 0.2}

    monkeypatch.setattr(probes, "SpeedProbe", FakeSpeedProbe)
"""

LATENCY_TESTS = """
@pytest.mark.model_budget(max_latency_ms=5)
def test_latency(model_budget):
    measured = model_budget(SimpleModel(), torch.randn(1, 1, 28, 28))
    if measured is not None and measured.timing is not None:
        assert measured.latency_ms == pytest.approx(float(__import__("os").environ.get("FAKE_MS", "2")))

@pytest.mark.model_budget(min_throughput="1k", batch_size=4)
def test_throughput(model_budget):
    model_budget(SimpleModel(), torch.randn(4, 1, 28, 28))
"""


@pytest.fixture
def timed(project: pytest.Pytester) -> pytest.Pytester:
    project.makeconftest(FAKE_CLOCK)
    return project


def test_latency_and_throughput_within_limits(
    timed: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MS", "2")
    write_test(timed, LATENCY_TESTS)
    result = timed.runpytest("--model-budget")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "test*MACs*params*size*latency*closest budget*",
            "test_model.py::test_latency*2 ms ±0%*",
            "test_model.py::test_throughput*2 ms ±0%*",
        ]
    )


def test_latency_and_throughput_over_limits(timed: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MS", "6")
    write_test(timed, LATENCY_TESTS)
    result = timed.runpytest("--model-budget")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*latency_ms 6 ms > limit (marker) 5 ms (+20.0%)",
            "*throughput 667/s < limit (marker) 1 k/s (-33.3%)",
        ]
    )


def test_no_timing_option_skips_timing(timed: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MS", "6")
    write_test(timed, LATENCY_TESTS)
    result = timed.runpytest("--model-budget", "--budget-no-timing")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["test*MACs*params*size*closest budget*"])
    assert "size      latency" not in result.stdout.str()


def record_latency_baseline(timed: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A timed test and its latency baseline at 2 ms per call; the budgets.yaml path."""
    write_test(
        timed,
        """
        @pytest.mark.model_budget(timing=True)
        def test_latency(model_budget):
            model_budget(SimpleModel(), torch.randn(1, 1, 28, 28))
        """,
    )
    monkeypatch.setenv("FAKE_MS", "2")
    timed.runpytest("--update-budgets").assert_outcomes(passed=1)
    return timed.path / "budgets.yaml"


def test_latency_baseline_per_device_fingerprint(
    timed: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = record_latency_baseline(timed, monkeypatch)
    text = path.read_text()
    assert "    timing:\n      cpu | " in text and "| 1 thread | float32 | eager:" in text
    assert "median_ms: 2\n" in text and "spread: 0\n" in text and "probes:" in text
    assert "relative: 10\n" in text and "relative_spread: 0\n" in text  # 2 ms per call, a 0.2 ms probe
    assert "relative_settled: 10\n" in text and text.startswith("# ") and "\nversion: 2\n" in text

    # Another machine's baseline is kept when this one updates.
    path.write_text(
        text.replace(
            "    timing:\n",
            "    timing:\n      cuda | Some GPU | float32 | eager:\n        median_ms: 1\n        p90_ms: 1\n        spread: 0\n        samples: 10\n",
            1,
        )
    )
    monkeypatch.setenv("FAKE_MS", "2.1")  # +5%: within the 10% default tolerance
    timed.runpytest("--model-budget").assert_outcomes(passed=1)

    monkeypatch.setenv("FAKE_MS", "3")  # +50%, no noise, the machine is as fast as before
    result = timed.runpytest("--model-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*latency_ms 3 ms > baseline 2 ms (+50.0%, tolerance 10%); relative to this machine's speed"
            " (a probe timed before each block of calls, both in the model's own time) the model is 50% slower than the baseline;*",
            "*--update-budgets*",
        ]
    )

    # ...unless the machine slowed down as much: relative to the probe (in the thread's CPU
    # time) the model's cost is unchanged, so the verdict, which rests on that, is ok.
    monkeypatch.setenv("FAKE_MACHINE", "1.5")
    result = timed.runpytest("--model-budget", "-W", "error::pytest.PytestWarning")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["test_model.py::test_latency*3 ms*ok (machine busy: +50% latency, own cost +0%)"]
    )
    monkeypatch.delenv("FAKE_MACHINE")

    timed.runpytest("--update-budgets").assert_outcomes(passed=1)
    text = path.read_text()
    assert "median_ms: 3\n" in text and "cuda | Some GPU | float32 | eager" in text


def test_latency_tolerance_from_marker_and_option(
    timed: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_test(
        timed,
        """
        @pytest.mark.model_budget(timing=True, latency_tolerance="60%")
        def test_loose(model_budget):
            model_budget(SimpleModel(), torch.randn(1, 1, 28, 28))

        @pytest.mark.model_budget(timing=True)
        def test_default(model_budget):
            model_budget(SimpleModel(), torch.randn(1, 1, 28, 28))
        """,
    )
    monkeypatch.setenv("FAKE_MS", "2")
    timed.runpytest("--update-budgets")
    monkeypatch.setenv("FAKE_MS", "3")
    timed.runpytest("--model-budget").assert_outcomes(passed=1, failed=1)
    timed.runpytest("--model-budget", "--budget-latency-tolerance", "60%").assert_outcomes(passed=2)


def test_inconclusive_is_a_warning_and_fails_under_strict(
    timed: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    timed.makeini("[pytest]\n")  # no filterwarnings=error: the warning should be visible, not raised
    write_test(
        timed,
        """
        @pytest.mark.model_budget(max_latency_ms=1)
        def test_noisy(model_budget):
            model_budget(SimpleModel(), torch.randn(1, 1, 28, 28))
        """,
    )
    # One block in three at 0.95 ms per call, the others at 1.09 ms: a median just over the
    # 1 ms limit, with a spread of about 13% that makes the difference meaningless.
    timed.makeconftest(
        FAKE_CLOCK.replace(
            'elapsed = number * float(os.environ.get("FAKE_MS", "2")) / 1e3',
            "elapsed = number * (0.00095 if next(_JITTER) else 0.00109)",
        ).replace("import time\n", "import itertools\nimport time\n_JITTER = itertools.cycle([1, 0, 0])\n")
    )
    # In a subprocess: this process's filterwarnings=error would leak into an in-process run.
    result = timed.runpytest_subprocess("--model-budget", "--budget-time=0.3")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        [
            "*ModelBudgetWarning: test_model.py::test_noisy: latency_ms 1.09 ms ~> limit (marker) 1 ms (+9.0%); inconclusive: above the limit but within the measured noise*",
            "*inconclusive*",
        ]
    )
    result = timed.runpytest(
        "--model-budget", "--budget-strict", "--budget-time=0.3", "-W", "ignore::pytest.PytestWarning"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*--budget-strict: inconclusive timing is a failure*"])


def test_timing_with_xdist_never_overlaps_on_one_device(
    timed: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("xdist")
    record = timed.path / "intervals.txt"
    monkeypatch.setenv("RECORD_INTERVALS", str(record))
    write_test(
        timed,
        """
        @pytest.mark.parametrize("i", range(6))
        @pytest.mark.model_budget(max_latency_ms=100)
        def test_timed(model_budget, i):
            model_budget(torch.nn.Linear(8, 8), torch.randn(1, 8))
        """,
    )
    result = timed.runpytest_subprocess("-n", "2", "--model-budget")
    result.assert_outcomes(passed=6)
    rows = [line.split() for line in record.read_text().splitlines()]
    assert len({pid for pid, *_ in rows}) == 2  # both workers timed
    intervals = sorted((float(start), float(end), pid) for pid, start, end in rows)
    for (_, end, pid), (start, _, other) in itertools.pairwise(intervals):
        assert end <= start or pid == other, "two workers timed the CPU at once"


def test_verbose_progress_and_quiet_default(timed: pytest.Pytester) -> None:
    write_test(timed, LATENCY_TESTS)
    result = timed.runpytest("--model-budget", "-v")
    result.stdout.fnmatch_lines(
        [
            "*?model_budget? test_model.py::test_latency: timing on cpu | *",
            "*?model_budget? test_model.py::test_latency: warm-up *",
        ]
    )
    result = timed.runpytest("--model-budget")
    assert "[model_budget]" not in result.stdout.str()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--budget-threads=0", "--budget-threads='0': expected a whole number >= 1"),
        ("--budget-time=soon", "--budget-time='soon': expected a number of seconds > 0"),
        ("--budget-latency-stat=p50", "'p50' is not 'median' or 'p90'"),
        (
            "--budget-latency-tolerance=lots",
            "'lots' is not a non-negative number (0.05) or a percentage string ('5%')",
        ),
        ("--budget-device=tpu", "'tpu' is not a device name such as 'cpu', 'cuda' or 'cuda:1'"),
    ],
)
def test_bad_timing_options_are_usage_errors(project: pytest.Pytester, option: str, message: str) -> None:
    write_test(project, LATENCY_TESTS)
    result = project.runpytest("--model-budget", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: pytest-modelbudget: *{message}*"])


def test_a_version_1_timing_baseline_is_judged_as_before_until_updated(
    timed: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = record_latency_baseline(timed, monkeypatch)
    # What the earlier version wrote: the same file without the settled ratios.
    version_2 = path.read_text()
    version_1 = re.sub(r"\n *relative_settled\w*: [^\n]*", "", version_2).replace(
        "\nversion: 2\n", "\nversion: 1\n"
    )
    assert "relative: 10\n" in version_1 and "settled" not in version_1
    path.write_text(version_1)
    # The forward now waits: +50% latency, and the probe's first run after it is 50% slower
    # too, so the ratio a version 1 baseline holds (to the first run) does not move.
    monkeypatch.setenv("FAKE_MS", "3")
    monkeypatch.setenv("FAKE_FIRST", "1.5")
    result = timed.runpytest("--model-budget")
    result.assert_outcomes(passed=1)  # judged as version 1 judged it
    result.stdout.fnmatch_lines(["test_model.py::test_latency*ok (machine busy: +50% latency, own cost +0%)"])
    assert path.read_text() == version_1  # a check run writes nothing

    # An update records the settled ratio (and the file as version 2)...
    monkeypatch.setenv("FAKE_MS", "2")
    monkeypatch.setenv("FAKE_FIRST", "1")
    timed.runpytest("--model-budget", "--update-budgets").assert_outcomes(passed=1)
    assert path.read_text() == version_2
    # ...by which the same wait fails.
    monkeypatch.setenv("FAKE_MS", "3")
    monkeypatch.setenv("FAKE_FIRST", "1.5")
    result = timed.runpytest("--model-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*latency_ms 3 ms > baseline 2 ms (+50.0%*the model is 50% slower than the baseline*"]
    )
