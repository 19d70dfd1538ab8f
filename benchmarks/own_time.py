"""What each clock sees of a forward that works, waits or is preempted -- and a 1 ms sleep caught.

Part 1, in one process: an MLP forward (about 2 ms at one thread) timed in blocks of 20
calls, unchanged or slowed by a quarter in one of three ways -- Python work on the timing
thread, a sleep, the same work on a worker thread the forward waits for -- and, unchanged,
on two intra-op threads. Each with no neighbour, then a neighbour of one and of two busy
processes (a 256x256 matmul loop each, on this 2-core VM). Per call, relative to the quiet
unchanged forward: the wall time, the own time the plugin judges (wall time less run-queue
waits, :mod:`pytest_modelbudget.core.timing.own_time`) and the thread's CPU time (the
fallback), each the median of 30 blocks.

Part 2, as CI runs it: a sub-millisecond MLP with ``timing=True``; a baseline recorded on the quiet
machine, then fresh ``pytest --model-budget`` processes of the unchanged model and of the
model sleeping 1 ms in every forward, with no neighbour and with one busy process per core.

Part 3, the speed probe's two runs: the three models of benchmarks/noise.py at one thread,
unchanged and slowed by a quarter (work, sleep, worker thread), each timed by the plugin's
own ``time_forward`` (3 measurements of 1 s each, the median of them). The own slowdown a
verdict reads, against the unchanged forward's measurement: by the ratio to the probe's
first run, as a budgets.yaml version 1 baseline is judged (the blocks' lower quartile over
the baseline's median), and by the ratio to its settled second run, as version 2 judges (the
lower quartile over the baseline's lower quartile) -- next to the latency's change.

    .venv/bin/python benchmarks/own_time.py
    .venv/bin/python benchmarks/own_time.py --runs 10
    .venv/bin/python benchmarks/own_time.py --part 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEIGHBOUR = "import torch\ntorch.set_num_threads(1)\na = torch.randn(256, 256)\nwhile True:\n    a @ a\n"


@contextmanager
def neighbours(count: int) -> Iterator[None]:
    processes = [subprocess.Popen([sys.executable, "-c", NEIGHBOUR]) for _ in range(count)]
    try:
        time.sleep(1.5 if count else 0)  # their imports done
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait()


def python_work(iterations: int) -> int:
    total = 0
    for i in range(iterations):
        total += i * i
    return total


def decomposition(blocks: int = 30, per_block: int = 20) -> None:
    import torch

    from pytest_modelbudget.core.devices import steady_heap
    from pytest_modelbudget.core.timing.own_time import SchedClock, sched_available

    if not sched_available():
        raise SystemExit("part 1 needs /proc/thread-self/schedstat (Linux)")
    steady_heap()
    torch.manual_seed(0)
    layers = [torch.nn.Linear(1024, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(2048, 1024)).eval()
    x = torch.randn(1, 1024)
    pool = ThreadPoolExecutor(1)
    pool.submit(int).result()
    clock = SchedClock()

    def per_call(forward: Callable[[], object], threads: int = 1) -> tuple[float, float, float]:
        torch.set_num_threads(threads)
        for _ in range(5):
            forward()
        rows = []
        for _ in range(blocks):
            start = clock.start()
            for _ in range(per_block):
                forward()
            block = clock.split(start, clock.end())
            rows.append((block.wall_s, block.wall_s - block.preempted_s, clock_cpu(start, clock.end())))
        torch.set_num_threads(1)
        return tuple(statistics.median(r[i] for r in rows) / per_block for i in range(3))  # type: ignore[return-value]

    def clock_cpu(start: object, end: object) -> float:
        return end.cpu - start.cpu  # type: ignore[attr-defined]

    with torch.inference_mode():
        base_s = per_call(lambda: model(x))[0]
        start = time.perf_counter()
        python_work(200_000)
        loop_s = (time.perf_counter() - start) / 200_000
        extra = int(base_s * 0.25 / loop_s)
        kinds: dict[str, tuple[Callable[[], object], int]] = {
            "unchanged": (lambda: model(x), 1),
            "+25% work on the timing thread": (lambda: (model(x), python_work(extra)), 1),
            "+25% as a sleep": (lambda: (model(x), time.sleep(base_s * 0.2)), 1),
            "+25% on a worker thread it waits for": (
                lambda: (model(x), pool.submit(python_work, extra).result()),
                1,
            ),
            "unchanged, 2 intra-op threads": (lambda: model(x), 2),
        }
        print(
            f"MLP forward {base_s * 1e3:.2f} ms at one thread; "
            "per call, over that (wall / own time / CPU time)"
        )
        print(f"\n{'forward':<40} {'no neighbour':>20} {'1 busy process':>20} {'2 busy processes':>20}")
        results = {name: [] for name in kinds}
        for count in (0, 1, 2):
            with neighbours(count):
                for name, (forward, threads) in kinds.items():
                    results[name].append(per_call(forward, threads))
        for name, cells in results.items():
            text = ["{:.2f} / {:.2f} / {:.2f}".format(*(v / base_s for v in cell)) for cell in cells]
            print(f"{name:<40} {text[0]:>20} {text[1]:>20} {text[2]:>20}")


PROJECT = """
import os
import time

import pytest
import torch
from torch import nn

torch.set_num_threads(1)


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 512))

    def forward(self, x):
        out = self.layers(x)
        if os.environ.get("SLEEP_MS"):
            time.sleep(float(os.environ["SLEEP_MS"]) / 1e3)  # the same MACs, a forward that waits
        return out


@pytest.mark.model_budget(timing=True)
def test_mlp(model_budget):
    model_budget(Mlp().eval(), torch.randn(1, 512))
"""


def check(folder: Path, env: dict[str, str]) -> dict[str, object]:
    report = folder / "report.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--model-budget",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--budget-json={report}",
        ],
        cwd=folder,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        check=False,
    )
    (call,) = json.loads(report.read_text())["calls"]
    return call


def sleep_caught(runs: int) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "test_mlp.py").write_text(textwrap.dedent(PROJECT))
        (folder / "pytest.ini").write_text("[pytest]\n")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "--model-budget",
                "--update-budgets",
                "-q",
                "-p",
                "no:cacheprovider",
            ],
            cwd=folder,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            check=True,
        )
        import yaml

        (entry,) = yaml.safe_load((folder / "budgets.yaml").read_text())["entries"].values()
        (baseline,) = entry["timing"].values()
        print(
            f"\nAn MLP of {baseline['median_ms']:.2f} ms (its baseline), {runs} check runs each "
            "(verdicts; latency over the baseline, median)"
        )
        print(f"\n{'condition':<28} {'unchanged':>28} {'sleeping 1 ms per forward':>28}")
        for count, condition in ((0, "no neighbour"), (os.cpu_count() or 1, "one busy process per core")):
            cells = []
            with neighbours(count):
                for env in ({}, {"SLEEP_MS": "1"}):
                    calls = [check(folder, env) for _ in range(runs)]
                    verdicts = [c["verdict"] for c in calls]
                    latency = [
                        next(
                            k["measured"] / k["reference"] for k in c["checks"] if k["metric"] == "latency_ms"
                        )
                        for c in calls
                    ]
                    summary = ", ".join(f"{verdicts.count(v)} {v}" for v in sorted(set(verdicts)))
                    cells.append(f"{summary}; {statistics.median(latency):.2f}x")
            print(f"{condition:<28} {cells[0]:>28} {cells[1]:>28}")


def noise_models() -> dict[str, tuple[object, object]]:
    """The three models of benchmarks/noise.py, at batch 1."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    conv = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    encoder = nn.TransformerEncoderLayer(256, 4, dim_feedforward=1024, batch_first=True)
    mlp = nn.Sequential(
        nn.Linear(1024, 2048),
        nn.ReLU(),
        nn.Linear(2048, 2048),
        nn.ReLU(),
        nn.Linear(2048, 2048),
        nn.ReLU(),
        nn.Linear(2048, 1024),
    )
    return {
        "conv": (conv.eval(), torch.randn(1, 3, 112, 112)),
        "transformer": (encoder.eval(), torch.randn(1, 128, 256)),
        "mlp": (mlp.eval(), torch.randn(1, 1024)),
    }


def probe_runs(measurements: int = 3) -> None:
    import torch

    from pytest_modelbudget.core.devices import steady_heap
    from pytest_modelbudget.core.timing.timer import TimingSettings, TimingStats, time_forward

    steady_heap()
    torch.set_num_threads(1)
    pool = ThreadPoolExecutor(1)
    pool.submit(int).result()
    start = time.perf_counter()
    python_work(200_000)
    loop_s = (time.perf_counter() - start) / 200_000
    settings = TimingSettings(threads=1, min_time_s=1.0, time_budget_s=1.5)

    class Slowed(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module, kind: str, extra_s: float) -> None:
            super().__init__()
            self.inner, self.kind, self.extra_s = inner, kind, extra_s

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.inner(x)
            if self.kind == "work":
                python_work(int(self.extra_s / loop_s))
            elif self.kind == "sleep":
                time.sleep(self.extra_s * 0.8)  # a sleep overshoots by about a fifth here
            else:
                pool.submit(python_work, int(self.extra_s / loop_s)).result()
            return out

    def typical(model: object, x: object) -> TimingStats:
        taken = [time_forward(model, (x,), settings=settings) for _ in range(measurements)]
        return sorted(taken, key=lambda m: m.median_ms)[len(taken) // 2]

    print(
        "\nown slowdown of a +25% forward, by the probe's first run (version 1) / its settled run"
        " (version 2); latency change"
    )
    print(f"\n{'model':<12} {'work':>22} {'sleep':>22} {'worker thread':>22}")
    # time_forward runs the model under inference_mode itself: the inputs are made outside it.
    for name, (model, x) in noise_models().items():
        base = typical(model, x)
        cells = []
        for kind in ("work", "sleep", "thread"):
            slowed = typical(Slowed(model, kind, base.median_ms * 0.25 / 1e3), x)
            first = (slowed.relative_low or 0.0) / (base.relative or 1.0)
            settled = (slowed.relative_settled or 0.0) / (base.relative_settled or 1.0)
            latency = slowed.median_ms / base.median_ms
            cells.append(f"{first:.2f} / {settled:.2f}; {latency:.2f}")
        print(f"{name:<12} {cells[0]:>22} {cells[1]:>22} {cells[2]:>22}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--part", type=int, choices=(1, 2, 3), help="only this part")
    args = parser.parse_args()
    if args.part in (None, 1):
        decomposition()
    if args.part in (None, 2):
        sleep_caught(args.runs)
    if args.part in (None, 3):
        probe_runs()


if __name__ == "__main__":
    main()
