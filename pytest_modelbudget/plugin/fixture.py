"""The ``model_budget`` fixture: measure a model inside a test, fail it when a budget breaks.

Imported when a test first asks for the fixture. Measuring is :func:`~..budgets.measure.measure_call`'s
job and wording it the report layer's; this module turns the typed result into a pass, a
failure (with plugin frames hidden) or a warning, and shares it with JUnit XML and
pytest-benchmark.
"""

from __future__ import annotations

import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..budgets.baselines import NAME_SEPARATOR, entry_key
from ..budgets.budget import Budget
from ..budgets.measure import measure_call
from ..budgets.results import CallResult, Measurement
from ..core.compiling import CompileError
from ..errors import MeasurementError
from ..report.exports import junit_properties
from ..report.failures import failure_lines, warning_messages
from .options import BUDGET_KEY, CALLS_KEY, ModelBudgetWarning
from .session import SESSION_KEY

if TYPE_CHECKING:
    from ..calls.kind import CallKind


class ModelBudget:
    """The ``model_budget`` fixture: ``model_budget(model, *inputs, **forward_kwargs)``; also
    ``.train_step(...)`` and ``.generate(...)``.

    With ``--model-budget``: counts one forward pass, checks it against the marker's
    limits, the file's limits and the baseline, fails the test with a clear message when
    a budget is broken, and returns a :class:`Measurement`. Without it: runs one plain
    forward pass (so the test still exercises the model) and returns None.
    """

    def __init__(self, item: pytest.Item) -> None:
        self._item = item
        self._session = item.config.stash.get(SESSION_KEY, None)
        # (model, args, kwargs) of this test's calls: a compiled call replays the earlier
        # inputs of its model in its own clean dynamo state, so recompiles across calls show.
        self._calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []

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
        model = _runnable(model)
        self._require_inputs(model, args, kwargs, "model_budget")
        if self._session is None:
            model(*args, **kwargs)
            return None
        return self._measure(model, args, kwargs, name, key)

    def train_step(
        self,
        model: Any,
        *inputs: Any,
        target: Any = None,
        loss: Any = None,
        optimizer: Any = None,
        name: str | None = None,
        **forward_kwargs: Any,
    ) -> Measurement | None:
        """Measure one training step: ``loss(model(*inputs, **forward_kwargs), target)``,
        backward, ``optimizer`` step (see docs/training.md).

        ``loss`` None: the sum of the output's floating-point tensors; ``loss(output)`` when
        there is no ``target``. ``optimizer``: a name (``"adamw"``), an optimizer class, a
        callable ``params -> optimizer``, an optimizer built over the model's parameters, or
        None (forward and backward only). The model, its gradients and buffers and a given
        optimizer are left exactly as they were. Without ``--model-budget`` it runs one real
        step on copies of the parameters.
        """
        __tracebackhide__ = True
        from ..calls.train_step import TrainStep
        from ..core.training.step import TrainSpec

        key = self._register_call(name)
        self._require_inputs(model, inputs, forward_kwargs, "model_budget.train_step")
        spec = TrainSpec(target=target, loss=loss, optimizer=optimizer)
        if self._session is None:
            from ..core.training.step import run_train_step

            with self._errors_as_failures(key, "training step"):
                run_train_step(model, inputs, forward_kwargs, spec)
            return None
        return self._measure(model, inputs, forward_kwargs, name, key, kind=TrainStep(spec))

    def generate(
        self,
        model: Any,
        input_ids: Any,
        *,
        max_new_tokens: int,
        step: Any = None,
        name: str | None = None,
        **generate_kwargs: Any,
    ) -> Measurement | None:
        """Measure a greedy generation of ``max_new_tokens`` tokens after ``input_ids``: its
        prefill and decode MACs, its KV cache and, when timed, its time to first token and
        decode rate (see docs/generation.md).

        A transformers model runs through its own ``generate`` (``generate_kwargs`` go to
        it: ``attention_mask=``, ``cache_implementation=``); a decoder without one gives
        ``step(model, tokens, positions) -> logits``. Without ``--model-budget`` it runs one
        real greedy generation, the model left as it was.
        """
        __tracebackhide__ = True
        from ..calls.generation import Generate
        from ..core.generation.spec import GenerationSpec, checked

        key = self._register_call(name)
        spec = GenerationSpec(max_new_tokens=max_new_tokens, step=step, generate_kwargs=generate_kwargs)
        with self._errors_as_failures(key, "generation"):
            prompt = checked(model, input_ids, spec)  # bad input fails also without --model-budget
        if self._session is None:
            from ..core.generation.run import generate_once

            with self._errors_as_failures(key, "generation"):
                generate_once(model, prompt, spec)
            return None
        return self._measure(model, (input_ids,), {}, name, key, kind=Generate(spec))

    def _require_inputs(
        self, model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], what: str
    ) -> None:
        __tracebackhide__ = True
        if not callable(model):
            raise pytest.fail.Exception(
                f"{what} expects a torch.nn.Module as first argument, got {type(model).__name__}",
                pytrace=False,
            )
        if not args and not kwargs:
            raise pytest.fail.Exception(
                f"{what} needs the forward's inputs: {what}(model, torch.randn(1, 3, 224, 224))",
                pytrace=False,
            )
        generation = _generation_keywords(model, kwargs)
        if generation:
            raise pytest.fail.Exception(
                f"{what}: {', '.join(f'{k}=' for k in generation)}: "
                "keyword(s) of a generation, not of a forward: "
                "measure it with model_budget.generate(model, input_ids, max_new_tokens=...)",
                pytrace=False,
            )

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
        self,
        model: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str | None,
        key: str,
        kind: CallKind | None = None,
    ) -> Measurement:
        __tracebackhide__ = True
        session = self._session
        assert session is not None
        with self._errors_as_failures(key, "forward" if kind is None else kind.noun):
            result, measurement = measure_call(
                model,
                args,
                kwargs,
                nodeid=self._item.nodeid,
                name=name,
                marker=self._item.stash.get(BUDGET_KEY, Budget(limits={})),
                entry=session.entries.get(key),
                settings=session.call_settings,
                progress=self._progress(),
                earlier_inputs=[(a, k) for m, a, k in self._calls if m is model],
                kind=kind,
            )
        self._calls.append((model, args, kwargs))
        session.results.append(result)
        self._item.user_properties.extend(junit_properties(result))
        self._share_with_pytest_benchmark(result)
        for message in warning_messages(result):
            warnings.warn(ModelBudgetWarning(message), stacklevel=3)
        if result.failed:
            raise pytest.fail.Exception("\n".join(failure_lines(result, session.display_path)), pytrace=False)
        return measurement

    @contextmanager
    def _errors_as_failures(self, key: str, what: str = "forward") -> Iterator[None]:
        """A measuring error or the model's own as one failure message, never our traceback."""
        __tracebackhide__ = True
        try:
            yield
        except CompileError as error:
            raise pytest.fail.Exception(f"model_budget: {key}: {error}", pytrace=False) from None
        except MeasurementError as error:
            raise pytest.fail.Exception(
                f"model_budget: {error}\n  (while measuring {key})", pytrace=False
            ) from None
        except pytest.fail.Exception:
            raise
        except Exception as error:  # the model's own error, shown as such
            raise pytest.fail.Exception(_forward_error(error, key, what), pytrace=False) from None

    def _share_with_pytest_benchmark(self, result: CallResult) -> None:
        """A test that also uses pytest-benchmark gets the metrics in its extra_info."""
        benchmark = getattr(self._item, "funcargs", {}).get("benchmark")
        extra_info = getattr(benchmark, "extra_info", None)
        if isinstance(extra_info, dict):
            extra_info[f"model_budget:{result.key}" if result.name else "model_budget"] = {
                **result.metrics,
                "verdict": result.verdict.value,
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


def _generation_keywords(model: Any, kwargs: Mapping[str, Any]) -> list[str]:
    """The keywords of ``generate()`` among a forward's, unless the forward names them itself."""
    import inspect

    from ..core.generation.spec import GENERATION_KEYWORDS

    found = sorted(GENERATION_KEYWORDS & set(kwargs))
    if not found:
        return []
    try:
        named = set(inspect.signature(getattr(model, "forward", model)).parameters)
    except (TypeError, ValueError):
        named = set()
    return [keyword for keyword in found if keyword not in named]


def _runnable(model: Any) -> Any:
    """An ``ExportedProgram`` (not callable itself) as the module it runs; anything else as it is."""
    if type(model).__name__ != "ExportedProgram":
        return model
    from ..core.counting.exported import as_module

    return as_module(model)


def _forward_error(error: BaseException, key: str, what: str = "forward") -> str:
    """The model's exception as one message, pointing at the user's code, not ours."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = str(Path(__file__).parents[1])  # the whole package, not only this folder
    torch_dir = str(Path(sys.modules["torch"].__file__ or "").parent) if "torch" in sys.modules else "\0"
    user = [f for f in frames if not f.filename.startswith((ours, torch_dir))]
    where = f"\n  at {user[-1].filename}:{user[-1].lineno} in {user[-1].name}" if user else ""
    return (
        f"model_budget: the model's {what} raised {type(error).__name__}: {error}{where}\n"
        f"  (while measuring {key}; the model was left as it was)"
    )
