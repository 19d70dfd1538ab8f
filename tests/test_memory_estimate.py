"""max_memory on CPU: the peak of live activation bytes from the dispatch trace."""

from __future__ import annotations

import pytest
import torch
from conftest import write_test

from pytest_modelbudget.core.counting.count import count


def mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(100, 1000), torch.nn.ReLU(), torch.nn.Linear(1000, 10))


@pytest.mark.parametrize("execution", ["meta", "real"])
def test_peak_is_the_largest_set_of_live_activations(execution: str) -> None:
    # fc1's 8x1000 float32 output (32,000 B) is still held by Sequential when ReLU makes its
    # own 32,000 B output: 64,000 B. fc2's 320 B output comes after fc1's output is dropped.
    assert count(mlp(), (torch.randn(8, 100),), execution=execution).peak_memory == 64_000


def test_in_place_ops_and_views_allocate_nothing() -> None:
    class InPlace(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x * 2  # 400 B
            y.relu_()
            return y.view(10, 10).t()

    assert count(InPlace(), (torch.randn(100),)).peak_memory == 400


def test_peak_does_not_grow_with_repeated_layers_that_free_their_inputs() -> None:
    class Chain(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for _ in range(10):
                x = x + 1  # each step frees the previous 4,000 B
            return x

    assert count(Chain(), (torch.randn(1000),)).peak_memory == 8_000


def test_max_memory_budget_on_cpu(project: pytest.Pytester) -> None:
    write_test(
        project,
        """
        @pytest.mark.model_budget(max_memory="50 KB")
        def test_mlp(model_budget):
            model = torch.nn.Sequential(torch.nn.Linear(100, 1000), torch.nn.ReLU(), torch.nn.Linear(1000, 10))
            model_budget(model, torch.randn(8, 100))
        """,
    )
    result = project.runpytest("--model-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*memory 62.5 KiB > limit (marker) 48.8 KiB (+28.0%)"])
