"""Importing and configuring the plugin must not import torch (pytest loads it on every run)."""

from __future__ import annotations

import pytest

RECORDER = """
import sys

def pytest_unconfigure(config):
    with open("modules.txt", "w") as handle:
        handle.write("\\n".join(sorted(sys.modules)))
"""


@pytest.mark.parametrize(
    "args", [["--co"], ["--co", "--model-budget"], ["--co", "--update-budgets"], ["--help"]]
)
def test_a_run_that_measures_nothing_imports_no_torch(pytester: pytest.Pytester, args: list[str]) -> None:
    pytester.makeconftest(RECORDER)
    result = pytester.runpytest_subprocess(*args)
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
    modules = (pytester.path / "modules.txt").read_text().split()
    assert "pytest_modelbudget.plugin" in modules  # the plugin was loaded and configured
    assert "torch" not in modules


COUNT_WITHOUT_DYNAMO = """
import sys
import torch
from torch import nn
from pytest_modelbudget.core.counting.count import count
from pytest_modelbudget.core.counting import dispatch

layer = nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, batch_first=True).eval()
counts = count(layer, (torch.randn(1, 16, 64),))
print(counts.macs, counts.executed_on, "torch._dynamo" in sys.modules)
# The wrapper's cache attribute was put back as it was: empty.
print(any(hasattr(f, "__dynamo_disable") for f in dispatch._DYNAMO_WRAPPED.values() if f is not None))
"""


def test_counting_does_not_import_dynamo(tmp_path: object) -> None:
    # torch._dynamo costs 0.8 s to import: the dispatch mode and the Python meta kernels of
    # attention's math path would each import it, for nothing, on a process's first count.
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", COUNT_WITHOUT_DYNAMO], capture_output=True, text=True, check=True
    )
    macs, executed_on, dynamo = done.stdout.split("\n")[0].split()
    # q/k/v and output projections 4 x 16 x 64 x 64, attention 2 x 16 x 16 x 64, MLP 2 x 16 x 64 x 128
    assert (int(macs), executed_on, dynamo) == (262144 + 32768 + 262144, "meta", "False")
    assert done.stdout.split("\n")[1] == "False"
