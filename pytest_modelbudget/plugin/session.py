"""One run with ``--model-budget``: the baselines it read, the calls it measured, what it writes.

Registered as a plugin by :func:`~.pytest_configure` only when the run is enabled.
Under pytest-xdist, workers get the baseline file's text from the controller, publish
their results through ``workeroutput`` at session finish, and never write budgets.yaml:
the controller merges (:class:`XdistController`) and writes once.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from ..budgets import baselines
from ..budgets.budget import CallSettings
from ..budgets.results import CallResult
from ..budgets.shards import RunRecord
from ..errors import BaselineFileError
from ..report import exports, summary
from .options import MARKER, Settings

_WORKER_OUTPUT_KEY = "modelbudget"
_WORKER_INPUT_KEY = "modelbudget_baselines"


class BudgetSession:
    """State of one enabled run: the baselines read, the results measured, the summary."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config = config
        self.settings = settings
        self.call_settings: CallSettings = settings.call_settings()
        self.is_worker = hasattr(config, "workerinput")
        self.results: list[CallResult] = []
        self.collected: set[str] = set()
        self.scope: list[str] | None = None  # path prefixes this run saw in full
        self.worker_scopes: list[list[str] | None] = []  # under xdist, as each worker saw it
        # The same, a splitter's deselection aside (pytest-split, pytest-shard): what a merge
        # of this run's report with the other shards' may treat as seen in full.
        self.suite_scope: list[str] | None = None
        self.worker_suite_scopes: list[list[str] | None] = []
        self.deselected = 0
        self.deselected_ids: set[str] = set()
        self.crashed_workers: list[str] = []
        self.update_summary: summary.UpdateSummary | None = None
        try:
            if self.is_worker:  # the controller, which may be another host, sent the file's text
                self.baseline_text = str(config.workerinput.get(_WORKER_INPUT_KEY, ""))  # type: ignore[attr-defined]
                self.entries = (
                    baselines.parse(self.baseline_text.encode(), self.display_path)
                    if self.baseline_text
                    else {}
                )
            else:
                loaded = baselines.load(settings.budgets_file)
                self.baseline_text, self.entries = loaded.text, loaded.entries
        except BaselineFileError as error:
            raise pytest.UsageError(f"pytest-modelbudget: {error}") from None

    @property
    def display_path(self) -> str:
        path = self.settings.budgets_file
        try:
            return str(path.relative_to(self.config.rootpath))
        except ValueError:
            return str(path)

    # -- collection -------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        # tryfirst: runs before -k/-m deselect, so deselected tests are not "stale". A test
        # may measure with the fixture and no marker: its entries are not stale either.
        self.collected.update(
            item.nodeid
            for item in items
            if item.get_closest_marker(MARKER) or "model_budget" in getattr(item, "fixturenames", ())
        )

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += len(items)
        self.deselected_ids.update(item.nodeid for item in items)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        config = self.config
        narrowing_options = ("keyword", "markexpr", "lf", "deselect")
        narrowed = bool(
            session.testsfailed or any(config.getoption(name, None) for name in narrowing_options)
        )
        where = (config.args, config.invocation_params.dir, config.rootpath)
        self.scope = baselines.full_scope(*where, narrowed=narrowed or bool(self.deselected))
        self.suite_scope = baselines.full_scope(*where, narrowed=narrowed)

    # -- end of the run ---------------------------------------------------------

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.is_worker:
            self.config.workeroutput[_WORKER_OUTPUT_KEY] = json.dumps(  # type: ignore[attr-defined]
                {
                    "results": [r.to_dict() for r in self.results],
                    "collected": sorted(self.collected),
                    "scope": self.scope,
                    "suite_scope": self.suite_scope,
                    "deselected": sorted(self.deselected_ids & self.collected),
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
                document = exports.json_report(
                    self.results,
                    budgets_file=self.display_path,
                    env=exports.environment(),
                    run=self.run_record(),
                )
                settings.json_report.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
            step_summary = os.environ.get("GITHUB_STEP_SUMMARY") if self.results else None
            if settings.markdown_report or step_summary:
                markdown = "\n".join(exports.markdown_lines(self.results)) + "\n"
                if settings.markdown_report:
                    settings.markdown_report.write_text(markdown, encoding="utf-8")
                if step_summary:
                    # GitHub collects what each step appends to this file.
                    with open(step_summary, "a", encoding="utf-8") as handle:
                        handle.write(markdown)
            if settings.html_report:
                from ..report.html import render

                html = render(self.results, title="Model budgets", environment=exports.environment())
                settings.html_report.write_text(html, encoding="utf-8")
        except OSError as error:
            raise pytest.UsageError(
                f"pytest-modelbudget: cannot write a report to {error.filename}: {error.strerror}"
            ) from None

    def run_record(self) -> RunRecord:
        """What this run saw of the suite, for a merge of its report with other shards'."""
        scope = self.suite_scope
        if self.worker_suite_scopes:  # xdist: as every worker saw it, or nothing
            first = self.worker_suite_scopes[0]
            scope = first if all(s == first for s in self.worker_suite_scopes) else None
        return RunRecord(
            collected=frozenset(self.collected),
            selected=frozenset(self.collected - self.deselected_ids),
            scope=None if scope is None else tuple(scope),
            complete=not self.crashed_workers,
            updating=self.settings.update,
        )

    def stale_entries(self) -> list[str]:
        scope = self.scope
        if self.worker_scopes:  # xdist: the controller collects nothing itself
            first = self.worker_scopes[0]
            scope = first if all(s == first for s in self.worker_scopes) else None
        return baselines.stale_keys(self.entries, self.collected, scope)

    def _write_baselines(self) -> None:
        measured = {r.key: r.baseline_entry() for r in self.results}
        # A crashed worker may have held tests we cannot see: then delete nothing.
        stale = [] if self.crashed_workers else self.stale_entries()
        try:
            changed = baselines.update(self.settings.budgets_file, measured, frozenset(stale))
        except BaselineFileError as error:
            raise pytest.UsageError(f"pytest-modelbudget: {error}") from None
        self.update_summary = summary.UpdateSummary(
            written=len(measured),
            new=sum(1 for key in measured if key not in self.entries),
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
        lines = summary.summary_lines(
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
        self.session.worker_suite_scopes.append(data["suite_scope"])
        self.session.deselected_ids.update(data["deselected"])


SESSION_KEY = pytest.StashKey[BudgetSession]()  # the enabled run's state, on config.stash
