"""The pytest layer: options, the marker, the fixture, hooks and the xdist hand-off.

This is the only module that imports pytest. It must not import torch: pytest imports
every installed plugin on every run, so torch is imported only when a model is first
measured (inside :class:`ModelBudget`).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from . import baselines, budgets, report
from .errors import BaselineFileError, BudgetSpecError, MeasurementError, UnitError
from .measure import CallSettings, measure_call
from .results import NAME_SEPARATOR, CallResult, Measurement, belongs_to, entry_key
from .timing import TimingSettings
from .units import parse_fraction

MARKER = "model_budget"
_WORKER_OUTPUT_KEY = "modelbudget"
_WORKER_INPUT_KEY = "modelbudget_baselines"


@dataclass(frozen=True)
class Settings:
    """Command-line and ini options, resolved once per run."""

    enabled: bool
    update: bool
    budgets_file: Path
    strict: bool
    call: CallSettings
    json_report: Path | None = None
    markdown_report: Path | None = None
    html_report: Path | None = None


SETTINGS_KEY = pytest.StashKey[Settings]()
SESSION_KEY = pytest.StashKey["BudgetSession"]()
BUDGET_KEY = pytest.StashKey[budgets.Budget]()
CALLS_KEY = pytest.StashKey[list[str]]()
MARKER_ERROR_KEY = pytest.StashKey[str]()


class ModelBudgetWarning(pytest.PytestWarning):
    """A timing verdict that noise or a slow machine makes inconclusive."""


@dataclass(frozen=True)
class _Option:
    """A command-line flag and its ini twin; the command line wins."""

    flag: str
    ini: str
    help: str
    default: bool | str = False  # a bool makes a switch; a string an option taking a value


_OPTIONS: tuple[_Option, ...] = (
    _Option(
        "--model-budget",
        "model_budget",
        "measure models in tests marked model_budget and enforce their budgets",
    ),
    _Option(
        "--budgets-file",
        "budgets_file",
        "baseline file (default: budgets.yaml in the rootdir)",
        "budgets.yaml",
    ),
    _Option(
        "--budget-strict",
        "budget_strict",
        "fail calls without a baseline, with uncounted ops or inconclusive timing",
    ),
    _Option(
        "--budget-no-timing",
        "budget_no_timing",
        "count only: skip timing budgets (latency, throughput, GPU memory)",
    ),
    _Option(
        "--budget-device",
        "budget_device",
        "time on this device (cpu, cuda, cuda:1) instead of the model's",
        "",
    ),
    _Option(
        "--budget-threads", "budget_threads", "CPU threads while timing (part of the device fingerprint)", "1"
    ),
    _Option("--budget-time", "budget_time", "seconds to spend on one timing measurement", "1.5"),
    _Option("--budget-cuda-graphs", "budget_cuda_graphs", "time CUDA-graph replays instead of eager calls"),
    _Option(
        "--budget-latency-stat", "budget_latency_stat", "latency statistic judged: median or p90", "median"
    ),
    _Option(
        "--budget-latency-tolerance",
        "budget_latency_tolerance",
        "slowdown allowed over a latency baseline",
        "10%",
    ),
    _Option("--budget-hardware", "budget_hardware", "hardware for max_roofline_ms: h100, a100", ""),
    _Option("--budget-json", "budget_json", "write every measurement, limit and verdict as JSON here", ""),
    _Option(
        "--budget-markdown",
        "budget_markdown",
        "write a Markdown summary here (and to GITHUB_STEP_SUMMARY)",
        "",
    ),
    _Option("--budget-html", "budget_html", "write a self-contained HTML report here", ""),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("model-budget", "model budgets (pytest-modelbudget)")
    for option in _OPTIONS:
        help_text = f"{option.help} [ini: {option.ini}]"
        if isinstance(option.default, bool):
            group.addoption(option.flag, action="store_true", default=None, dest=option.ini, help=help_text)
            parser.addini(option.ini, option.help, type="bool", default=option.default)
        else:
            group.addoption(option.flag, default=None, dest=option.ini, metavar="VALUE", help=help_text)
            parser.addini(option.ini, option.help, default=option.default)
        if option.flag == "--model-budget":
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
        call = CallSettings(
            update=update,
            strict=bool(value("budget_strict")),
            timing_enabled=not value("budget_no_timing"),
            timing=TimingSettings(
                device=str(budgets.CALL_OPTIONS["device"](value("budget_device")))
                if value("budget_device")
                else None,
                threads=_positive_int(value("budget_threads"), "--budget-threads"),
                time_budget_s=_positive_float(value("budget_time"), "--budget-time"),
                cuda_graph=bool(value("budget_cuda_graphs")),
            ),
            latency_stat=str(budgets.CALL_OPTIONS["latency_stat"](value("budget_latency_stat"))),
            latency_tolerance=parse_fraction(value("budget_latency_tolerance")),
            hardware=str(budgets.CALL_OPTIONS["hardware"](value("budget_hardware")))
            if value("budget_hardware")
            else None,
        )
    except UnitError as error:
        raise pytest.UsageError(f"pytest-modelbudget: {error}") from None
    return Settings(
        enabled=update or bool(value("model_budget")),
        update=update,
        budgets_file=path,
        strict=call.strict,
        call=call,
        json_report=path_option("budget_json"),
        markdown_report=path_option("budget_markdown"),
        html_report=path_option("budget_html"),
    )


def _positive_int(text: object, option: str) -> int:
    try:
        number = int(str(text))
    except ValueError:
        number = 0
    if number < 1:
        raise UnitError(f"{option}={text!r}: expected a whole number >= 1")
    return number


def _positive_float(text: object, option: str) -> float:
    try:
        number = float(str(text))
    except ValueError:
        number = 0.0
    if not number > 0 or number == float("inf"):
        raise UnitError(f"{option}={text!r}: expected a number of seconds > 0")
    return number


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}({', '.join(k + '=' for k in budgets.KEYWORDS)}): "
        "budget for the models this test measures with the model_budget fixture "
        "(numbers or strings like '4.1G', '25M', '1.5 GB', '12ms'); enforced with --model-budget",
    )
    settings = _resolve_settings(config)
    config.stash[SETTINGS_KEY] = settings
    if not settings.enabled:
        return
    session = BudgetSession(config, settings)
    config.stash[SESSION_KEY] = session
    config.pluginmanager.register(session, "modelbudget-session")
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(XdistController(session), "modelbudget-xdist")


class BudgetSession:
    """State of one enabled run: the baselines read, the results measured, the summary."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.is_worker = hasattr(config, "workerinput")
        self.results: list[CallResult] = []
        self.collected: set[str] = set()
        self.scope: list[str] | None = None  # path prefixes this run saw in full
        self.worker_scopes: list[list[str] | None] = []  # under xdist, as each worker saw it
        self.deselected = 0
        self.crashed_workers: list[str] = []
        self.update_summary: report.UpdateSummary | None = None
        self.baseline_text = self._read_baselines()
        try:
            self.entries = (
                baselines.parse(self.baseline_text.encode(), self.display_path) if self.baseline_text else {}
            )
        except BaselineFileError as error:
            raise pytest.UsageError(f"pytest-modelbudget: {error}") from None

    @property
    def display_path(self) -> str:
        path = self.settings.budgets_file
        try:
            return str(path.relative_to(self.config.rootpath))
        except ValueError:
            return str(path)

    def _read_baselines(self) -> str:
        # Workers get the file's text from the controller, which may be another host.
        if self.is_worker:
            return str(self.config.workerinput.get(_WORKER_INPUT_KEY, ""))  # type: ignore[attr-defined]
        try:
            loaded = baselines.load(self.settings.budgets_file)
        except BaselineFileError as error:
            raise pytest.UsageError(f"pytest-modelbudget: {error}") from None
        return baselines.render(loaded.entries) if loaded.exists else ""

    # -- collection -------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        # tryfirst: runs before -k/-m deselect, so deselected tests are not "stale".
        self.collected.update(item.nodeid for item in items if item.get_closest_marker(MARKER))

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += len(items)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.scope = _full_scope(self.config, self.deselected, session.testsfailed)

    # -- end of the run ---------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.is_worker:
            self.config.workeroutput[_WORKER_OUTPUT_KEY] = json.dumps(  # type: ignore[attr-defined]
                {
                    "results": [r.to_dict() for r in self.results],
                    "collected": sorted(self.collected),
                    "scope": self.scope,
                }
            )
            return
        if self.settings.update and exitstatus != pytest.ExitCode.INTERRUPTED:
            self._write_baselines()
        self._write_reports()

    def _write_reports(self) -> None:
        """JSON, Markdown and HTML reports, written once, by the controller."""
        settings = self.settings
        try:
            if settings.json_report:
                document = report.json_report(
                    self.results, budgets_file=self.display_path, env=report.environment()
                )
                settings.json_report.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
            step_summary = os.environ.get("GITHUB_STEP_SUMMARY") if self.results else None
            if settings.markdown_report or step_summary:
                markdown = "\n".join(report.markdown_lines(self.results)) + "\n"
                if settings.markdown_report:
                    settings.markdown_report.write_text(markdown, encoding="utf-8")
                if step_summary:
                    # GitHub collects what each step appends to this file.
                    with open(step_summary, "a", encoding="utf-8") as handle:
                        handle.write(markdown)
            if settings.html_report:
                from .html_report import render

                html = render(
                    [r.to_dict() for r in self.results],
                    title="Model budgets",
                    environment=report.environment(),
                )
                settings.html_report.write_text(html, encoding="utf-8")
        except OSError as error:
            raise pytest.UsageError(
                f"pytest-modelbudget: cannot write a report to {error.filename}: {error.strerror}"
            ) from None

    def stale_entries(self) -> list[str]:
        scope = self.scope
        if self.worker_scopes:  # xdist: the controller collects nothing itself
            first = self.worker_scopes[0]
            scope = first if all(s == first for s in self.worker_scopes) else None
        if scope is None:
            return []
        return sorted(
            key for key in self.entries if not belongs_to(key, self.collected) and _in_scope(key, scope)
        )

    def _write_baselines(self) -> None:
        measured = {r.key: r.baseline_entry() for r in self.results}
        # A crashed worker may have held tests we cannot see: then delete nothing.
        stale = [] if self.crashed_workers else self.stale_entries()
        try:
            changed = baselines.update(self.settings.budgets_file, measured, frozenset(stale))
        except BaselineFileError as error:
            raise pytest.UsageError(f"pytest-modelbudget: {error}") from None
        self.update_summary = report.UpdateSummary(
            written=len(measured),
            new=sum(1 for key in measured if key not in self.entries),
            unchanged=0,
            removed=tuple(stale),
            file_changed=changed,
        )

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker:
            return
        stale = self.stale_entries()
        if not self.results and not stale:
            return
        terminalreporter.write_sep("=", "model budgets")
        lines = report.summary_lines(
            self.results,
            budgets_file=self.display_path,
            updating=self.settings.update,
            stale=stale,
            update=self.update_summary,
        )
        for line in lines:
            if terminalreporter.verbosity >= 0 or not line.startswith(" "):
                terminalreporter.write_line(line)
        for worker in self.crashed_workers:
            terminalreporter.write_line(
                f"worker {worker} crashed: its measurements are lost; "
                f"nothing was removed from {self.display_path}"
            )


def _full_scope(config: pytest.Config, deselected: int, collection_errors: int) -> list[str] | None:
    """Path prefixes (rootdir-relative) whose every test this run collected, or None.

    Runs narrowed by -k, -m, --lf, --deselect, node ids or collection errors see only part
    of the suite: they may neither report nor delete stale entries.
    """
    narrowing_options = ("keyword", "markexpr", "lf", "deselect")
    if deselected or collection_errors or any(config.getoption(name, None) for name in narrowing_options):
        return None
    prefixes = []
    for arg in config.args:
        if "::" in arg:
            return None
        path = Path(config.invocation_params.dir, arg).resolve()
        try:
            relative = path.relative_to(config.rootpath)
        except ValueError:
            return None
        prefixes.append("" if str(relative) == "." else relative.as_posix())
    return prefixes


def _in_scope(key: str, prefixes: list[str]) -> bool:
    path = key.split("::", 1)[0]
    return any(p == "" or path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


class XdistController:
    """Controller side of the xdist hand-off (registered only when xdist is installed)."""

    def __init__(self, session: BudgetSession) -> None:
        self.session = session

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput[_WORKER_INPUT_KEY] = self.session.baseline_text

    def pytest_testnodedown(self, node: Any, error: object) -> None:
        payload = getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT_KEY)
        if payload is None:
            worker = getattr(node, "gateway", None)
            self.session.crashed_workers.append(getattr(worker, "id", "?"))
            return
        data = json.loads(payload)
        self.session.results.extend(CallResult.from_dict(r) for r in data["results"])
        self.session.collected.update(data["collected"])
        self.session.worker_scopes.append(data["scope"])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Validate every model_budget marker once, before any test runs."""
    problems = []
    for item in items:
        markers = list(item.iter_markers(MARKER))
        if not markers:
            continue
        kwargs: dict[str, object] = {}
        positional: list[object] = []
        for mark in reversed(markers):  # farthest first: the closest marker wins per keyword
            kwargs.update(mark.kwargs)
            positional.extend(mark.args)
        try:
            item.stash[BUDGET_KEY] = budgets.parse_budget(kwargs, args=positional)
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


class ModelBudget:
    """The ``model_budget`` fixture: ``model_budget(model, *inputs, **forward_kwargs)``.

    With ``--model-budget``: counts one forward pass, checks it against the marker's
    limits, the file's limits and the baseline, fails the test with a clear message when
    a budget is broken, and returns a :class:`Measurement`. Without it: runs one plain
    forward pass (so the test still exercises the model) and returns None.
    """

    def __init__(self, item: pytest.Item) -> None:
        self._item = item
        self._settings = item.config.stash[SETTINGS_KEY]
        self._session = item.config.stash.get(SESSION_KEY, None)

    def __call__(self, model: Any, *args: Any, name: str | None = None, **kwargs: Any) -> Measurement | None:
        """Measure ``model(*args, **kwargs)``; ``name`` tells apart several calls in one test."""
        __tracebackhide__ = True
        return self.measure(model, args, kwargs, name=name)

    def measure(
        self,
        model: Any,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
    ) -> Measurement | None:
        """Explicit form, for a forward that itself takes a keyword called ``name``."""
        __tracebackhide__ = True
        kwargs = dict(kwargs or {})
        key = self._register_call(name)
        if not callable(model):
            raise pytest.fail.Exception(
                f"model_budget expects a torch.nn.Module as first argument, got {type(model).__name__}",
                pytrace=False,
            )
        if not args and not kwargs:
            raise pytest.fail.Exception(
                "model_budget needs the forward's inputs: model_budget(model, torch.randn(1, 3, 224, 224))",
                pytrace=False,
            )
        if self._session is None:
            model(*args, **kwargs)
            return None
        return self._measure(model, args, kwargs, name, key)

    def _register_call(self, name: str | None) -> str:
        __tracebackhide__ = True
        if name is not None and (not isinstance(name, str) or not name or NAME_SEPARATOR in name):
            raise pytest.fail.Exception(
                f"model_budget name={name!r}: a name is a non-empty string without {NAME_SEPARATOR!r}",
                pytrace=False,
            )
        key = entry_key(self._item.nodeid, name)
        calls = self._item.stash.setdefault(CALLS_KEY, [])
        if key in calls:
            hint = "give each call its own name=" if name is None else f"name={name!r} is already used"
            raise pytest.fail.Exception(
                f"model_budget was called twice for the same budget entry in {self._item.nodeid}: {hint}",
                pytrace=False,
            )
        calls.append(key)
        return key

    def _measure(
        self, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any], name: str | None, key: str
    ) -> Measurement:
        __tracebackhide__ = True
        session = self._session
        assert session is not None
        try:
            outcome = measure_call(
                model,
                args,
                kwargs,
                nodeid=self._item.nodeid,
                name=name,
                marker=self._item.stash.get(BUDGET_KEY, budgets.Budget(limits={})),
                entry=session.entries.get(key),
                settings=self._settings.call,
                budgets_file=session.display_path,
                progress=self._progress(),
            )
        except MeasurementError as error:
            raise pytest.fail.Exception(f"model_budget: {error}", pytrace=False) from None
        except Exception as error:  # the model's own error, shown as such
            raise pytest.fail.Exception(_forward_error(error, key), pytrace=False) from None
        session.results.append(outcome.result)
        self._item.user_properties.extend(report.junit_properties(outcome.result))
        self._share_with_pytest_benchmark(outcome.result)
        for message in outcome.warnings:
            warnings.warn(ModelBudgetWarning(message), stacklevel=3)
        if outcome.failures:
            raise pytest.fail.Exception("\n".join(outcome.failures), pytrace=False)
        return outcome.measurement

    def _share_with_pytest_benchmark(self, result: CallResult) -> None:
        """A test that also uses pytest-benchmark gets the metrics in its extra_info."""
        benchmark = getattr(self._item, "funcargs", {}).get("benchmark")
        extra_info = getattr(benchmark, "extra_info", None)
        if isinstance(extra_info, dict):
            extra_info[f"model_budget:{result.key}" if result.name else "model_budget"] = {
                **result.metrics,
                "verdict": result.verdict,
            }

    def _progress(self) -> Callable[[str], None] | None:
        """With -v, long measurements say what they are doing."""
        config = self._item.config
        if config.get_verbosity() < 1:
            return None
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return None
        nodeid = self._item.nodeid

        def say(message: str) -> None:
            reporter.write_line(f"  [model_budget] {nodeid}: {message}")

        return say


def _forward_error(error: BaseException, key: str) -> str:
    """The model's exception as one message, pointing at the user's code, not ours."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = str(Path(__file__).parent)
    torch_dir = str(Path(sys.modules["torch"].__file__ or "").parent) if "torch" in sys.modules else "\0"
    user = [f for f in frames if not f.filename.startswith((ours, torch_dir))]
    where = f"\n  at {user[-1].filename}:{user[-1].lineno} in {user[-1].name}" if user else ""
    return (
        f"model_budget: the model's forward raised {type(error).__name__}: {error}{where}\n"
        f"  (while measuring {key}; the model was left as it was)"
    )


@pytest.fixture
def model_budget(request: pytest.FixtureRequest) -> ModelBudget:
    """Measure a model against the test's budget: ``model_budget(model, *inputs)``."""
    return ModelBudget(request.node)
