"""The profile command: measure a model without writing a test.

``python -m pytest_modelbudget profile torchvision.models:resnet50 --input 1x3x224x224``
imports a factory, builds the model, counts one forward pass and describes it: a table
per module, the totals, the ops the counter has no formula for, and a
``@pytest.mark.model_budget(...)`` line with headroom, ready to paste into a test.

Parsing, building and rendering are separate functions; :mod:`pytest_modelbudget.__main__`
only reads the command line and writes what :func:`run` returns. Every problem a user can
cause is a :class:`ProfileError` with a one-line message. torch is imported inside the
functions that need it, so ``--help`` and argument errors stay fast.
"""

from __future__ import annotations

import difflib
import importlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING, Any

from .baselines import ROOT_MODULE
from .budgets import METRICS_BY_NAME, parse_budget
from .errors import ModelBudgetError, UnitError
from .roofline import HardwareSpec, RooflineEstimate, estimate
from .roofline import hardware as roofline_hardware
from .units import format_bytes, format_count, format_duration, parse_fraction

if TYPE_CHECKING:
    import torch

    from .counting import Counts

DEVICES = ("cpu", "meta", "cuda")
DEFAULT_HEADROOM = "10%"
DEFAULT_DEPTH = 1

# Names accepted after the colon of --input, and the torch dtype each one means.
DTYPES: Mapping[str, str] = {
    "float32": "float32",
    "float": "float32",
    "fp32": "float32",
    "float64": "float64",
    "double": "float64",
    "float16": "float16",
    "half": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "complex64": "complex64",
    "int64": "int64",
    "long": "int64",
    "int32": "int32",
    "int": "int32",
    "int16": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "bool": "bool",
}

SHAPE_FORMAT = "a shape such as 1x3x224x224, optionally with a dtype: 1x128:int64"
TARGET_FORMAT = "MODULE:FACTORY, e.g. torchvision.models:resnet50 or mypkg.models:build_model"

_DOTTED_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")

# The metrics a suggested marker limits: the deterministic ones that budgets.yaml also
# ratchets. Memory traffic depends on how PyTorch decomposes ops, so it is left out.
SUGGESTED_METRICS = ("macs", "params", "size")


class ProfileError(ModelBudgetError):
    """A profile that cannot be made; the message is shown as one line, without a traceback."""


@dataclass(frozen=True)
class InputSpec:
    """One ``--input``: the shape of a random tensor and its dtype."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    def __str__(self) -> str:
        shape = "x".join(map(str, self.shape))
        return shape if self.dtype == "float32" else f"{shape}:{self.dtype}"


@dataclass(frozen=True)
class ModuleRow:
    """One row of the table: a module's counts, inclusive of its children."""

    path: str  # "" for the model's own ops and parameters
    kind: str  # the module's class name
    depth: int
    macs: int
    params: int
    memory_traffic: int


@dataclass(frozen=True)
class Profile:
    """Everything the command reports about one model."""

    target: str
    inputs: tuple[InputSpec, ...]
    device: str
    depth: int
    headroom: float
    counts: Counts
    rows: tuple[ModuleRow, ...]
    notes: tuple[str, ...] = ()
    roofline: RooflineEstimate | None = None  # with --hardware

    def roofline_ms(self, path: str) -> float:
        """Roofline time of a module and its children ("" is the model's own ops)."""
        assert self.roofline is not None
        if not path:
            return self.roofline.by_module.get("", 0.0)
        return sum(ms for p, ms in self.roofline.by_module.items() if p == path or p.startswith(path + "."))

    @property
    def suggested(self) -> dict[str, str]:
        return suggest_limits(self.counts, self.headroom)


def parse_target(text: str) -> tuple[str, str]:
    """``"torchvision.models:resnet50"`` -> ``("torchvision.models", "resnet50")``."""
    module, colon, attribute = text.strip().partition(":")
    if not colon or not _DOTTED_NAME.match(module) or not _DOTTED_NAME.match(attribute):
        raise ProfileError(f"{text!r} is not {TARGET_FORMAT}")
    return module, attribute


def parse_input(text: str) -> InputSpec:
    """``"1x3x224x224"`` or ``"1x128:int64"`` -> :class:`InputSpec`."""
    shape_text, colon, dtype_text = text.strip().partition(":")
    dtype = "float32"
    if colon:
        if dtype_text.strip().lower() not in DTYPES:
            accepted = ", ".join(sorted(set(DTYPES.values())))
            raise ProfileError(f"--input {text!r}: unknown dtype {dtype_text!r}; accepted: {accepted}")
        dtype = DTYPES[dtype_text.strip().lower()]
    parts = re.split(r"[xX,]", shape_text.strip())
    shape = []
    for part in parts:
        if not part.strip().isdigit():
            what = repr(part) if part.strip() else "an empty dimension"
            raise ProfileError(f"--input {text!r}: {what} is not a whole number; expected {SHAPE_FORMAT}")
        size = int(part)
        if size < 1:
            raise ProfileError(f"--input {text!r}: dimensions must be 1 or more; expected {SHAPE_FORMAT}")
        shape.append(size)
    return InputSpec(tuple(shape), dtype)


def parse_depth(value: int) -> int:
    if value < 1:
        raise ProfileError(f"--depth {value}: the table needs at least one level (--depth 1)")
    return value


def parse_device(text: str) -> str:
    kind, _, index = text.partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise ProfileError(f"--device {text!r} is not one of cpu, meta, cuda (or cuda:N)")
    return text


def parse_headroom(text: str) -> float:
    try:
        return parse_fraction(text)
    except UnitError as error:
        raise ProfileError(f"--headroom: {error}") from None


def load_factory(module_name: str, attribute: str) -> Any:
    """Import ``module_name`` and return its (dotted) ``attribute``."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if module_name == missing or module_name.startswith(missing + "."):  # the target itself
            raise ProfileError(
                f"cannot import {module_name!r}: no module named {missing!r} "
                "(is it installed, or in the current directory?)"
            ) from None
        raise ProfileError(f"importing {module_name!r} failed: {_one_line(error)}") from None
    except Exception as error:  # anything the user's module raises on import
        raise ProfileError(f"importing {module_name!r} failed: {_one_line(error)}") from None
    found: Any = module
    where = module_name
    for name in attribute.split("."):
        if not hasattr(found, name):
            candidates = [n for n in dir(found) if not n.startswith("_")]
            close = difflib.get_close_matches(name, candidates, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ProfileError(f"{where!r} has no attribute {name!r}{hint}")
        found = getattr(found, name)
        where = f"{where}.{name}"
    return found


def build_model(factory: Any, target: str, device: str) -> tuple[torch.nn.Module, list[str]]:
    """Call the factory (with no arguments) and put the model on ``device``, in eval mode.

    On ``meta`` the factory runs under ``torch.device("meta")`` so no weight is allocated;
    a factory that cannot build on meta is built on the CPU instead, with a note.
    """
    import torch

    notes: list[str] = []
    if isinstance(factory, torch.nn.Module):
        model = factory
        notes.append(f"{target} is a module instance, profiled as it is")
    elif not callable(factory):
        raise ProfileError(
            f"{target} is a value of type {type(factory).__name__}, not a callable that returns a module"
        )
    else:
        built: object = None
        if device == "meta":
            try:
                with torch.device("meta"):
                    built = factory()
            except Exception as error:  # retried on the CPU, where it may work
                notes.append(f"cannot build on the meta device ({_one_line(error)}); built on the CPU")
        if built is None:
            try:
                built = factory()
            except Exception as error:  # the user's factory: report, don't crash
                raise ProfileError(f"{target}() raised {_one_line(error)}") from None
        if not isinstance(built, torch.nn.Module):
            raise ProfileError(
                f"{target}() returned a value of type {type(built).__name__}, not a torch.nn.Module"
            )
        model = built
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ProfileError(f"--device {device}: CUDA is not available on this machine")
        model = model.to(device)
    return model.eval(), notes


def model_device(model: torch.nn.Module) -> str:
    for tensor in (*model.parameters(), *model.buffers()):
        return str(tensor.device)
    return "cpu"


def make_inputs(specs: Sequence[InputSpec], device: str) -> tuple[torch.Tensor, ...]:
    """Random float tensors, and zeros (always a valid index) for integer and bool inputs."""
    import torch

    tensors = []
    for spec in specs:
        dtype = getattr(torch, spec.dtype)
        if device == "meta":
            tensors.append(torch.empty(spec.shape, dtype=dtype, device="meta"))
        elif dtype.is_floating_point or dtype.is_complex:
            tensors.append(torch.randn(spec.shape, dtype=dtype, device=device))
        else:
            tensors.append(torch.zeros(spec.shape, dtype=dtype, device=device))
    return tuple(tensors)


def module_rows(model: torch.nn.Module, counts: Counts, depth: int) -> tuple[ModuleRow, ...]:
    """Inclusive counts of every module down to ``depth`` levels, in the model's order.

    The model's own ops and parameters (those of no submodule) come last, as ``""``.
    """
    kinds = {path: type(module).__name__ for path, module in model.named_modules()}
    order = {path: index for index, path in enumerate(kinds)}
    totals: dict[str, list[int]] = {}
    for path, stats in counts.modules.items():
        parts = path.split(".") if path else []
        prefixes = [".".join(parts[:n]) for n in range(1, min(depth, len(parts)) + 1)] or [""]
        for prefix in prefixes:
            row = totals.setdefault(prefix, [0, 0, 0])
            row[0] += stats.macs
            row[1] += stats.params
            row[2] += stats.memory_traffic
    paths = sorted(totals, key=lambda p: (p == "", order.get(p, len(order)), p))
    return tuple(
        ModuleRow(
            path=path,
            kind=kinds.get(path, "") if path else type(model).__name__,
            depth=len(path.split(".")) if path else 0,
            macs=macs,
            params=params,
            memory_traffic=traffic,
        )
        for path in paths
        for macs, params, traffic in [totals[path]]
        if macs or params or traffic
    )


def profile_model(
    target: str,
    inputs: Sequence[str],
    *,
    depth: int = DEFAULT_DEPTH,
    device: str = "cpu",
    headroom: str = DEFAULT_HEADROOM,
    hardware: str | None = None,
) -> Profile:
    """Parse the arguments, build the model, count one forward pass."""
    module_name, attribute = parse_target(target)
    specs = tuple(parse_input(text) for text in inputs)
    if not specs:
        raise ProfileError(f"give the model's inputs with --input, e.g. --input 1x3x224x224 ({SHAPE_FORMAT})")
    depth = parse_depth(depth)
    device = parse_device(device)
    room = parse_headroom(headroom)
    spec = _hardware(hardware) if hardware else None
    factory = load_factory(module_name, attribute)

    from .counting import count

    model, notes = build_model(factory, target, device)
    on = model_device(model)
    # Inputs live where the weights are; a meta model runs on meta tensors only.
    tensors = make_inputs(specs, "meta" if on == "meta" else on)
    try:
        counts = count(model, tensors, execution="meta" if on == "meta" else "auto")
    except Exception as error:  # the user's forward: report its error in one line
        if on == "meta":
            # count() wraps the meta failure in advice for its API; the cause is what matters here.
            cause = error.__cause__ or error
            raise ProfileError(
                f"the forward of {target} cannot run on the meta device ({_one_line(cause)}); "
                "profile it with --device cpu"
            ) from None
        hint = ""
        if "indices" in str(error) and any(spec.dtype.startswith(("float", "bfloat")) for spec in specs):
            hint = "; token ids need an integer input, e.g. --input 1x128:int64"
        raise ProfileError(f"the forward of {target} raised {_one_line(error)}{hint}") from None
    return Profile(
        target=target,
        inputs=specs,
        device=device,
        depth=depth,
        headroom=room,
        counts=counts,
        rows=module_rows(model, counts, depth),
        notes=tuple(notes),
        roofline=estimate(counts.ops, spec) if spec else None,
    )


def _hardware(name: str) -> HardwareSpec:
    try:
        return roofline_hardware(name)
    except UnitError as error:
        raise ProfileError(f"--hardware: {error}") from None


def round_up_si(value: float, unit: str) -> str:
    """``value`` rounded *up* to 3 significant digits, with an SI suffix (or byte unit).

    Counts: ``4498102681.6`` -> ``"4.5G"``; bytes: ``112450940.8`` -> ``"113 MB"``. The
    result parses back (with the metric's own parser) to a number >= ``value``.
    """
    if unit == "bytes":
        steps: tuple[tuple[str, int], ...] = (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3))
        plain, separator = "B", " "
    else:
        steps = (("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3))
        plain, separator = "", ""
    target = Decimal(value)
    scale, suffix = 1, plain
    for name, size in steps:
        if target >= size:
            scale, suffix = size, name
            break
    mantissa = target / scale
    quantum = Decimal(1).scaleb(mantissa.adjusted() - 2) if mantissa > 0 else Decimal(1)
    if scale == 1:
        quantum = max(quantum, Decimal(1))  # no fractional counts or bytes
    rounded = (mantissa / quantum).to_integral_value(rounding=ROUND_CEILING) * quantum
    parse = METRICS_BY_NAME["size" if unit == "bytes" else "macs"].parse
    while True:
        if rounded >= 1000 and scale < steps[0][1]:  # 999.5k -> 1M
            bigger = [(n, s) for n, s in steps if s == scale * 1000]
            suffix, scale = bigger[0]
            rounded = (rounded / 1000).to_integral_value(rounding=ROUND_CEILING)
        number = format(rounded.normalize(), "f")
        text = f"{number}{separator}{suffix}" if suffix else number
        # Decimal is exact, but the parser multiplies floats: never suggest less than asked.
        if parse(text) >= value:
            return text
        rounded += quantum


def suggest_limits(counts: Counts, headroom: float) -> dict[str, str]:
    """Marker keyword -> limit with ``headroom`` above the measured value (zero values skipped)."""
    measured = {"macs": counts.macs, "params": counts.params, "size": counts.size_bytes}
    limits = {}
    for name in SUGGESTED_METRICS:
        if measured[name] > 0:
            metric = METRICS_BY_NAME[name]
            limits[metric.keyword] = round_up_si(measured[name] * (1.0 + headroom), metric.unit)
    parse_budget(limits)  # the line must be valid for the plugin, whatever the numbers
    return limits


def marker_line(limits: Mapping[str, str]) -> str:
    arguments = ", ".join(f'{keyword}="{value}"' for keyword, value in limits.items())
    return f"@pytest.mark.model_budget({arguments})"


def render_lines(profile: Profile) -> Iterator[str]:
    """The human-readable profile: header, module table, totals, uncounted ops, marker."""
    counts = profile.counts
    inputs = ", ".join(str(spec) for spec in profile.inputs)
    yield f"{profile.target}, inputs {inputs}, eval mode, counted on {counts.executed_on}"
    for note in profile.notes:
        yield f"note: {note}"
    yield ""
    roofline = profile.roofline
    headers = (
        "module",
        "type",
        "params",
        "MACs",
        "% MACs",
        "memory traffic",
        *(("roofline",) if roofline else ()),
    )
    rows = [
        (
            "  " * max(row.depth - 1, 0) + (row.path or ROOT_MODULE),
            row.kind,
            format_count(row.params),
            format_count(row.macs),
            _share(row.macs, counts.macs),
            format_bytes(row.memory_traffic),
            *((format_duration(profile.roofline_ms(row.path)),) if roofline else ()),
        )
        for row in profile.rows
    ]
    total = (
        "total",
        "",
        format_count(counts.params),
        format_count(counts.macs),
        _share(counts.macs, counts.macs),
        format_bytes(counts.memory_traffic),
        *((format_duration(roofline.total_ms),) if roofline else ()),
    )
    yield from _table(headers, rows, total, right_aligned=(2, 3, 4, 5, 6) if roofline else (2, 3, 4, 5))
    yield ""
    size_detail = ", ".join(f"{dtype} {format_bytes(n)}" for dtype, n in counts.size_by_dtype.items())
    totals = [
        ("MACs", f"{format_count(counts.macs)} ({counts.macs:,})"),
        ("FLOPs", f"{format_count(counts.flops)} ({counts.flops:,})"),
        ("params", f"{format_count(counts.params)} ({counts.params:,})"),
        ("trainable", f"{format_count(counts.trainable_params)} ({counts.trainable_params:,})"),
        ("size", f"{format_bytes(counts.size_bytes)} ({counts.size_bytes:,} bytes" + _paren(size_detail)),
        ("memory traffic", f"{format_bytes(counts.memory_traffic)} ({counts.memory_traffic:,} bytes)"),
        ("arithmetic intensity", f"{counts.arithmetic_intensity:.1f} FLOPs/byte"),
    ]
    if roofline:
        bound = ", ".join(f"{op} x{n}" for op, n in list(roofline.memory_bound_ops.items())[:5]) or "none"
        totals += [
            (f"roofline on {roofline.hardware}", format_duration(roofline.total_ms)),
            ("memory-bound", f"{roofline.memory_bound_share:.0%} of that time; ops: {bound}"),
        ]
    width = max(len(name) for name, _ in totals)
    yield "totals"
    for name, value in totals:
        yield f"  {name:<{width}}  {value}"
    yield ""
    if counts.uncounted:
        ops = ", ".join(f"{op} x{n}" for op, n in counts.uncounted.items())
        yield f"uncounted ops (arithmetic with no MAC formula, not in the MACs above): {ops}"
    else:
        yield "uncounted ops: none"
    yield ""
    limits = profile.suggested
    if limits:
        yield f"suggested budget ({profile.headroom:.0%} headroom):"
        yield marker_line(limits)
    else:
        yield "suggested budget: none (the model has no MACs, params or size to limit)"


def to_json(profile: Profile) -> dict[str, Any]:
    """The profile as a JSON-able object (``--json``)."""
    counts = profile.counts
    limits = profile.suggested
    return {
        "target": profile.target,
        "inputs": [{"shape": list(spec.shape), "dtype": spec.dtype} for spec in profile.inputs],
        "device": profile.device,
        "executed_on": counts.executed_on,
        "convention": counts.convention,
        "depth": profile.depth,
        "totals": {
            "macs": counts.macs,
            "flops": counts.flops,
            "params": counts.params,
            "trainable_params": counts.trainable_params,
            "buffers": counts.buffers,
            "size_bytes": counts.size_bytes,
            "size_by_dtype": dict(counts.size_by_dtype),
            "memory_traffic": counts.memory_traffic,
            "arithmetic_intensity": counts.arithmetic_intensity,
        },
        "modules": [
            {
                "path": row.path or ROOT_MODULE,
                "type": row.kind,
                "depth": row.depth,
                "params": row.params,
                "macs": row.macs,
                "macs_share": row.macs / counts.macs if counts.macs else 0.0,
                "memory_traffic": row.memory_traffic,
            }
            for row in profile.rows
        ],
        "uncounted": dict(counts.uncounted),
        "notes": list(profile.notes),
        "headroom": profile.headroom,
        "suggested_budget": limits,
        "marker": marker_line(limits) if limits else None,
        "roofline": (
            {
                "hardware": profile.roofline.hardware,
                "total_ms": profile.roofline.total_ms,
                "memory_bound_ms": profile.roofline.memory_bound_ms,
                "memory_bound_ops": dict(profile.roofline.memory_bound_ops),
                "by_module_ms": {
                    row.path or ROOT_MODULE: profile.roofline_ms(row.path) for row in profile.rows
                },
            }
            if profile.roofline
            else None
        ),
    }


def run(
    target: str,
    inputs: Sequence[str],
    *,
    depth: int = DEFAULT_DEPTH,
    device: str = "cpu",
    headroom: str = DEFAULT_HEADROOM,
    as_json: bool = False,
    hardware: str | None = None,
) -> list[str]:
    """The command's output lines; raises :class:`ProfileError` for anything the user can fix."""
    profile = profile_model(target, inputs, depth=depth, device=device, headroom=headroom, hardware=hardware)
    if as_json:
        return [json.dumps(to_json(profile), indent=2)]
    return list(render_lines(profile))


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def _paren(detail: str) -> str:
    return f": {detail})" if detail else ")"


def _one_line(error: BaseException) -> str:
    """``TypeError: message`` with the message folded onto one line."""
    message = " ".join(str(error).split())
    if len(message) > 400:
        message = message[:397] + "..."
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    total: Sequence[str],
    *,
    right_aligned: Sequence[int],
) -> Iterator[str]:
    widths = [max(len(r[i]) for r in (headers, *rows, total)) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if i in right_aligned else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    yield line(headers)
    yield "  ".join("-" * width for width in widths)
    for row in rows:
        yield line(row)
    yield "  ".join("-" * width for width in widths)
    yield line(total)
