"""What ``compile`` adds to one budgeted call: eager, ``backend="eager"`` and inductor, cold and warm.

    .venv/bin/python benchmarks/compile_cost.py          # two runs: inductor's cache cold, then warm

Writes four budgeted tests of a small MLP (eager, ``compile={"backend": "eager"}``,
``compile=True``, eager again) into a temporary project and runs ``pytest --model-budget
--durations=0`` on it twice, in fresh processes; the first run gets an empty inductor cache
directory (``TORCHINDUCTOR_CACHE_DIR``), the second reuses it. Prints each test's call time
from pytest's own durations. Counting only, no timing: what is measured is the compile.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = """
import pytest
import torch
from torch import nn


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()


@pytest.mark.model_budget
def test_1_eager(model_budget):
    model_budget(mlp(), torch.randn(8, 64))


@pytest.mark.model_budget(compile={"backend": "eager"})
def test_2_compile_backend_eager(model_budget):
    model_budget(mlp(), torch.randn(8, 64))


@pytest.mark.model_budget(compile=True)
def test_3_compile_inductor(model_budget):
    model_budget(mlp(), torch.randn(8, 64))


@pytest.mark.model_budget
def test_4_eager_again(model_budget):
    model_budget(mlp(), torch.randn(8, 64))
"""

_DURATION = re.compile(r"^([\d.]+)s call\s+\S+::(test_\w+)$")


def run(project: Path, cache: Path) -> dict[str, float]:
    environment = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--model-budget",
            "--durations=0",
            "--durations-min=0",
        ],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        sys.exit(f"pytest failed:\n{result.stdout}\n{result.stderr}")
    found = {}
    for line in result.stdout.splitlines():
        match = _DURATION.match(line.strip())
        if match:
            found[match.group(2)] = float(match.group(1))
    return found


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        project, cache = Path(tmp, "project"), Path(tmp, "inductor-cache")
        project.mkdir()
        (project / "pytest.ini").write_text("[pytest]\n")
        (project / "test_cost.py").write_text(TESTS)
        cold, warm = run(project, cache), run(project, cache)
    print("| call | first run (inductor cache cold) | second run (cache warm) |")
    print("| --- | --- | --- |")
    for name in sorted(cold):
        print(f"| `{name}` | {cold[name]:.2f} s | {warm.get(name, float('nan')):.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
