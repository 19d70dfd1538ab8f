"""pytest-modelbudget: MAC, parameter and size budgets for PyTorch models, enforced by pytest.

Importing this package does not import torch (pytest imports plugins on every run);
``count`` and ``Counts`` are loaded from :mod:`.core.counting.count` on first use,
``count_train_step`` and ``TrainCounts`` from :mod:`.core.training.count`, ``TrainSpec`` from
:mod:`.core.training.step`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .core.counting.count import Counts, count
    from .core.training.count import TrainCounts, count_train_step
    from .core.training.step import TrainSpec

__all__ = ["Counts", "TrainCounts", "TrainSpec", "__version__", "count", "count_train_step"]


def __getattr__(name: str) -> Any:
    if name in ("count", "Counts"):
        from .core.counting import count as counting

        return getattr(counting, name)
    if name in ("count_train_step", "TrainCounts"):
        from .core.training import count as training

        return getattr(training, name)
    if name == "TrainSpec":
        from .core.training.step import TrainSpec

        return TrainSpec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
