"""Latency verdicts under noise: this plugin and pytest-benchmark on the same models, same runs.

Writes a small pytest project into a temporary folder: three models at batch 1 on one
thread (a conv net, a transformer encoder layer, an MLP), each with a plugin test
(``@pytest.mark.model_budget(timing=True)``) and a pytest-benchmark test. ``SLOW=1`` in
the environment slows every model's forward by about 25%, the MACs unchanged, in one of
these ways (``--slow-kind``), each sized at calibration to a quarter of the forward:

* ``work`` (the default): host-side Python work on the timing thread;
* ``sleep``: the forward sleeps (``time.sleep``) -- a wait, no CPU time;
* ``thread``: the same Python work on a worker thread that the forward hands it to and
  waits for (a thread pool, as tokenizers and data loaders run);
* ``wait``: a busy-wait until a wall-clock deadline -- part work and part wait when a
  neighbour preempts it, so no fair "25% more work" under noise (kept for comparison);
* ``intra-op``: the models run on 2 intra-op threads (``--budget-threads 2``, and
  pytest-benchmark's tests at 2 threads too), slowed by extra 256x256 matmuls that torch
  splits across them.

1. Baselines, on the machine as it is (keep it quiet; THREADS is 2 for ``intra-op``):
   ``pytest --model-budget --update-budgets -k plugin`` and
   ``pytest --benchmark-only --benchmark-save=base -k bench``.
2. For each condition -- ``quiet``; ``bursty-1`` (a neighbour process with one busy
   worker, on/off in bursts of 50-500 ms, seeded); ``bursty-all`` (one worker per core,
   bursting together); ``constant-1`` and ``constant-all`` (one worker, or one per core,
   always busy) -- the neighbour is started, and ``--runs`` times, the unchanged project
   then the slowed one:
   ``pytest --model-budget -k plugin --budget-json=...`` and
   ``pytest --benchmark-only --benchmark-compare=0001 --benchmark-compare-fail=median:10% -k bench``,
   each a fresh process, timed.
3. Prints, per model and condition, the plugin's false failures and inconclusive verdicts
   on the unchanged model, slowdowns caught / inconclusive / missed, pytest-benchmark's
   false failures and catches, the median wall time of one check run of each tool, and
   the inconclusive verdicts grouped by the rule that fired (with the model's own
   slowdown, the machine's, and the latency change).

Commands (from the repository root; the machine should be otherwise quiet)::

    .venv/bin/python benchmarks/noise.py                         # 20 runs per condition (long)
    .venv/bin/python benchmarks/noise.py --runs 5 --json noise.json
    .venv/bin/python benchmarks/noise.py --runs 3 --conditions quiet,bursty-all
    .venv/bin/python benchmarks/noise.py --keep /tmp/noise-project   # keep the project to rerun by hand
    .venv/bin/python benchmarks/noise.py --slow-kind sleep --tools plugin   # a forward that waits

The neighbour runs ``--neighbour-work torch`` (a 256x256 matmul loop on one thread per
worker, like another model test suite; default) or ``python`` (a pure-Python loop); it
is its own process group (in the harness's session, so that it competes with the timed
process as another job of the same user would) and is killed when a condition ends, also
on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CONDITIONS = ("quiet", "bursty-1", "bursty-all", "constant-1", "constant-all")
MODELS = ("conv", "transformer", "mlp")
SLOWDOWN = 0.25  # the host-side slowdown of the slowed project
FAIL_AT = "median:10%"  # pytest-benchmark's --benchmark-compare-fail, like the plugin's 10% tolerance
SLOW_KINDS = ("work", "sleep", "thread", "intra-op", "wait")
THREADS = 1  # the models' intra-op threads: 2 for the intra-op kind (set in main)

# -- the project under test -----------------------------------------------------------

MODELS_PY = '''
"""Three small models at batch 1; SLOW=1 adds host-side work to every forward."""

import json
import os
import time
from pathlib import Path

import torch
from torch import nn

torch.set_num_threads(int(os.environ.get("THREADS", "1")))
NAMES = ("conv", "transformer", "mlp")
EXTRA = torch.randn(256, 256)  # the intra-op kind's extra work
CALIBRATION = Path(__file__).with_name("slow.json")


def python_work(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i * i
    return total


def busy_wait(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


_POOL = []


def worker_pool():
    """One worker thread, started once: the forward hands it work and waits for it."""
    if not _POOL:
        from concurrent.futures import ThreadPoolExecutor

        _POOL.append(ThreadPoolExecutor(1))
    return _POOL[0]


class Slowed(nn.Module):
    """The model, then host-side work or a wait: the same MACs, a slower forward."""

    def __init__(self, inner: nn.Module, kind: str, amount: float) -> None:
        super().__init__()
        self.inner, self.kind, self.amount = inner, kind, amount

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if self.kind == "work":
            python_work(int(self.amount))
        elif self.kind == "sleep":
            time.sleep(self.amount)
        elif self.kind == "thread":
            worker_pool().submit(python_work, int(self.amount)).result()
        elif self.kind == "intra-op":
            for _ in range(int(self.amount)):
                torch.mm(EXTRA, EXTRA)
        else:
            busy_wait(self.amount)
        return out


def plain(name: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "conv":
        model = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
        )
        x = torch.randn(1, 3, 112, 112)
    elif name == "transformer":
        model = nn.TransformerEncoderLayer(256, 4, dim_feedforward=1024, batch_first=True)
        x = torch.randn(1, 128, 256)
    else:
        model = nn.Sequential(
            nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
            nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 1024),
        )
        x = torch.randn(1, 1024)
    return model.eval(), x


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    model, x = plain(name)
    if os.environ.get("SLOW") == "1":
        calibration = json.loads(CALIBRATION.read_text())
        model = Slowed(model, calibration["kind"], calibration["amount"][name])
    return model, x
'''

TEST_PY = """
import pytest
import torch

from models import NAMES, build


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.model_budget(timing=True)
def test_plugin(model_budget, name):
    model, x = build(name)
    model_budget(model, x)


@pytest.mark.parametrize("name", NAMES)
def test_bench(benchmark, name):
    model, x = build(name)
    with torch.inference_mode():
        benchmark(model, x)
"""

CALIBRATE_PY = """
import json
import statistics
import sys
import time

import torch

from models import EXTRA, NAMES, busy_wait, plain, python_work, Slowed


def median_ms(call, seconds=1.5):
    for _ in range(5):
        call()
    runs = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        call()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs) * 1e3


kind, share = sys.argv[1], float(sys.argv[2])
# The plugin fixes glibc's malloc thresholds before it times (a conv net runs 1.9 or 3.5 ms
# depending on the process otherwise): calibrate the slowdown against the same forward.
from pytest_modelbudget.core.devices import steady_heap
steady_heap()
loop_ms = median_ms(lambda: python_work(100_000)) / 100_000
torch.set_num_threads(2 if kind == "intra-op" else 1)
mm_ms = median_ms(lambda: torch.mm(EXTRA, EXTRA))
forward, amount, slowed = {}, {}, {}
with torch.inference_mode():
    for name in NAMES:
        model, x = plain(name)
        forward[name] = median_ms(lambda: model(x))
        extra_ms = forward[name] * share
        if kind == "intra-op":
            amount[name] = max(1, round(extra_ms / mm_ms))
        else:
            amount[name] = extra_ms / loop_ms if kind in ("work", "thread") else extra_ms / 1e3
        if kind == "sleep":  # a sleep overshoots (timer slack, the wake-up): ask for less
            overshoot_ms = median_ms(lambda: time.sleep(amount[name]), 0.5) - extra_ms
            amount[name] = max(extra_ms - overshoot_ms, 0.01) / 1e3
        model = Slowed(model, kind, amount[name])
        slowed[name] = median_ms(lambda: model(x))
print(json.dumps({"kind": kind, "amount": amount, "forward_ms": forward, "slowed_ms": slowed}))
"""

NEIGHBOUR_PY = """
import multiprocessing, random, sys, time

def work_loop(kind):
    if kind == "torch":
        import torch
        torch.set_num_threads(1)
        a = torch.randn(256, 256)
        return lambda: torch.mm(a, a)
    def loop():
        total = 0
        for i in range(20_000):
            total += i
    return loop

def worker(kind, bursty, seed, t0):
    step = work_loop(kind)
    rng = random.Random(seed)  # the same seed in every worker: they burst together
    edges, t, on = [], t0, True
    while t < t0 + 24 * 3600:
        t += rng.uniform(0.05, 0.5)
        edges.append(t)
        if len(edges) > 400_000:
            break
    i = 0
    while True:
        now = time.time()
        while edges[i] < now:
            i += 1
        if not bursty or i % 2 == 0:
            step()
        else:
            time.sleep(min(0.01, edges[i] - now))

if __name__ == "__main__":
    workers, kind, bursty, seed = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
    t0 = time.time() + 1.0
    procs = [multiprocessing.Process(target=worker, args=(kind, bursty, seed, t0)) for _ in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
"""


def write_project(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    (folder / "models.py").write_text(MODELS_PY.lstrip())
    (folder / "test_noise.py").write_text(TEST_PY.lstrip())
    (folder / "calibrate.py").write_text(CALIBRATE_PY.lstrip())
    (folder / "neighbour.py").write_text(NEIGHBOUR_PY.lstrip())


# -- running it -----------------------------------------------------------------------


@dataclass
class Process:
    wall_s: float
    returncode: int
    output: str


def run(folder: Path, args: Sequence[str], *, slow: bool) -> Process:
    env = {**os.environ, "SLOW": "1" if slow else "0", "PYTHONDONTWRITEBYTECODE": "1"}
    env["THREADS"] = str(THREADS)
    env.pop("PYTEST_ADDOPTS", None)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *args], cwd=folder, env=env, capture_output=True, text=True, check=False
    )
    return Process(time.perf_counter() - start, done.returncode, done.stdout + done.stderr)


def pytest_args(*args: str) -> list[str]:
    plugin = "--model-budget" in args or "--update-budgets" in args
    threads = ["--budget-threads", str(THREADS)] if plugin else []
    return ["-m", "pytest", "-q", "-p", "no:xdist", *threads, *args]


@contextmanager
def neighbour(folder: Path, condition: str, *, work: str, seed: int) -> Iterator[None]:
    """A competing process group for the length of the block (none when quiet)."""
    if condition == "quiet":
        yield
        return
    workers = 1 if condition.endswith("-1") else os.cpu_count() or 1
    bursty = condition.startswith("bursty")
    process = subprocess.Popen(
        [sys.executable, "neighbour.py", str(workers), work, "1" if bursty else "0", str(seed)],
        cwd=folder,
        # Its own process group, to be killed whole, but the harness's session: with
        # start_new_session (setsid) Linux's scheduler autogroups would give the neighbour
        # one share and the timed process another, and the neighbour would never take its core.
        preexec_fn=os.setpgrp,
    )
    try:
        time.sleep(3.0)  # imports done, workers running
        if process.poll() is not None:
            raise RuntimeError(f"the neighbour exited early ({process.returncode})")
        yield
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# -- reading the results --------------------------------------------------------------

NOTE_OWN = re.compile(r"the model is (?:(\d+)% (slower|faster) than|as fast as) the baseline")
NOTE_MACHINE = re.compile(r"the machine ran (?:(\d+)% (slower|faster) than|as fast as) when")
NOTE_ERROR = re.compile(r"standard error ([\d.]+)%")


def _percent(match: re.Match[str] | None) -> float | None:
    """``22% slower than`` -> 1.22; ``as fast as`` -> 1.0."""
    if match is None:
        return None
    if match.group(1) is None:
        return 1.0
    value = int(match.group(1)) / 100
    return 1.0 + value if match.group(2) == "slower" else 1.0 - value


def rule_of(note: str) -> str:
    if "the time was lost to the machine" in note:
        return "within the tolerance, the time was lost to the machine"
    if "within the measured noise" in note:
        return "beyond the tolerance but within the measured noise"
    if "explains the slowdown" in note:
        return "the machine's probes explain the slowdown"
    return note or "-"


@dataclass
class PluginCall:
    model: str
    status: str  # the latency baseline check: ok, over, inconclusive (or missing)
    verdict: str
    latency_ratio: float | None  # measured / baseline latency
    own: float | None  # from the note, or the best measurement's ratio over the baseline's
    machine: float | None
    error: float | None  # the standard error the note gives (noise rule)
    rule: str
    note: str
    seconds: float | None  # the test's duration (about 1.5 s per measurement)
    relative_spread: float | None = None  # of the reported (fastest) measurement's ratios
    samples: int | None = None  # blocks in that measurement


@dataclass
class BenchCall:
    model: str
    failed: bool
    ratio: float | None  # median / baseline median


@dataclass
class Run:
    condition: str
    slowed: bool
    tool: str
    wall_s: float
    returncode: int
    plugin: list[PluginCall] = field(default_factory=list)
    bench: list[BenchCall] = field(default_factory=list)


def model_of(test: str) -> str:
    found = re.search(r"\[(\w+)\]", test)
    return found.group(1) if found else test


def durations(junit: Path) -> dict[str, float]:
    if not junit.exists():
        return {}
    return {
        model_of(case.get("name", "")): float(case.get("time", "nan"))
        for case in ET.parse(junit).getroot().iter("testcase")
    }


def plugin_calls(report: Path, junit: Path, relatives: dict[str, float]) -> list[PluginCall]:
    if not report.exists():
        return []
    seconds = durations(junit)
    calls = []
    for call in json.loads(report.read_text())["calls"]:
        model = model_of(call["test"])
        check = next(
            (c for c in call["checks"] if c["metric"] == "latency_ms" and c["source"] == "baseline"), None
        )
        note = check.get("note", "") if check else ""
        timing = call.get("timing") or {}
        # The ratio the verdict uses: to the probe's settled run where the baseline has it.
        relative = timing.get("relative_settled") or timing.get("relative")
        own = _percent(NOTE_OWN.search(note))
        if own is None and relative and relatives.get(model):
            own = relative / relatives[model]
        error = NOTE_ERROR.search(note)
        calls.append(
            PluginCall(
                model=model,
                status=check["status"] if check else "missing",
                verdict=call["verdict"],
                latency_ratio=check["measured"] / check["reference"] if check else None,
                own=own,
                machine=_percent(NOTE_MACHINE.search(note)),
                error=float(error.group(1)) / 100 if error else None,
                rule=rule_of(note) if check and check["status"] == "inconclusive" else "",
                note=note,
                seconds=seconds.get(model),
                relative_spread=timing.get("relative_spread"),
                samples=timing.get("samples"),
            )
        )
    return calls


def bench_calls(process: Process, report: Path, baseline: dict[str, float]) -> list[BenchCall]:
    regressed = (
        process.output.split("Performance has regressed", 1)[1] if "regressed" in process.output else ""
    )
    failed = {model_of(line) for line in regressed.splitlines() if "test_bench[" in line}
    medians = {}
    if report.exists():
        medians = {
            model_of(b["name"]): b["stats"]["median"] for b in json.loads(report.read_text())["benchmarks"]
        }
    return [
        BenchCall(model, model in failed, medians[model] / baseline[model] if model in baseline else None)
        for model in medians
    ]


def read_budgets(folder: Path) -> dict[str, float]:
    """The baseline's ratio per model, from budgets.yaml: to the probe's settled run
    (``relative_settled``), or to its first (``relative``) in a baseline without it."""
    import yaml

    data = yaml.safe_load((folder / "budgets.yaml").read_text())
    relatives = {}
    for key, entry in data["entries"].items():
        for timing in (entry.get("timing") or {}).values():
            ratio = timing.get("relative_settled") or timing.get("relative")
            if ratio:
                relatives[model_of(key)] = float(ratio)
    return relatives


# -- the measurement ------------------------------------------------------------------


def record_baselines(folder: Path) -> dict[str, Any]:
    plugin = run(folder, pytest_args("--model-budget", "--update-budgets", "-k", "plugin"), slow=False)
    bench = run(folder, pytest_args("--benchmark-only", "--benchmark-save=base", "-k", "bench"), slow=False)
    if plugin.returncode or bench.returncode:
        raise RuntimeError(
            f"recording the baselines failed:\n{plugin.output[-3000:]}\n{bench.output[-3000:]}"
        )
    saved = next((folder / ".benchmarks").rglob("0001_base.json"))
    medians = {model_of(b["name"]): b["stats"]["median"] for b in json.loads(saved.read_text())["benchmarks"]}
    return {
        "plugin_wall_s": plugin.wall_s,
        "bench_wall_s": bench.wall_s,
        "bench_medians_s": medians,
        "relatives": read_budgets(folder),
        "budgets_yaml": (folder / "budgets.yaml").read_text(),
    }


def check_run(
    folder: Path,
    condition: str,
    slowed: bool,
    index: int,
    relatives: dict[str, float],
    bench: dict[str, float],
) -> list[Run]:
    (first,) = plugin_run(folder, condition, slowed, index, relatives)
    tag = f"{condition}-{'slow' if slowed else 'same'}-{index}"
    bench_json = folder / "out" / f"{tag}.bench.json"
    process = run(
        folder,
        pytest_args(
            "--benchmark-only",
            "--benchmark-compare=0001",
            f"--benchmark-compare-fail={FAIL_AT}",
            f"--benchmark-json={bench_json}",
            "-k",
            "bench",
        ),
        slow=slowed,
    )
    second = Run(condition, slowed, "pytest-benchmark", process.wall_s, process.returncode)
    second.bench = bench_calls(process, bench_json, bench)
    return [first, second]


def plugin_run(
    folder: Path, condition: str, slowed: bool, index: int, relatives: dict[str, float]
) -> list[Run]:
    """A check run of the plugin (alone with ``--tools plugin``; else before pytest-benchmark)."""
    tag = f"{condition}-{'slow' if slowed else 'same'}-{index}"
    report, junit = (folder / "out" / f"{tag}{ext}" for ext in (".json", ".xml"))
    process = run(
        folder,
        pytest_args("--model-budget", "-k", "plugin", f"--budget-json={report}", f"--junitxml={junit}"),
        slow=slowed,
    )
    first = Run(condition, slowed, "plugin", process.wall_s, process.returncode)
    first.plugin = plugin_calls(report, junit, relatives)
    if len(first.plugin) != len(MODELS):
        print(
            f"  plugin run {tag}: {len(first.plugin)} calls, exit {process.returncode}:\n"
            f"{process.output[-2000:]}"
        )
    return [first]


# -- the tables -----------------------------------------------------------------------


def _median(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.1f}" if values else "-"


def _range(values: Sequence[float | None]) -> str:
    known = sorted(v for v in values if v is not None)
    if not known:
        return "-"
    return f"{statistics.median(known):.3f} ({known[0]:.3f}-{known[-1]:.3f})"


def tables(runs: Sequence[Run], conditions: Sequence[str]) -> str:
    lines = [
        "| model | condition | plugin false fail | plugin inconclusive (unchanged) | slowdowns caught "
        "| inconclusive | missed (ok) | pytest-benchmark false / caught |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model in MODELS:
        for condition in conditions:
            same = [
                c
                for r in runs
                if r.condition == condition and not r.slowed
                for c in r.plugin
                if c.model == model
            ]
            slow = [
                c for r in runs if r.condition == condition and r.slowed for c in r.plugin if c.model == model
            ]
            b_same = [
                c
                for r in runs
                if r.condition == condition and not r.slowed
                for c in r.bench
                if c.model == model
            ]
            b_slow = [
                c for r in runs if r.condition == condition and r.slowed for c in r.bench if c.model == model
            ]

            def count(calls: Sequence[PluginCall], status: str) -> int:
                return sum(c.status == status for c in calls)

            lines.append(
                f"| {model} | {condition} | {count(same, 'over')}/{len(same)} | "
                f"{count(same, 'inconclusive')}/{len(same)} | {count(slow, 'over')}/{len(slow)} | "
                f"{count(slow, 'inconclusive')}/{len(slow)} | {count(slow, 'ok')}/{len(slow)} | "
                f"{sum(c.failed for c in b_same)}/{len(b_same)}, "
                f"{sum(c.failed for c in b_slow)}/{len(b_slow)} |"
            )
    lines += [
        "",
        "Wall time of one check run of the three tests, median s (unchanged / slowed):",
        "",
        "| condition | plugin | pytest-benchmark |",
        "| --- | --- | --- |",
    ]
    for condition in conditions:

        def wall(tool: str, slowed: bool, condition: str = condition) -> str:
            return _median(
                [r.wall_s for r in runs if (r.condition, r.tool, r.slowed) == (condition, tool, slowed)]
            )

        lines.append(
            f"| {condition} | {wall('plugin', False)} / {wall('plugin', True)} | "
            f"{wall('pytest-benchmark', False)} / {wall('pytest-benchmark', True)} |"
        )
    lines += [
        "",
        "The ratios each tool saw, median (range): plugin latency = measured / baseline median of the best "
        "measurement; plugin own = the model's time relative to the matmul probe, over the baseline's; "
        "pytest-benchmark = median / baseline median:",
        "",
        "| model | condition | variant | plugin latency | plugin own | pytest-benchmark |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for model in MODELS:
        for condition in conditions:
            for slowed in (False, True):
                sel = [r for r in runs if r.condition == condition and r.slowed == slowed]
                calls = [c for r in sel for c in r.plugin if c.model == model]
                bench = [c for r in sel for c in r.bench if c.model == model]
                lines.append(
                    f"| {model} | {condition} | {'slowed' if slowed else 'unchanged'} | "
                    f"{_range([c.latency_ratio for c in calls])} | {_range([c.own for c in calls])} | "
                    f"{_range([c.ratio for c in bench])} |"
                )
    lines += ["", "Inconclusive verdicts by rule:", ""]
    inconclusive = [(r.condition, r.slowed, c) for r in runs for c in r.plugin if c.status == "inconclusive"]
    if not inconclusive:
        lines.append("none")
    groups: dict[tuple[str, bool], list[PluginCall]] = {}
    for _, slowed, c in inconclusive:
        groups.setdefault((c.rule, slowed), []).append(c)
    for (rule, slowed), calls in sorted(groups.items()):
        where = ", ".join(f"{n} {m}" for m in MODELS if (n := sum(c.model == m for c in calls)))
        lines.append(
            f"- {'slowed' if slowed else 'unchanged'}, {rule}: {len(calls)} ({where}); "
            f"own {_range([c.own for c in calls])}, machine {_range([c.machine for c in calls])}, "
            f"latency {_range([c.latency_ratio for c in calls])}, "
            f"standard error {_range([c.error for c in calls])}, "
            f"test seconds {_range([c.seconds for c in calls])}, "
            f"ratio spread {_range([c.relative_spread for c in calls])}, "
            f"blocks {_range([c.samples for c in calls])}"
        )
    missed = [c for r in runs if r.slowed for c in r.plugin if c.status == "ok"]
    if missed:
        lines.append(
            f"- slowed but ok (missed): {len(missed)}; own {_range([c.own for c in missed])}, "
            f"latency {_range([c.latency_ratio for c in missed])}"
        )
    return "\n".join(lines)


def machine() -> str:
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="check runs per condition and variant")
    parser.add_argument("--conditions", default=",".join(CONDITIONS), help=f"of {', '.join(CONDITIONS)}")
    parser.add_argument("--slow-kind", choices=SLOW_KINDS, default="work")
    parser.add_argument(
        "--tools", choices=("both", "plugin"), default="both", help="plugin: skip the pytest-benchmark runs"
    )
    parser.add_argument("--neighbour-work", choices=("torch", "python"), default="torch")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--json", type=Path, help="write every run here")
    parser.add_argument("--keep", type=Path, help="write the project here and keep it")
    args = parser.parse_args(argv)
    global THREADS
    THREADS = 2 if args.slow_kind == "intra-op" else 1
    conditions = [c for c in args.conditions.split(",") if c]
    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        parser.error(f"unknown condition(s): {', '.join(sorted(unknown))}")

    folder = args.keep or Path(tempfile.mkdtemp(prefix="modelbudget-noise-"))
    started = time.perf_counter()
    try:
        write_project(folder)
        (folder / "out").mkdir(exist_ok=True)
        print(f"machine: {machine()}\nproject: {folder}", flush=True)
        calibrate = run(folder, ["calibrate.py", args.slow_kind, str(SLOWDOWN)], slow=False)
        if calibrate.returncode:
            raise RuntimeError(calibrate.output)
        calibration = json.loads(calibrate.output.strip().splitlines()[-1])
        (folder / "slow.json").write_text(json.dumps(calibration))
        for name in MODELS:
            fast, slow = calibration["forward_ms"][name], calibration["slowed_ms"][name]
            print(
                f"  {name}: forward {fast:.3f} ms, slowed {slow:.3f} ms ({slow / fast - 1:+.0%})", flush=True
            )
        baseline = record_baselines(folder)
        print(
            f"baselines recorded (plugin {baseline['plugin_wall_s']:.1f} s, "
            f"pytest-benchmark {baseline['bench_wall_s']:.1f} s)",
            flush=True,
        )
        runs: list[Run] = []
        for condition in conditions:
            with neighbour(folder, condition, work=args.neighbour_work, seed=args.seed):
                for index in range(args.runs):
                    for slowed in (False, True):
                        if args.tools == "plugin":
                            done = plugin_run(folder, condition, slowed, index, baseline["relatives"])
                        else:
                            done = check_run(
                                folder,
                                condition,
                                slowed,
                                index,
                                baseline["relatives"],
                                baseline["bench_medians_s"],
                            )
                        runs += done
                        statuses = " ".join(f"{c.model}:{c.status}" for c in done[0].plugin)
                        bench = ""
                        if len(done) > 1:
                            failed = " ".join(c.model for c in done[1].bench if c.failed) or "-"
                            bench = f"; pytest-benchmark failed {failed} ({done[1].wall_s:.1f} s)"
                        print(
                            f"  {condition} {'slowed' if slowed else 'same  '} {index + 1}/{args.runs}: "
                            f"plugin {statuses} ({done[0].wall_s:.1f} s){bench}",
                            flush=True,
                        )
        print()
        print(tables(runs, conditions))
        print(f"\ntotal {time.perf_counter() - started:.0f} s")
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "machine": machine(),
                        "arguments": {k: str(v) for k, v in vars(args).items()},
                        "calibration": calibration,
                        "baseline": baseline,
                        "runs": [asdict(r) for r in runs],
                    },
                    indent=1,
                )
            )
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
