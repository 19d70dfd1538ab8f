"""The metric table: every quantity a budget can limit, from the kinds of call that measure them.

Each kind of call declares its rows (:mod:`~..calls`: a row is a :class:`~..calls.metric.Metric`);
this table is their sum, and the one place the rest of the package looks a metric up.
Everything follows from a row: the marker keyword and its validation, the ``limits:`` keys of
budgets.yaml, the ratcheted keys of an entry, the checks, the summary, JSON, Markdown, HTML
and JUnit outputs. No torch here, and no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..calls import common
from ..calls.compiled import Compiled
from ..calls.forward import Forward
from ..calls.generation import Generate
from ..calls.kind import CallKind
from ..calls.metric import Metric, Readings
from ..calls.train_step import TrainStep

# The kinds of call, each with the rows only it measures.
KINDS: tuple[type[CallKind], ...] = (Forward, TrainStep, Compiled, Generate)
METRICS: tuple[Metric, ...] = (*common.ROWS, *(row for kind in KINDS for row in kind.rows))
# What each row's `call` names and how to measure it, for the error of a limit put on a call
# that does not measure it: (what it limits, how to measure that).
CALLS: Mapping[str, tuple[str, str]] = {
    "pass": ("one pass of the model", "measure a forward with model_budget(model, ...)"),
    **{kind.name: (kind.described, kind.remedy) for kind in KINDS},
}

METRICS_BY_NAME = {m.name: m for m in METRICS}
METRICS_BY_KEYWORD = {m.keyword: m for m in METRICS}
RATCHETED = tuple(m.name for m in METRICS if m.ratcheted)
COMPILED = tuple(m.name for m in Compiled.rows)

# The order values are read in, and so the order of a call's metrics in every report:
# what counting gives first, then what timing adds.
_READ_ORDER = sorted(METRICS, key=lambda m: m.timed)


def baseline_values(measured: Mapping[str, float]) -> dict[str, int]:
    """The ratcheted values a baseline entry keeps of a call's measured values."""
    return {
        m.name: int(measured[m.name])
        for m in METRICS
        if m.ratcheted and m.name in measured and (m.stored_if is None or m.stored_if(measured))
    }


def read_all(readings: Readings, kind: CallKind) -> dict[str, float]:
    """Every metric this call measured, by name: the rows of every kind and of the call's own."""
    values = {}
    for metric in _READ_ORDER:
        if not kind.measures_metric(metric):
            continue
        value = metric.read(readings)
        if value is not None:
            values[metric.name] = value
    return values
