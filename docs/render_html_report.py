"""Render ``docs/html_report.png``: a realistic ``--budget-html`` report, shot in headless Chromium.

Run from the repository root (needs Debian's ``chromium``: ``apt-get install chromium``)::

    .venv/bin/python docs/render_html_report.py [--html report.html]

Each call below is measured the way the plugin measures it (``measure_call``: real
counts of torchvision models built with ``weights=None``, real timing where a latency is
limited), against baselines taken from a neighbouring model, so the page shows what a
real run shows: a model that grew, a backbone swapped for a bigger one, a model that
shrank, calls comfortably inside their limits, and a new call with no baseline yet.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torchvision  # noqa: E402

from example_project.models import SimpleModel, TinyGPT  # noqa: E402
from pytest_modelbudget.budgets.baselines import Entry  # noqa: E402
from pytest_modelbudget.budgets.budget import CallSettings, parse_budget  # noqa: E402
from pytest_modelbudget.budgets.measure import MODULE_DEPTH, measure_call  # noqa: E402
from pytest_modelbudget.budgets.results import CallResult, shallow_modules  # noqa: E402
from pytest_modelbudget.core.counting.count import count  # noqa: E402
from pytest_modelbudget.core.timing.timer import TimingSettings  # noqa: E402
from pytest_modelbudget.report import exports  # noqa: E402
from pytest_modelbudget.report.html import render  # noqa: E402

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


def baseline_of(
    model: torch.nn.Module, *inputs: torch.Tensor, limits: Mapping[str, Any] | None = None
) -> Entry:
    """The budgets.yaml entry an --update-budgets run would have stored for this model."""
    counts = count(model, inputs)
    return Entry(
        metrics={"macs": counts.macs, "params": counts.params, "size": counts.size_bytes},
        modules=shallow_modules(counts.by_module(MODULE_DEPTH)),
        convention=counts.convention,
        limits=dict(limits or {}),
    )


def image(batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224)


def calls() -> list[tuple[str, str | None, Callable[[], Any], tuple[Any, ...], dict[str, Any], Entry | None]]:
    """(node id, call name, model factory, inputs, marker keywords, stored entry)."""
    tv = torchvision.models
    tokens = torch.zeros(1, 512, dtype=torch.int64)
    digits = torch.randn(1, 1, 28, 28)
    return [
        (
            "tests/test_models.py::test_simple_model",
            None,
            lambda: SimpleModel(hidden=600),  # widened from 500: the accidental bloat
            (digits,),
            {"max_macs": "2M", "max_params": "1.5M", "max_latency_ms": 20},
            baseline_of(SimpleModel(hidden=500), digits),
        ),
        (
            "tests/test_detector.py::test_backbone",
            None,
            lambda: tv.resnet34(weights=None),  # the baseline was recorded with resnet18
            (image(),),
            {"max_macs": "4G", "max_size": "100 MB"},
            baseline_of(tv.resnet18(weights=None).eval(), image()),
        ),
        (
            "tests/test_models.py::test_resnet18",
            None,
            lambda: tv.resnet18(weights=None),
            (image(),),
            {"max_macs": "2G", "max_params": "12M", "max_size": "50 MB"},
            baseline_of(tv.resnet18(weights=None).eval(), image()),
        ),
        (
            "tests/test_models.py::test_mobilenet_batch_sizes",
            "batch8",
            lambda: tv.mobilenet_v3_small(weights=None),
            (image(8),),
            {},
            baseline_of(
                tv.mobilenet_v3_small(weights=None).eval(),
                image(8),
                limits={"max_macs": "500M", "max_size": "12 MB"},
            ),
        ),
        (
            "tests/test_models.py::test_tiny_gpt[512]",
            None,
            TinyGPT,
            (tokens,),
            {"max_params": "1M", "tolerance": "2%", "max_latency_ms": 100},
            baseline_of(TinyGPT().eval(), tokens),
        ),
        (
            "tests/test_models.py::test_efficientnet",
            None,
            lambda: tv.efficientnet_b0(weights=None),  # the baseline was recorded with b1
            (image(),),
            {"max_macs": "1G"},
            baseline_of(tv.efficientnet_b1(weights=None).eval(), image()),
        ),
        (
            "tests/test_vit.py::test_vit_b_16",
            None,
            lambda: tv.vit_b_16(weights=None),
            (image(),),
            {"max_macs": "18G", "max_memory_traffic": "1 GB"},
            None,  # new: no baseline yet
        ),
    ]


def measure_all() -> list[CallResult]:
    settings = CallSettings(timing=TimingSettings(time_budget_s=1.0))
    results = []
    for nodeid, name, factory, inputs, marker, entry in calls():
        torch.manual_seed(0)
        model = factory().eval()
        result, _ = measure_call(
            model,
            inputs,
            {},
            nodeid=nodeid,
            name=name,
            marker=parse_budget(marker),
            entry=entry,
            settings=settings,
        )
        print(f"{result.key}: {result.verdict.value}", file=sys.stderr)
        results.append(result)
    return results


def screenshot(html_path: Path, png_path: Path, *, width: int, height: int) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={png_path}",
                f"--window-size={width},{height}",
                html_path.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=Path, help="also keep the rendered HTML here")
    parser.add_argument("--png", type=Path, default=REPO / "docs" / "html_report.png")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=1600)
    args = parser.parse_args()
    torch.set_num_threads(1)
    page = render(measure_all(), title="Model budgets", environment=exports.environment())
    with tempfile.TemporaryDirectory() as tmp:
        html_path = args.html or Path(tmp) / "report.html"
        html_path.write_text(page, encoding="utf-8")
        screenshot(html_path, args.png, width=args.width, height=args.height)
    print(f"wrote {os.path.relpath(args.png)}", file=sys.stderr)


if __name__ == "__main__":
    main()
