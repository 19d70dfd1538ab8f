"""The roofline estimate: per-op max(compute, memory) time on a hardware spec."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from conftest import write_test

from pytest_modelbudget.core.counting.roofline import PRESETS, HardwareSpec, estimate, hardware
from pytest_modelbudget.errors import UnitError


@dataclass(frozen=True)
class Op:
    module: str
    op: str
    macs: int
    memory_traffic: int
    dtype: str = "float32"


SPEC = HardwareSpec("toy", {"float32": 1e12, "bfloat16": 4e12}, bandwidth=1e11)


def test_each_op_is_compute_or_memory_bound_and_times_add_up() -> None:
    ops = [
        Op(
            "fc", "aten.addmm", macs=1_000_000_000, memory_traffic=10_000_000
        ),  # 2 ms compute vs 0.1 ms memory
        Op("act", "aten.relu", macs=0, memory_traffic=50_000_000),  # 0.5 ms memory
        Op(
            "fc", "aten.addmm", macs=1_000_000_000, memory_traffic=0, dtype="bfloat16"
        ),  # 0.5 ms at 4x the rate
    ]
    result = estimate(ops, SPEC)
    assert result.total_ms == pytest.approx(2.0 + 0.5 + 0.5)
    assert result.memory_bound_ms == pytest.approx(0.5)
    assert result.memory_bound_ops == {"aten.relu": 1}
    assert result.by_module == pytest.approx({"fc": 2.5, "act": 0.5})
    assert result.memory_bound_share == pytest.approx(0.5 / 3.0)


def test_unknown_dtypes_use_the_float32_rate() -> None:
    assert estimate([Op("", "aten.mm", 500_000_000, 0, "int8")], SPEC).total_ms == pytest.approx(1.0)


def test_presets_and_custom_specs() -> None:
    assert hardware("H100") is PRESETS["h100"]
    assert PRESETS["a100"].bandwidth == 2.039e12
    custom = hardware({"peak_flops": {"float32": 2e13}, "bandwidth": 1e12, "name": "mine"})
    assert (custom.name, custom.peak("float32")) == ("mine", 2e13)


@pytest.mark.parametrize(
    "bad",
    [
        "tpu",
        {"peak_flops": {"float16": 1e12}, "bandwidth": 1e12},
        {"peak_flops": {"float32": -1}, "bandwidth": 1},
        3,
    ],
)
def test_bad_specs_are_refused(bad: object) -> None:
    with pytest.raises(UnitError, match="is not a hardware preset"):
        hardware(bad)


def test_roofline_budget_end_to_end(project: pytest.Pytester) -> None:
    write_test(
        project,
        """
        from pytest_modelbudget.core.counting.roofline import PRESETS

        @pytest.mark.model_budget(max_roofline_ms=0.001, hardware="a100")
        def test_over(model_budget):
            model_budget(torch.nn.Linear(1024, 1024), torch.randn(1, 1024))

        @pytest.mark.model_budget(max_roofline_ms=1)
        def test_needs_hardware(model_budget):
            model_budget(torch.nn.Linear(4, 4), torch.randn(1, 4))
        """,
    )
    result = project.runpytest("--model-budget")
    result.assert_outcomes(failed=2)
    # addmm reads x (4 KiB), W^T (4 MiB) and the bias (4 KiB) and writes 4 KiB: memory-bound at
    # 4,206,592 B / 2.039 TB/s = 2.063 us, against 2.1 MFLOP / 19.5 TFLOP/s = 0.11 us of compute.
    result.stdout.fnmatch_lines(["*roofline_ms 2.06 us > limit (marker) 1 us (+106.3%)"])
    result.stdout.fnmatch_lines(
        ["*max_roofline_ms needs a hardware spec: hardware='h100' in the marker, or --budget-hardware"]
    )
    result = project.runpytest("--model-budget", "--budget-hardware=h100", "-k", "needs_hardware")
    result.assert_outcomes(passed=1, deselected=1)


def test_profile_shows_the_roofline_per_module() -> None:
    from pytest_modelbudget.cli.profile import ProfileError, run

    lines = run("torchvision.models:resnet18", ["1x3x224x224"], hardware="h100")
    header = next(line for line in lines if line.startswith("module"))
    assert header.split()[-1] == "roofline"
    assert any(line.strip().startswith("roofline on NVIDIA H100 SXM") for line in lines)
    assert any("memory-bound" in line and "aten.native_batch_norm" in line for line in lines)
    with pytest.raises(ProfileError, match="--hardware: 'tpu' is not a hardware preset"):
        run("torchvision.models:resnet18", ["1x3x224x224"], hardware="tpu")
