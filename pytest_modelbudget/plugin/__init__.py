"""The pytest layer's entry point: options, the marker, hooks, and the fixture.

pytest imports every installed plugin on every run, so this module imports only pytest
and the standard library's cheapest parts, and configures in microseconds. A run with
``--model-budget`` starts a :class:`~.session.BudgetSession` (the baselines, results and
reports of the run); the ``model_budget`` fixture (:mod:`.fixture`) imports torch when it
first measures a model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from .options import (
    BUDGET_KEY,
    CALLS_KEY,
    MARKER,
    MARKER_ERROR_KEY,
    SETTINGS_KEY,
    ModelBudgetWarning,
    add_options,
    resolve_settings,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .fixture import ModelBudget

__all__ = ["ModelBudgetWarning"]  # named in filterwarnings as pytest_modelbudget.plugin.ModelBudgetWarning


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def _marker_help(config: pytest.Config) -> str:
    # The keyword list needs the metric table; build it only for `pytest --markers`, the
    # one place it is read, so that other runs do not pay for importing it.
    if config.getoption("markers", False):
        from ..budgets.budget import KEYWORDS

        keywords = ", ".join(k + "=" for k in KEYWORDS)
    else:
        keywords = "max_macs=, ..."
    return (
        f"{MARKER}({keywords}): budget for the models this test measures with the model_budget fixture "
        "(numbers or strings like '4.1G', '25M', '1.5 GB', '12ms'); enforced with --model-budget"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _marker_help(config))
    settings = resolve_settings(config)
    config.stash[SETTINGS_KEY] = settings
    if not settings.enabled:
        return
    from .session import SESSION_KEY, BudgetSession, XdistController

    session = BudgetSession(config, settings)
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(session, "modelbudget-session")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistController(session), "modelbudget-xdist")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Validate every model_budget marker once, before any test runs."""
    marked = [item for item in items if item.get_closest_marker(MARKER)]
    if not marked:
        return
    from ..budgets.budget import parse_budget
    from ..errors import BudgetSpecError

    problems = []
    for item in marked:
        kwargs: dict[str, object] = {}
        positional: list[object] = []
        for mark in reversed(list(item.iter_markers(MARKER))):  # farthest first: the closest wins
            kwargs.update(mark.kwargs)
            positional.extend(mark.args)
        try:
            item.stash[BUDGET_KEY] = parse_budget(kwargs, args=positional)
        except BudgetSpecError as error:
            problem = f"{item.nodeid}: @pytest.mark.{MARKER}: {error}"
            item.stash[MARKER_ERROR_KEY] = problem
            problems.append(problem)
    # An xdist worker cannot stop the session cleanly; its tests error at setup instead.
    if problems and not hasattr(config, "workerinput"):
        raise pytest.UsageError("pytest-modelbudget: invalid budget marker\n  " + "\n  ".join(problems))


def pytest_runtest_setup(item: pytest.Item) -> None:
    problem = item.stash.get(MARKER_ERROR_KEY, None)
    if problem is not None:
        raise pytest.fail.Exception(f"invalid budget marker: {problem}", pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    item.stash[CALLS_KEY] = []
    result = yield
    if item.get_closest_marker(MARKER) and not item.stash[CALLS_KEY]:
        raise pytest.fail.Exception(
            f"{item.nodeid} is marked @pytest.mark.{MARKER} but never measured a model: "
            "call the model_budget fixture, model_budget(model, *inputs), or remove the marker",
            pytrace=False,
        )
    return result


@pytest.fixture
def model_budget(request: pytest.FixtureRequest) -> ModelBudget:
    """Measure a model against the test's budget: ``model_budget(model, *inputs)``."""
    from .fixture import ModelBudget

    return ModelBudget(request.node)
