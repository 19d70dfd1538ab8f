"""The package's shape, checked: layers import only downwards, pytest only in the pytest layer, small files.

docs/architecture.md draws the same map; this test keeps it true. Imports are read from the
source with ``ast``, lazy ones inside functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pytest_modelbudget"

# Top to bottom. A module may import its own layer and the layers below it.
LAYERS: dict[str, tuple[str, ...]] = {
    # The entry points: the pytest plugin, the command line, the package's lazy API.
    "pytest and command line": ("plugin", "options", "session", "fixture", "__main__", "profile", "__init__"),
    "report": ("report", "html_report", "html_assets", "text_table", "profile_report"),
    "measure, budgets, baselines": (
        "measure",
        "results",
        "checks",
        "timing_verdicts",
        "baselines",
        "budgets",
        "metrics",
        "profile_result",
    ),
    "units": ("units",),
    "measuring core": (
        "counting",
        "dispatch",
        "held",
        "mac_formulas",
        "mac_free",
        "shape_rules",
        "model_state",
        "timing",
        "cuda_memory",
        "devices",
        "probes",
        "roofline",
        "benchmark_timer",
        "compiling",
        "training",
        "train_memory",
        "optimizers",
    ),
    "ground": ("errors",),
}
LAYER_OF = {module: depth for depth, modules in enumerate(LAYERS.values()) for module in modules}
PYTEST_LAYER = {"plugin", "options", "session", "fixture"}
REPORT_LAYER = set(LAYERS["report"])
MAX_LINES = 500


def modules() -> list[str]:
    return sorted(path.stem for path in PACKAGE.glob("*.py"))


def imports(module: str) -> set[str]:
    """Top-level names this module imports: package modules by stem, others by distribution."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                if node.module:
                    found.add(node.module.split(".")[0])
                else:
                    found.update(alias.name for alias in node.names)
            elif node.module:
                found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found


def test_every_module_has_a_layer() -> None:
    assert set(modules()) == set(LAYER_OF), "add the new module to LAYERS and to docs/architecture.md"


@pytest.mark.parametrize("module", modules())
def test_layers_import_only_downwards(module: str) -> None:
    upward = {name for name in imports(module) & set(LAYER_OF) if LAYER_OF[name] < LAYER_OF[module]}
    assert not upward, f"{module} imports {sorted(upward)} from a layer above it"


@pytest.mark.parametrize("module", modules())
def test_only_the_pytest_layer_imports_pytest(module: str) -> None:
    if module not in PYTEST_LAYER:
        assert not imports(module) & {"pytest", "_pytest", "pluggy"}


@pytest.mark.parametrize("module", modules())
def test_no_module_outgrows_its_room(module: str) -> None:
    lines = len((PACKAGE / f"{module}.py").read_text().splitlines())
    assert lines <= MAX_LINES, f"{module}.py has {lines} lines: split it by responsibility"


def test_the_measuring_and_budget_layers_never_word_results() -> None:
    below_report = [m for m in modules() if LAYER_OF[m] > LAYER_OF["report"]]
    assert below_report
    for module in below_report:
        assert not imports(module) & REPORT_LAYER, module
