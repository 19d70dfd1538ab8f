"""Timing benchmarks: agreement with other timers, run-to-run spread, and false alarms.

    python benchmarks/timing.py compare            # plugin vs torch.utils.benchmark (and triton on GPU)
    python benchmarks/timing.py false-alarms       # baseline, 20 unchanged re-runs, 20 slowed re-runs
    python benchmarks/timing.py probe-choice       # CPU: which speed probe follows a model best
    python benchmarks/timing.py all --json out.json

On a machine with CUDA the GPU cases run (resnet18 b1, resnet50 b1/b64, vit_b_16 b1, eager
and CUDA graph); without it, the CPU cases. Prints Markdown tables; docs/benchmarks.md
keeps the numbers of the last run on each kind of machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from pytest_modelbudget.budgets.timing_verdicts import (
    RECORD_MEASUREMENTS,
    LatencyBaseline,
    measure_and_judge,
    recorded,
)
from pytest_modelbudget.core.devices import cpu_model
from pytest_modelbudget.core.timing.probes import measure_probes
from pytest_modelbudget.core.timing.timer import TimingSettings, TimingStats, time_forward

REPEATS = 5  # measurements per method, for the run-to-run spread


def _spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def _torch_timer(model: nn.Module, x: torch.Tensor, *, graph: bool) -> Callable[[], float]:
    from torch.utils.benchmark import Timer

    def forward() -> object:
        return model(x)

    call = forward
    if graph:
        call = _graph(forward)

    def measure() -> float:
        with torch.inference_mode():
            timer = Timer(stmt="call()", globals={"call": call})
            return float(timer.blocked_autorange(min_run_time=1.0).median * 1e3)

    return measure


def _graph(forward: Callable[[], object]) -> Callable[[], object]:
    with torch.inference_mode():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                forward()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            forward()
    return graph.replay


def _triton(model: nn.Module, x: torch.Tensor, *, graph: bool) -> Callable[[], float] | None:
    try:
        from triton.testing import do_bench
    except ImportError:
        return None

    def forward() -> object:
        return model(x)

    call = _graph(forward) if graph else forward

    def measure() -> float:
        with torch.inference_mode():
            return float(do_bench(call, return_mode="median"))

    return measure


def _plugin(model: nn.Module, x: torch.Tensor, *, graph: bool) -> Callable[[], float]:
    settings = TimingSettings(cuda_graph=graph)
    return lambda: time_forward(model, (x,), settings=settings).median_ms


def _cases() -> list[tuple[str, nn.Module, torch.Tensor, bool]]:
    import torchvision

    if torch.cuda.is_available():
        device = torch.device("cuda")
        models = {
            "resnet18": torchvision.models.resnet18(weights=None),
            "resnet50": torchvision.models.resnet50(weights=None),
            "vit_b_16": torchvision.models.vit_b_16(weights=None),
        }
        specs = [("resnet18", 1), ("resnet50", 1), ("resnet50", 64), ("vit_b_16", 1)]
        cases = []
        for name, batch in specs:
            model = models[name].eval().to(device)
            x = torch.randn(batch, 3, 224, 224, device=device)
            for graph in (False, True):
                cases.append((f"{name} b{batch} {'graph' if graph else 'eager'}", model, x, graph))
        return cases
    model18 = torchvision.models.resnet18(weights=None).eval()
    mlp = _mlp(blocks=4)
    return [
        ("resnet18 b1 cpu", model18, torch.randn(1, 3, 224, 224), False),
        ("mlp 4x512 b64 cpu", mlp, torch.randn(64, 512), False),
    ]


def compare() -> list[dict[str, Any]]:
    """Median latency by method, with the spread over REPEATS measurements and time spent."""
    torch.set_num_threads(1)  # the plugin times CPU at one thread; the others should too
    rows = []
    for label, model, x, graph in _cases():
        methods: dict[str, Callable[[], float] | None] = {
            "plugin": _plugin(model, x, graph=graph),
            "torch.utils.benchmark": _torch_timer(model, x, graph=graph),
            "triton do_bench": _triton(model, x, graph=graph) if x.is_cuda else None,
        }
        for method, measure in methods.items():
            if measure is None:
                continue
            values, seconds = [], []
            for _ in range(REPEATS):
                start = time.perf_counter()
                values.append(measure())
                seconds.append(time.perf_counter() - start)
            row = {
                "case": label,
                "method": method,
                "median_ms": statistics.median(values),
                "spread": _spread(values),
                "seconds_each": statistics.median(seconds),
            }
            rows.append(row)
            print(
                f"| {label} | {method} | {row['median_ms']:.4g} | {row['spread']:.1%} "
                f"| {row['seconds_each']:.2f} |",
                flush=True,
            )
    return rows


class _MLP(nn.Module):
    def __init__(self, blocks: int, width: int = 512) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *(nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(blocks))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def _mlp(blocks: int) -> nn.Module:
    torch.manual_seed(0)
    return _MLP(blocks).eval()


def _false_alarm_cases() -> list[tuple[str, nn.Module, nn.Module, torch.Tensor]]:
    """(label, model, the same model slowed by >= 25% more compute, input)."""
    import torchvision

    if torch.cuda.is_available():
        base = torchvision.models.resnet50(weights=None).eval().cuda()
        # resnet18 on the side adds 1.8 of resnet50's 4.1 GMACs: +44% compute.
        slowed = _WithExtra(base, torchvision.models.resnet18(weights=None)).eval().cuda()
        return [("resnet50 b64 cuda", base, slowed, torch.randn(64, 3, 224, 224, device="cuda"))]
    # 5 blocks instead of 4: +25% MACs. Batch 256 is the "stable setting" (about 10 ms a call).
    return [
        ("mlp 4x512 b64, 1 thread", _mlp(4), _mlp(5), torch.randn(64, 512)),
        ("mlp 4x512 b256, 1 thread", _mlp(4), _mlp(5), torch.randn(256, 512)),
    ]


class _WithExtra(nn.Module):
    """A model that also runs ``extra`` on its input (its first ``rows`` rows): added compute."""

    def __init__(self, model: nn.Module, extra: nn.Module, rows: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.extra = extra
        self.rows = rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.extra(x if self.rows is None else x[..., : self.rows, :])
        return self.model(x)


def false_alarms(reruns: int = 20) -> list[dict[str, Any]]:
    """Record a baseline, then judge ``reruns`` measurements of the unchanged and of a slowed model."""
    results = []
    for label, model, slowed, x in _false_alarm_cases():
        # Recorded as `--update-budgets` records it (see timing.recorded).
        taken = measure_and_judge(
            lambda model=model, x=x: time_forward(model, (x,), settings=TimingSettings()),
            limits_ms=[],
            baseline=None,
            tolerance=0.10,
            stat="median",
            probe=measure_probes,
            at_least=RECORD_MEASUREMENTS,
        )
        kept = recorded(taken.measurements)
        baseline = LatencyBaseline.from_stats(replace(kept, probes=kept.probes or measure_probes()))
        for variant, candidate in (("unchanged", model), ("slowed +25% compute", slowed)):
            verdicts: Counter[str] = Counter()
            misses: list[dict[str, Any]] = []  # every verdict other than the expected one, with its numbers
            expected = "ok" if variant == "unchanged" else "over"
            started = time.perf_counter()
            for _ in range(reruns):

                def measure(candidate: nn.Module = candidate, x: torch.Tensor = x) -> TimingStats:
                    return time_forward(candidate, (x,), settings=TimingSettings())

                found = measure_and_judge(
                    measure,
                    limits_ms=[],
                    baseline=baseline,
                    tolerance=0.10,
                    stat="median",
                    probe=measure_probes,
                )
                verdict = found.baseline
                assert verdict is not None
                verdicts[verdict.status.value] += 1
                if verdict.status != expected:
                    misses.append(
                        {
                            "status": verdict.status.value,
                            "latency": verdict.measured_ms / verdict.reference_ms,
                            "own_slowdown": verdict.own_slowdown,
                            "machine": verdict.machine,
                            "reason": verdict.reason,
                        }
                    )
            row = {
                "case": label,
                "variant": variant,
                "baseline_ms": kept.median_ms,
                "fail": verdicts["over"],
                "inconclusive": verdicts["inconclusive"],
                "pass": verdicts["ok"],
                "seconds": time.perf_counter() - started,
                "misses": misses,
            }
            results.append(row)
            print(
                f"| {label} | {variant} | {kept.median_ms:.4g} | {row['fail']} | {row['inconclusive']} | "
                f"{row['pass']} | {row['seconds']:.0f} |",
                flush=True,
            )
    return results


def _paired_measurement(
    model: nn.Module, x: torch.Tensor, number: int, probes: dict[str, Callable[[], object]], seconds: float
) -> list[tuple[float, dict[str, float]]]:
    """Blocks of ``number`` calls for ``seconds``, each preceded by one run of every probe."""
    blocks = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        before = {}
        for name, work in probes.items():
            start = time.perf_counter()
            work()
            before[name] = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(number):
            model(x)
        blocks.append(((time.perf_counter() - start) / number, before))
    return blocks


def probe_choice(seconds: float = 60.0) -> list[dict[str, Any]]:
    """Which probe follows a model through the machine's slow periods (CPU, one thread)?

    Alternates 1.2 s measurements of a model and of the same model with about 25% more
    compute, for ``seconds`` per case; every probe runs once before each ~10 ms block. For
    each way of normalizing -- the raw median latency, or the median of (time per call /
    the probe's time just before) -- the unchanged model's measurements are divided by
    their median: their spread says how steady the number is, and where the slowed model
    lands says how well a 25% slowdown stands out from it.
    """
    import torchvision

    from pytest_modelbudget.core.timing.probes import PROBES

    torch.set_num_threads(1)
    probes = {name: make() for name, make in PROBES.items()}
    torch.manual_seed(0)
    resnet18 = torchvision.models.resnet18(weights=None).eval()
    # A second resnet18 on the top quarter of the image: about +25% compute.
    resnet18_slowed = _WithExtra(resnet18, torchvision.models.resnet18(weights=None).eval(), rows=56)
    cases = [
        ("mlp 4x512 b64", _mlp(4), _mlp(5), torch.randn(64, 512)),
        ("mlp 4x512 b256", _mlp(4), _mlp(5), torch.randn(256, 512)),
        ("resnet18 b1", resnet18, resnet18_slowed, torch.randn(1, 3, 224, 224)),
    ]
    estimators: dict[str, Callable[[list[tuple[float, dict[str, float]]]], float]] = {
        "median latency": lambda blocks: statistics.median(t for t, _ in blocks)
    }
    for name in probes:
        estimators[f"median of time / {name} probe"] = lambda blocks, name=name: statistics.median(
            t / before[name] for t, before in blocks
        )
    rows = []
    for label, model, slowed, x in cases:
        with torch.inference_mode():
            for _ in range(3):
                model(x), slowed(x)
            start = time.perf_counter()
            model(x)
            number = max(1, round(0.01 / (time.perf_counter() - start)))
            taken: dict[str, list[list[tuple[float, dict[str, float]]]]] = {"unchanged": [], "slowed": []}
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                for variant, candidate in (("unchanged", model), ("slowed", slowed)):
                    taken[variant].append(_paired_measurement(candidate, x, number, probes, 1.2))
        for estimator, value in estimators.items():
            unchanged = [value(blocks) for blocks in taken["unchanged"]]
            center = statistics.median(unchanged)
            same = [v / center for v in unchanged]
            slow = [value(blocks) / center for blocks in taken["slowed"]]
            row = {
                "case": label,
                "estimator": estimator,
                "measurements": len(same),
                "cv": statistics.pstdev(same),
                "lowest": min(same),
                "highest": max(same),
                "slowed_median": statistics.median(slow),
                "slowed_lowest": min(slow),
            }
            rows.append(row)
            print(
                f"| {label} | {estimator} | {row['measurements']} | {row['cv']:.1%} | "
                f"{row['lowest']:.3f} to {row['highest']:.3f} | {row['slowed_median']:.3f} | "
                f"{row['slowed_lowest']:.3f} |",
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["compare", "false-alarms", "probe-choice", "all"])
    parser.add_argument("--reruns", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0, help="per case, for probe-choice")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{cpu_model()} (CPU)"
    print(f"device: {device}; torch {torch.__version__}; python {sys.version.split()[0]}\n")
    report: dict[str, Any] = {"device": device, "torch": torch.__version__}
    if args.what in ("compare", "all"):
        print(
            "| case | method | median ms | spread of 5 | s per measurement |\n| --- | --- | --- | --- | --- |"
        )
        report["compare"] = compare()
        print()
    if args.what in ("false-alarms", "all"):
        print(
            "| case | model | baseline ms | fail | inconclusive | pass | seconds |\n"
            "| --- | --- | --- | --- | --- | --- | --- |"
        )
        report["false_alarms"] = false_alarms(args.reruns)
        print()
    if args.what == "probe-choice" or (args.what == "all" and not torch.cuda.is_available()):
        print(
            "| case | value | measurements | CV | unchanged range | slowed, median | slowed, lowest |\n"
            "| --- | --- | --- | --- | --- | --- | --- |"
        )
        report["probe_choice"] = probe_choice(args.seconds)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
