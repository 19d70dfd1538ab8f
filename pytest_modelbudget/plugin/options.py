"""The pytest layer's shared names: command-line options and their ini twins, resolved once.

:func:`resolve_settings` validates every option into a frozen :class:`Settings` at
configure time. Like the package's ``__init__``, this module is imported on every pytest run, so it
imports nothing beyond pytest, :mod:`..units` and :mod:`..errors`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import pytest

from ..errors import UnitError
from ..units import parse_count_option, parse_device, parse_fraction, parse_seconds, parse_stat

if TYPE_CHECKING:
    from ..budgets.budget import Budget, CallSettings

MARKER = "model_budget"


class Settings(NamedTuple):
    """Command-line and ini options, resolved and validated once per run.

    A NamedTuple rather than a frozen dataclass: as immutable, and cheaper to define on
    every pytest start-up (see benchmarks/startup.py).
    """

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
    compile: bool = False
    json_report: Path | None = None
    markdown_report: Path | None = None
    html_report: Path | None = None

    def call_settings(self) -> CallSettings:
        """What a measurement needs of these settings (imports the measuring side)."""
        from ..budgets.budget import CallSettings
        from ..core.timing.timer import TimingSettings

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
            compile=self.compile,
        )


SETTINGS_KEY = pytest.StashKey[Settings]()
BUDGET_KEY: pytest.StashKey[Budget] = pytest.StashKey()  # an item's parsed marker
CALLS_KEY = pytest.StashKey[list[str]]()  # the budgets.yaml keys an item measured
MARKER_ERROR_KEY = pytest.StashKey[str]()  # why an item's marker is invalid


class ModelBudgetWarning(pytest.PytestWarning):
    """A timing verdict that noise or a slow machine makes inconclusive."""


# (command-line flag, ini twin, help, default): a bool default makes a switch, a string an
# option taking a value. The command line wins over the ini file.
OPTIONS: tuple[tuple[str, str, str, bool | str], ...] = (
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
    ("--budget-cuda-graphs", "budget_cuda_graphs", "time CUDA-graph replays of eager forwards", False),
    ("--budget-latency-stat", "budget_latency_stat", "latency statistic judged: median or p90", "median"),
    (
        "--budget-latency-tolerance",
        "budget_latency_tolerance",
        "slowdown allowed over a latency baseline",
        "10%",
    ),
    ("--budget-hardware", "budget_hardware", "hardware for max_roofline_ms: h100, a100", ""),
    (
        "--budget-compile",
        "budget_compile",
        "measure every budgeted forward torch.compile'd (unless its marker says compile=False)",
        False,
    ),
    ("--budget-json", "budget_json", "write every measurement, limit and verdict as JSON here", ""),
    (
        "--budget-markdown",
        "budget_markdown",
        "write a Markdown summary here (and to GITHUB_STEP_SUMMARY)",
        "",
    ),
    ("--budget-html", "budget_html", "write a self-contained HTML report here", ""),
)


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("model-budget", "model budgets (pytest-modelbudget)")
    for flag, ini, help_text, default in OPTIONS:
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


def resolve_settings(config: pytest.Config) -> Settings:
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
            from ..budgets.budget import parse_hardware  # the presets load only when one is named

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
            compile=bool(value("budget_compile")),
            json_report=path_option("budget_json"),
            markdown_report=path_option("budget_markdown"),
            html_report=path_option("budget_html"),
        )
    except UnitError as error:
        raise pytest.UsageError(f"pytest-modelbudget: {error}") from None
