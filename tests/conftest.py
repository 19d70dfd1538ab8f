"""Shared helpers for the test suite: a tiny user project written into a pytester dir."""

from __future__ import annotations

import textwrap

import pytest

# In-process pytester runs drop the modules first imported inside them, and torch (with
# the submodules it loads lazily while counting) cannot be imported twice in a process.
# So torch is imported, and one count of each kind is done, before any inner run.
import torch

# PyYAML likewise: re-imported by a later inner run, its Python classes would no longer be
# the ones its C extension (libyaml, which budgets.yaml is written with) checks against, and
# the dump fails with "expected SCALAR, SEQUENCE-START, MAPPING-START, or ALIAS".
import yaml  # noqa: F401


def _load_torch_lazily_imported_modules() -> None:
    from pytest_modelbudget.core.counting.count import count

    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3),
        torch.nn.BatchNorm2d(2),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(3),
    )
    model(torch.randn(1, 1, 5, 5))
    attention = torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True).eval()
    for execution in ("meta", "real"):
        count(model, (torch.randn(1, 1, 5, 5),), execution=execution)
        count(attention, (torch.randn(1, 3, 8),), execution=execution)
    # An optimizer's first step imports torch._dynamo (and with it operator libraries that
    # cannot be registered twice): done here, not first inside an inner run.
    weight = torch.nn.Parameter(torch.zeros(2))
    weight.grad = torch.zeros(2)
    torch.optim.AdamW([weight]).step()


_load_torch_lazily_imported_modules()

# A model users know: the classic worked example, 1,329,000 MACs and 1,007,590 params
# at hidden=500 (conv1 144,000 + conv2 180,000 + fc1 1,000,000 + fc2 5,000 MACs).
SIMPLE_MODEL = """
import os
import torch
import torch.nn.functional as F
from torch import nn

class SimpleModel(nn.Module):
    def __init__(self):
        super().__init__()
        hidden = int(os.environ.get("HIDDEN", "500"))  # tests widen the model with HIDDEN
        self.conv1 = nn.Conv2d(1, 10, 5)
        self.conv2 = nn.Conv2d(10, 20, 3)
        self.fc1 = nn.Linear(2000, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))
"""

# For the conftest of a pytester project whose timing is faked: the machine-speed probes at
# one fixed speed (a 0.2 ms matmul before every block; the same probes after the fact).
FIXED_MACHINE_SPEED = """

def fix_machine_speed(monkeypatch):
    import pytest_modelbudget.core.timing.probes as probes

    monkeypatch.setattr(probes, "measure_probes", lambda: {"matmul": 1.0, "copy": 1.0, "python": 1.0})

    class FakeSpeedProbe:
        def __init__(self, own_clock=None):
            pass

        def __call__(self):
            return 0.2e-3

        def medians_ms(self):
            return {"matmul": 0.2}

    monkeypatch.setattr(probes, "SpeedProbe", FakeSpeedProbe)
"""

SIMPLE_MACS = 1_329_000
SIMPLE_PARAMS = 1_007_590


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester dir with `mymodels.py` (SimpleModel) importable by its tests."""
    pytester.makepyfile(mymodels=SIMPLE_MODEL)
    pytester.syspathinsert()
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    return pytester


def write_test(pytester: pytest.Pytester, body: str, name: str = "test_model") -> None:
    header = "import pytest\nimport torch\nfrom mymodels import SimpleModel\n"
    pytester.makepyfile(**{name: header + textwrap.dedent(body)})
