"""pytest-modelbudget: MAC, parameter and size budgets for PyTorch models, enforced by pytest.

Importing this package does not import torch (pytest imports plugins on every run);
``count`` and ``Counts`` are loaded from :mod:`pytest_modelbudget.counting` on first use,
``count_train_step``, ``TrainSpec`` and ``TrainCounts`` from :mod:`pytest_modelbudget.training`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .core.counting.count import Counts, count
    from .core.training.step import TrainCounts, TrainSpec, count_train_step

__all__ = ["Counts", "TrainCounts", "TrainSpec", "__version__", "count", "count_train_step"]


def __getattr__(name: str) -> Any:
    if name in ("count", "Counts"):
        from .core.counting import count as counting

        return getattr(counting, name)
    if name in ("count_train_step", "TrainSpec", "TrainCounts"):
        from .core.training import step as training

        return getattr(training, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
