"""pytest-modelbudget: MAC, parameter and size budgets for PyTorch models, enforced by pytest.

Importing this package does not import torch (pytest imports plugins on every run);
``count`` and ``Counts`` are loaded from :mod:`pytest_modelbudget.counting` on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .counting import Counts, count

__all__ = ["Counts", "__version__", "count"]


def __getattr__(name: str) -> Any:
    if name in ("count", "Counts"):
        from . import counting

        return getattr(counting, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
