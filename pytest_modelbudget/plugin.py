"""The pytest layer's entry point: options, the marker, hooks, and the fixture.

pytest imports every installed plugin on every run, so this module imports only pytest
and the standard library's cheapest parts, and configures in microseconds. A run with
``--model-budget`` starts a :class:`~.session.BudgetSession` (the baselines, results and
reports of the run); the ``model_budget`` fixture (:mod:`.fixture`) imports torch when it
first measures a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .errors import UnitError
from .units import parse_count_option, parse_device, parse_fraction, parse_seconds, parse_stat

if TYPE_CHECKING:
    from collections.abc import Iterator

    from .budgets import Budget, CallSettings
    from .fixture import ModelBudget
    from .session import BudgetSession

MARKER = "model_budget"


@dataclass(frozen=True)
class Settings:
    """Command-line and ini options, resolved and validated once per run."""

    enabled: bool
    update: bool
    budgets_file: Path
    strict: bool
    timing_enabled: bool
    device: str | None
    threads: int
    time_budget_s: float
    cuda_graphs: bool
    latency_stat: str
    latency_tolerance: float
    hardware: str | None
    json_report: Path | None = None
    markdown_report: Path | None = None
    html_report: Path | None = None

    def call_settings(self) -> CallSettings:
        """What a measurement needs of these settings (imports the measuring side)."""
        from .budgets import CallSettings
        from .timing import TimingSettings

        timing = TimingSettings(
            device=self.device,
            threads=self.threads,
            time_budget_s=self.time_budget_s,
            cuda_graph=self.cuda_graphs,
        )
        return CallSettings(
            update=self.update,
            strict=self.strict,
            timing_enabled=self.timing_enabled,
            timing=timing,
            latency_stat=self.latency_stat,
            latency_tolerance=self.latency_tolerance,
            hardware=self.hardware,
        )


SETTINGS_KEY = pytest.StashKey[Settings]()
SESSION_KEY: pytest.StashKey[BudgetSession] = pytest.StashKey()
BUDGET_KEY: pytest.StashKey[Budget] = pytest.StashKey()
CALLS_KEY = pytest.StashKey[list[str]]()
MARKER_ERROR_KEY = pytest.StashKey[str]()


class ModelBudgetWarning(pytest.PytestWarning):
    """A timing verdict that noise or a slow machine makes inconclusive."""


# (command-line flag, ini twin, help, default): a bool default makes a switch, a string an
# option taking a value. The command line wins over the ini file.
_OPTIONS: tuple[tuple[str, str, str, bool | str], ...] = (
    (
        "--model-budget",
        "model_budget",
        "measure models in tests marked model_budget and enforce their budgets",
        False,
    ),
    (
        "--budgets-file",
        "budgets_file",
        "baseline file (default: budgets.yaml in the rootdir)",
        "budgets.yaml",
    ),
    (
        "--budget-strict",
        "budget_strict",
        "fail calls without a baseline, with uncounted ops or inconclusive timing",
        False,
    ),
    (
        "--budget-no-timing",
        "budget_no_timing",
        "count only: skip timing budgets (latency, throughput, GPU memory)",
        False,
    ),
    (
        "--budget-device",
        "budget_device",
        "time on this device (cpu, cuda, cuda:1) instead of the model's",
        "",
    ),
    ("--budget-threads", "budget_threads", "CPU threads while timing (part of the device fingerprint)", "1"),
    ("--budget-time", "budget_time", "seconds to spend on one timing measurement", "1.5"),
    ("--budget-cuda-graphs", "budget_cuda_graphs", "time CUDA-graph replays instead of eager calls", False),
    ("--budget-latency-stat", "budget_latency_stat", "latency statistic judged: median or p90", "median"),
    (
        "--budget-latency-tolerance",
        "budget_latency_tolerance",
        "slowdown allowed over a latency baseline",
        "10%",
    ),
    ("--budget-hardware", "budget_hardware", "hardware for max_roofline_ms: h100, a100", ""),
    ("--budget-json", "budget_json", "write every measurement, limit and verdict as JSON here", ""),
    (
        "--budget-markdown",
        "budget_markdown",
        "write a Markdown summary here (and to GITHUB_STEP_SUMMARY)",
        "",
    ),
    ("--budget-html", "budget_html", "write a self-contained HTML report here", ""),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("model-budget", "model budgets (pytest-modelbudget)")
    for flag, ini, help_text, default in _OPTIONS:
        described = f"{help_text} [ini: {ini}]"
        if isinstance(default, bool):
            group.addoption(flag, action="store_true", default=None, dest=ini, help=described)
            parser.addini(ini, help_text, type="bool", default=default)
        else:
            group.addoption(flag, default=None, dest=ini, metavar="VALUE", help=described)
            parser.addini(ini, help_text, default=default)
        if flag == "--model-budget":
            group.addoption(
                "--update-budgets",
                action="store_true",
                default=False,
                help="write measured values as the new baselines (implies --model-budget)",
            )


def _resolve_settings(config: pytest.Config) -> Settings:
    def value(name: str) -> Any:
        cli = config.getoption(name)
        return config.getini(name) if cli is None else cli

    def path_option(name: str) -> Path | None:
        # A command-line path is relative to where pytest was started; an ini path to the ini file.
        cli = config.getoption(name)
        if cli:
            return Path(config.invocation_params.dir, cli)
        ini = str(config.getini(name))
        if not ini:
            return None
        return (config.inipath.parent if config.inipath else config.rootpath) / ini

    update = bool(config.getoption("update_budgets"))
    path = path_option("budgets_file")
    assert path is not None  # the ini option has a default
    try:
        hardware = str(value("budget_hardware")) or None
        if hardware:
            from .budgets import parse_hardware  # the presets load only when one is named

            parse_hardware(hardware)
        return Settings(
            enabled=update or bool(value("model_budget")),
            update=update,
            budgets_file=path,
            strict=bool(value("budget_strict")),
            timing_enabled=not value("budget_no_timing"),
            device=parse_device(value("budget_device")) if value("budget_device") else None,
            threads=parse_count_option(value("budget_threads"), "--budget-threads"),
            time_budget_s=parse_seconds(value("budget_time"), "--budget-time"),
            cuda_graphs=bool(value("budget_cuda_graphs")),
            latency_stat=parse_stat(value("budget_latency_stat")),
            latency_tolerance=parse_fraction(value("budget_latency_tolerance")),
            hardware=hardware,
            json_report=path_option("budget_json"),
            markdown_report=path_option("budget_markdown"),
            html_report=path_option("budget_html"),
        )
    except UnitError as error:
        raise pytest.UsageError(f"pytest-modelbudget: {error}") from None


def _marker_help(config: pytest.Config) -> str:
    # The keyword list needs the metric table; build it only for `pytest --markers`, the
    # one place it is read, so that other runs do not pay for importing it.
    if config.getoption("markers", False):
        from .budgets import KEYWORDS

        keywords = ", ".join(k + "=" for k in KEYWORDS)
    else:
        keywords = "max_macs=, ..."
    return (
        f"{MARKER}({keywords}): budget for the models this test measures with the model_budget fixture "
        "(numbers or strings like '4.1G', '25M', '1.5 GB', '12ms'); enforced with --model-budget"
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _marker_help(config))
    settings = _resolve_settings(config)
    config.stash[SETTINGS_KEY] = settings
    if not settings.enabled:
        return
    from .session import BudgetSession, XdistController

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
    from .budgets import parse_budget
    from .errors import BudgetSpecError

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
