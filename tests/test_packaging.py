"""The wheel holds the whole package: every subpackage (the layers are folders) and py.typed.

Built from a copy of the source tree, as ``pip install .`` builds it (non-editable), then
installed into a folder of its own and imported from there, away from this checkout.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pytest_modelbudget"

USE_THE_INSTALLED_COPY = """
import sys
import pytest_modelbudget
from pytest_modelbudget import count, TrainSpec
from pytest_modelbudget.plugin import ModelBudgetWarning
from pytest_modelbudget.benchmark_timer import synchronized_perf_counter
from pytest_modelbudget.budgets.measure import measure_call
from pytest_modelbudget.cli.main import main
import torch

print(pytest_modelbudget.__file__)
print(count(torch.nn.Linear(4, 3), (torch.randn(2, 4),)).macs)
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(PACKAGE, source / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, source],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("pytest_modelbudget-*.whl")
    return built


def test_the_wheel_holds_every_module_and_py_typed(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {path.relative_to(ROOT).as_posix() for path in PACKAGE.rglob("*.py")}
    assert expected <= names, sorted(expected - names)
    assert "pytest_modelbudget/py.typed" in names
    entry_points = (
        zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    )
    assert "modelbudget = pytest_modelbudget.plugin" in entry_points  # -p no:modelbudget still works


def test_the_installed_wheel_works_away_from_the_checkout(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel],
        check=True,
        capture_output=True,
    )
    done = subprocess.run(
        [sys.executable, "-c", USE_THE_INSTALLED_COPY],
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    where, macs = done.stdout.split()
    assert where.startswith(str(target))  # the installed copy, not this checkout
    assert int(macs) == 2 * 4 * 3
