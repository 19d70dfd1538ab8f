"""The plugin's exceptions, in one place.

Every error a user can cause derives from :class:`ModelBudgetError`; the pytest layer
turns those into `pytest.UsageError` (configuration) or a test failure (measurement),
so users see one clear message and never a traceback from plugin internals.
"""

from __future__ import annotations

import reprlib
from typing import Any

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 80, 80


def shown(value: Any) -> str:
    """repr() cut short, for messages: a few hundred bytes of YAML aliases can expand to gigabytes."""
    return _SHORT.repr(value)


class ModelBudgetError(Exception):
    """Base class for errors a user can fix."""


class UnitError(ModelBudgetError, ValueError):
    """A value that is not a number in an accepted unit."""


class BudgetSpecError(ModelBudgetError, ValueError):
    """A marker or a hand-written limit that is not a valid budget."""


class BaselineFileError(ModelBudgetError):
    """budgets.yaml cannot be read, parsed or validated, or cannot be written."""

    def __init__(self, path: str, problem: str, entry: str | None = None) -> None:
        self.path = path
        self.problem = problem
        self.entry = entry
        where = f"{path}, entry {entry!r}" if entry else path
        super().__init__(f"{where}: {problem}")


class MeasurementError(ModelBudgetError):
    """The model could not be measured (bad arguments, or its forward raised)."""
