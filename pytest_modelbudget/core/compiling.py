"""``torch.compile``, measured: graph breaks, graphs, recompiles, kernels and compile time.

One :func:`compile_session` is a clean dynamo state from start to end: dynamo's caches,
counters and compilation records are reset when it opens, its configuration is restored
and its caches are reset again when it closes, so no measured call sees another's
compiled code or counts (in any order, in any xdist worker). Inside it the model is
compiled, run on every input set given (twice on the last: a second run on the same
inputs that compiles again shows guards that never hold), and :meth:`CompileSession.stats`
reads what dynamo itself recorded.

What this relies on, all in torch 2.14 and read only, never patched:

* ``torch._dynamo.reset()``, ``torch._dynamo.config.get_config_copy()`` and setting keys back
  -- the clean state and the restored configuration;
* ``torch._dynamo.utils.counters["stats"]["unique_graphs"]`` -- compiled graphs;
* ``torch._dynamo.utils.graph_break_reasons`` -- one ``GraphCompileReason`` (``reason``,
  ``user_stack``) per graph break, the list ``torch._dynamo.explain`` reads; the
  ``counters["unimplemented"]`` / ``counters["graph_break"]`` messages give the readable
  reason where that one is internal (``generic_jump ...``);
* ``torch._dynamo.utils.get_compilation_metrics()`` -- one record per frame compiled, with
  ``recompile_reason`` (the guard that failed) and ``entire_frame_compile_time_s``;
* ``torch._inductor.metrics.generated_kernel_count`` -- kernels inductor generated
  (restored on FX-graph-cache hits, so it does not depend on a warm cache).

No torch at module level: :func:`parse_compile` validates the marker at collection time.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MeasurementError, UnitError, shown

# torch.compile's keyword arguments (besides the model), and what each accepts.
COMPILE_KEYWORDS = ("fullgraph", "dynamic", "backend", "mode", "options", "disable")
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
DEFAULT_BACKEND = "inductor"
Inputs = tuple[tuple[Any, ...], Mapping[str, Any]]  # (args, kwargs) of one forward


class CompileError(MeasurementError):
    """The model cannot be compiled as asked: unknown backend, bad option, compiler failure."""


def parse_compile(value: object) -> bool | dict[str, Any]:
    """The ``compile`` option: True / False, or a dict of ``torch.compile`` keyword arguments."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, Mapping):
        raise UnitError(f"{shown(value)} is not True, False or a dict of torch.compile keyword arguments")
    options = dict(value)
    for key, item in options.items():
        if key not in COMPILE_KEYWORDS:
            raise UnitError(f"unknown torch.compile keyword {key!r}; accepted: {', '.join(COMPILE_KEYWORDS)}")
        if key in ("fullgraph", "disable") and not isinstance(item, bool):
            raise UnitError(f"{key}={shown(item)} is not True or False")
        if key == "dynamic" and item is not None and not isinstance(item, bool):
            raise UnitError(f"dynamic={shown(item)} is not True, False or None")
        if key == "mode" and item is not None and item not in MODES:
            raise UnitError(f"mode={shown(item)} is not one of {', '.join(MODES)}")
        if key == "backend" and not (isinstance(item, str) or callable(item)):
            raise UnitError(f"backend={shown(item)} is not a backend name or a callable")
        if key == "options" and not isinstance(item, Mapping):
            raise UnitError(f"options={shown(item)} is not a dict of inductor options")
    return options


def is_compiled(model: Any) -> bool:
    """Whether ``model`` is what ``torch.compile(module)`` returns (an ``OptimizedModule``)."""
    return type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod")


def eager_model(model: Any) -> Any:
    """The module a compiled model wraps (what counting counts), or the model itself."""
    return model._orig_mod if is_compiled(model) else model


def _backend_name(backend: object) -> str:
    return backend if isinstance(backend, str) else getattr(backend, "__name__", type(backend).__name__)


def compile_label(options: Mapping[str, Any] | None) -> str:
    """The timing fingerprint's mode: ``compiled``, ``compiled:max-autotune``, ``compiled:aot_eager``.

    ``None`` options: a model the user compiled, whose options are their own.
    """
    if options is None:
        return "compiled:as-given"
    parts = ["compiled"]
    backend = _backend_name(options.get("backend", DEFAULT_BACKEND))
    if backend != DEFAULT_BACKEND:
        parts.append(backend)
    mode = options.get("mode")
    if mode not in (None, "default"):
        parts.append(str(mode))
    if options.get("dynamic") is not None:
        parts.append("dynamic" if options["dynamic"] else "static")
    return ":".join(parts)


@dataclass(frozen=True)
class GraphBreak:
    """One place where dynamo split the graph, as the user needs it to fix it."""

    reason: str  # dynamo's one-line reason, e.g. "Data-dependent branching"
    filename: str  # the user's file (the innermost frame outside torch)
    lineno: int
    line: str  # the source line
    explanation: str = ""  # dynamo's "Explanation:", when it gives one

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GraphBreak:
        return cls(**data)


@dataclass(frozen=True)
class Recompile:
    """One extra compilation of a function, and the guard whose failure caused it."""

    function: str
    filename: str
    lineno: int  # the function's first line
    guard: str  # dynamo's reason, e.g. "0/0: tensor 'x' size mismatch at index 0. expected 2, actual 3"

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recompile:
        return cls(**data)


@dataclass(frozen=True)
class CompileStats:
    """What one compiled call compiled: the deterministic counts, and the compile time."""

    label: str  # the timing fingerprint's mode
    graphs: int
    graph_breaks: tuple[GraphBreak, ...]
    recompiles: tuple[Recompile, ...]
    kernels: int | None  # inductor's generated kernels; None with other backends
    compile_s: float  # wall time of the compilations (never ratcheted)

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "graphs": self.graphs,
            "graph_breaks": [b.to_dict() for b in self.graph_breaks],
            "recompiles": [r.to_dict() for r in self.recompiles],
            "kernels": self.kernels,
            "compile_s": self.compile_s,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompileStats:
        return cls(
            label=data["label"],
            graphs=int(data["graphs"]),
            graph_breaks=tuple(GraphBreak.from_dict(b) for b in data["graph_breaks"]),
            recompiles=tuple(Recompile.from_dict(r) for r in data["recompiles"]),
            kernels=data["kernels"],
            compile_s=float(data["compile_s"]),
        )


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text.strip() else ""


def _explanation(text: str) -> str:
    for line in text.splitlines():
        if line.strip().startswith("Explanation:"):
            return line.strip().removeprefix("Explanation:").strip()
    return ""


def _user_frame(stack: Sequence[Any]) -> Any | None:
    """The innermost frame in the user's code, not in torch."""
    import torch

    torch_dir = str(Path(torch.__file__).parent)
    user = [f for f in stack if not str(f.filename).startswith(torch_dir)]
    return (user or list(stack) or [None])[-1]


def _messages() -> list[str]:
    from torch._dynamo.utils import counters

    return [message for category in ("graph_break", "unimplemented") for message in counters[category]]


def _graph_breaks() -> tuple[GraphBreak, ...]:
    """Each place the graph broke, once (a recompiled frame records its breaks again)."""
    from torch._dynamo.utils import graph_break_reasons

    found: dict[tuple[str, int, str], GraphBreak] = {}
    for record in graph_break_reasons:
        frame = _user_frame(record.user_stack)
        filename, lineno = (str(frame.filename), int(frame.lineno or 0)) if frame else ("?", 0)
        text = str(record.reason)
        if text.startswith("generic_jump"):
            # An internal name for a data-dependent branch: dynamo's own message for this
            # line says it in words ('Data-dependent branching' and why).
            at = f'File "{filename}", line {lineno}'
            text = next((m for m in _messages() if at in m), text)
        reason = _first_line(text)
        key = (filename, lineno, reason)
        if key not in found:
            line = (frame.line or "").strip() if frame else ""
            found[key] = GraphBreak(reason, filename, lineno, line, _explanation(text))
    return tuple(found.values())


def _recompiles(records: Sequence[Any]) -> tuple[Recompile, ...]:
    return tuple(
        Recompile(
            function=str(r.co_name),
            filename=str(r.co_filename),
            lineno=int(r.co_firstlineno or 0),
            guard=str(r.recompile_reason),
        )
        for r in records
        if r.recompile_reason
    )


def _reset() -> None:
    import torch
    from torch._dynamo import utils

    torch._dynamo.reset()
    utils.counters.clear()
    utils.clear_compilation_metrics()
    inductor_metrics = sys.modules.get("torch._inductor.metrics")
    if inductor_metrics is not None:
        inductor_metrics.reset()


def _kernels(options: Mapping[str, Any] | None) -> int | None:
    """Kernels inductor generated; None for other backends and for a model the user compiled,
    whose backend is not known here (its count would depend on what ran before)."""
    if options is None:
        return None
    backend = _backend_name(options.get("backend", DEFAULT_BACKEND))
    inductor_metrics = sys.modules.get("torch._inductor.metrics")
    if backend != DEFAULT_BACKEND or inductor_metrics is None:
        return None
    return int(inductor_metrics.generated_kernel_count)


def _compile_error(error: BaseException, what: str) -> CompileError:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    message = "\n    ".join(lines[:6]) + ("\n    ..." if len(lines) > 6 else "")
    return CompileError(f"torch.compile {what} ({type(error).__name__}: {message})")


class CompileSession:
    """The compiled model and what compiling it recorded, inside :func:`compile_session`."""

    def __init__(self, fn: Callable[..., Any], options: Mapping[str, Any] | None) -> None:
        self.fn = fn  # the compiled model: time it, run it
        self.options = options
        self.label = compile_label(options)

    def run(self, inputs: Sequence[Inputs]) -> CompileStats:
        """Run the compiled model on each input set in order (the last twice); what it compiled."""
        import torch
        from torch._dynamo.utils import get_compilation_metrics

        start = time.perf_counter()
        runs = [*inputs, inputs[-1]]
        with torch.inference_mode():
            for args, kwargs in runs:
                try:
                    self.fn(*args, **kwargs)
                except Exception as error:
                    raise _compile_error(error, "failed on this model") from None
        wall_s = time.perf_counter() - start
        records = get_compilation_metrics()
        compile_s = sum(r.entire_frame_compile_time_s or 0.0 for r in records) or wall_s
        return CompileStats(
            label=self.label,
            graphs=_unique_graphs(),
            graph_breaks=_graph_breaks(),
            recompiles=_recompiles(records),
            kernels=_kernels(self.options),
            compile_s=compile_s,
        )


def _unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _compiled(model: Any, options: Mapping[str, Any] | None) -> Callable[..., Any]:
    """``torch.compile(model, **options)``; a model the user compiled is used as it is."""
    import torch

    if options is None:
        return model  # type: ignore[no-any-return]
    backend = options.get("backend", DEFAULT_BACKEND)
    if isinstance(backend, str):
        try:
            torch._dynamo.lookup_backend(backend)
        except Exception as error:
            available = ", ".join(torch._dynamo.list_backends(exclude_tags=()))
            raise CompileError(
                f"torch.compile backend {backend!r} is not available ({error}); installed: {available}"
            ) from None
    try:
        return torch.compile(eager_model(model), **options)
    except Exception as error:
        raise _compile_error(error, f"refused the options {dict(options)!r}") from None


@contextmanager
def compile_session(model: Any, options: Mapping[str, Any] | None) -> Iterator[CompileSession]:
    """A clean dynamo state with the model compiled in it; reset and restored on the way out.

    ``options``: ``torch.compile`` keyword arguments, or None for a model the user compiled.
    """
    import torch

    from .model_state import Inventory, model_left_as_it_was

    config = torch._dynamo.config.get_config_copy()
    _reset()
    try:
        with model_left_as_it_was(Inventory.of(eager_model(model)), restore_values=True):
            yield CompileSession(_compiled(model, options), options)
    finally:
        _reset()
        _restore_config(config)


def _restore_config(saved: Mapping[str, Any]) -> None:
    """Put back only what changed: setting every key would also set deprecated ones (a warning)."""
    import torch

    config = torch._dynamo.config
    current = config.get_config_copy()
    for key, value in saved.items():
        if current.get(key) != value:
            setattr(config, key, value)
