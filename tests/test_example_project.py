"""The example project as a user meets it: passing, catching bloat, accepting growth."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

import pytest
import torch

# Imported before any in-process pytester run: torchvision and torchao register their ops
# once per process.
import torchao.quantization  # noqa: F401
import torchvision  # noqa: F401

from pytest_modelbudget.budgets import baselines
from pytest_modelbudget.core.counting.count import count

REPO = Path(__file__).resolve().parents[1]
SIMPLE = "example_project/test_models.py::test_simple_model"
SIMPLE_INT8 = "example_project/test_models.py::test_simple_model_int8"


@pytest.fixture
def example(pytester: pytest.Pytester) -> pytest.Pytester:
    shutil.copytree(
        REPO / "example_project",
        pytester.path / "example_project",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(REPO / "budgets.yaml", pytester.path / "budgets.yaml")
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    return pytester


def _example_models() -> ModuleType:
    # Loaded under another name: importing `example_project` here would shadow the copy
    # that the pytester runs below import.
    spec = importlib.util.spec_from_file_location("_example_models", REPO / "example_project" / "models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_simple_model_counts_match_the_hand_computed_numbers() -> None:
    counts = count(_example_models().SimpleModel(hidden=500), (torch.randn(1, 1, 28, 28),))
    # 260 + 1,820 + 1,000,500 + 5,010 (a widely copied write-up says 1,010,120: a mis-addition)
    assert counts.params == 1_007_590
    # 144,000 + 180,000 + 1,000,000 + 5,000; bias additions are not MACs
    assert counts.macs == 1_329_000
    assert counts.flops == 2_658_000
    assert {path: stats.macs for path, stats in counts.by_module(1).items() if stats.macs} == {
        "conv1": 144_000,
        "conv2": 180_000,
        "fc1": 1_000_000,
        "fc2": 5_000,
    }


def test_the_cached_decoder_generation_counts_match_the_analytic_numbers() -> None:
    from pytest_modelbudget.core.generation.count import count_generation
    from pytest_modelbudget.core.generation.spec import GenerationSpec

    model = _example_models().CachedGPT().eval()
    model.setup_caches(batch=1, max_seq=256)
    spec = GenerationSpec(32, step=lambda m, tokens, positions: m(tokens, positions))
    counted = count_generation(model, torch.randint(0, 1000, (1, 128)), spec)
    # Per token: per layer qkv 128x384, proj 128x128, mlp 2 x 128x512; the head 128x1000; and
    # attention over the whole static cache, 2 (QK^T, PV) x 4 heads x 256 positions x 32.
    per_token = 2 * (128 * 384 + 128 * 128 + 2 * 128 * 512) + 128 * 1000 + 2 * (2 * 4 * 256 * 32)
    assert counted.prefill.macs == 128 * per_token
    assert counted.decode.macs == 31 * per_token
    assert counted.kv_cache == 2 * 2 * 4 * 256 * 32 * 4  # keys and values, 2 layers, float32
    entry = baselines.load(REPO / "budgets.yaml").entries[
        "example_project/test_models.py::test_cached_gpt_generate"
    ]
    assert (entry.metrics["prefill_macs"], entry.metrics["decode_macs"], entry.metrics["kv_cache"]) == (
        counted.prefill.macs,
        counted.decode.macs,
        counted.kv_cache,
    )


def test_committed_baselines_are_current(example: pytest.Pytester) -> None:
    # Counts only: timing verdicts depend on this machine; tests/test_timing_budgets.py covers them.
    result = example.runpytest("example_project", "--model-budget", "--budget-strict", "--budget-no-timing")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["9 measured call(s): 9 ok"])
    assert "stale" not in result.stdout.str()


def test_widening_a_layer_fails_then_update_rewrites_exactly_that_entry(
    example: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = example.path / "budgets.yaml"
    original = path.read_text()
    monkeypatch.setenv("EXAMPLE_WIDEN", "1")
    result = example.runpytest("example_project", "--model-budget", "--budget-no-timing")
    result.assert_outcomes(passed=6, failed=2)  # the float model and its int8 version
    result.stdout.fnmatch_lines(
        [
            f"*model budget exceeded for {SIMPLE}:",
            "*macs 1.53 M > baseline 1.33 M (+15.1%)",
            "*params 1.21 M > baseline 1.01 M (+20.0%)",
            "*size 4.61 MiB > baseline 3.84 MiB (+20.0%)",
            "*modules that grew (macs): fc1 1 M -> 1.2 M (+20.0%), fc2 5 k -> 6 k (+20.0%)",
            f"*pytest --model-budget --update-budgets {SIMPLE}",
        ]
    )
    example.runpytest("example_project", "--update-budgets", "--budget-no-timing").assert_outcomes(passed=8)
    before, after = baselines.parse(original.encode(), "old"), baselines.load(path).entries
    assert [key for key in before if before[key] != after[key]] == [SIMPLE, SIMPLE_INT8]
    changed = [line for line in after_lines(path) if line not in original.splitlines()]
    # The file is written in the current format (a version 1 file migrates on its first update).
    assert "version: 2" in after_lines(path)
    changed = [line for line in changed if not line.startswith("version: ")]
    # Each: macs, params, size, fc1 macs+params, fc2 macs+params; the int8 one also its
    # int8 MACs (the float MACs, the convolutions', did not change).
    assert len(changed) == 7 + 8
    assert before.keys() == after.keys()
    example.runpytest("example_project", "--model-budget", "--budget-no-timing").assert_outcomes(passed=8)


def after_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()
