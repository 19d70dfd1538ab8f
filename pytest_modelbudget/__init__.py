"""pytest-modelbudget: MAC, parameter and size budgets for PyTorch models, enforced by pytest.

Importing this package does not import torch (pytest imports plugins on every run);
``count`` and ``Counts`` are loaded from :mod:`.core.counting.count` on first use,
``count_train_step`` and ``TrainCounts`` from :mod:`.core.training.count`, ``TrainSpec`` from
:mod:`.core.training.step`, ``register_mac_formula`` (a MAC formula for an op of your own) from
:mod:`.core.counting.formulas.registry`, ``count_generation``, ``GenerationCounts`` and
``GenerationSpec`` from :mod:`.core.generation`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .core.counting.count import Counts, count
    from .core.counting.formulas.registry import register_mac_formula
    from .core.generation.count import GenerationCounts, count_generation
    from .core.generation.spec import GenerationSpec
    from .core.training.count import TrainCounts, count_train_step
    from .core.training.step import TrainSpec

__all__ = [
    "Counts",
    "GenerationCounts",
    "GenerationSpec",
    "TrainCounts",
    "TrainSpec",
    "__version__",
    "count",
    "count_generation",
    "count_train_step",
    "register_mac_formula",
]


def __getattr__(name: str) -> Any:
    if name in ("count", "Counts"):
        from .core.counting import count as counting

        return getattr(counting, name)
    if name in ("count_train_step", "TrainCounts"):
        from .core.training import count as training

        return getattr(training, name)
    if name == "register_mac_formula":
        from .core.counting.formulas.registry import register_mac_formula

        return register_mac_formula
    if name in ("count_generation", "GenerationCounts"):
        from .core.generation import count as generation

        return getattr(generation, name)
    if name == "GenerationSpec":
        from .core.generation.spec import GenerationSpec

        return GenerationSpec
    if name == "TrainSpec":
        from .core.training.step import TrainSpec

        return TrainSpec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
