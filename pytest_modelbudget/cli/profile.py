"""The profile command: measure a model without writing a test.

``python -m pytest_modelbudget profile torchvision.models:resnet50 --input 1x3x224x224``
imports a factory, builds the model, counts one forward pass and describes it: a table
per module, the totals, the ops the counter has no formula for, and a
``@pytest.mark.model_budget(...)`` line with headroom, ready to paste into a test. With
``--compile`` it also compiles the model (:mod:`pytest_modelbudget.core.compiling`, in a clean
dynamo state) and reports its graphs, graph breaks, recompiles, kernels and compile time;
the counts are still those of the eager model. With ``--train`` it counts a training step,
with ``--generate N`` a greedy generation of N tokens after the prompt.

This module parses the arguments, builds the model and counts it into a
:class:`~pytest_modelbudget.budgets.profile.Profile`; :mod:`pytest_modelbudget.report.profile`
renders it, and :mod:`pytest_modelbudget.__main__` only reads the command line and writes
what :func:`run` returns. Every problem a user can cause is a :class:`ProfileError` with a
one-line message. torch is imported inside the functions that need it, so ``--help`` and
argument errors stay fast.
"""

from __future__ import annotations

import difflib
import importlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..budgets.profile import InputSpec, ModuleRow, Profile
from ..core.counting.roofline import estimate
from ..core.counting.roofline import hardware as hardware_spec
from ..errors import MeasurementError, ModelBudgetError, UnitError
from ..report.profile import render_lines, to_json
from ..units import parse_fraction

if TYPE_CHECKING:
    import torch

    from ..core.compiling import CompileStats
    from ..core.counting.count import Counts
    from ..core.generation.count import GenerationCounts

_T = TypeVar("_T")

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


class ProfileError(ModelBudgetError):
    """A profile that cannot be made; the message is shown as one line, without a traceback."""


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


def parse_option(option: str, parse: Callable[[str], _T], text: str) -> _T:
    """``parse(text)``, with a :class:`UnitError` reported as a ``ProfileError`` naming ``option``."""
    try:
        return parse(text)
    except UnitError as error:
        raise ProfileError(f"{option}: {error}") from None


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


def module_rows(
    model: torch.nn.Module, counts: Counts, depth: int, backward: Mapping[str, int] | None = None
) -> tuple[ModuleRow, ...]:
    """Inclusive counts of every module down to ``depth`` levels, in the model's order.

    The model's own ops and parameters (those of no submodule) come last, as ``""``.
    ``backward``: a training step's backward MACs by module path (``TrainCounts.backward_modules``).
    """
    kinds = {path: type(module).__name__ for path, module in model.named_modules()}
    order = {path: index for index, path in enumerate(kinds)}
    totals: dict[str, list[int]] = {}

    def add(path: str, values: tuple[int, int, int, int]) -> None:
        parts = path.split(".") if path else []
        prefixes = [".".join(parts[:n]) for n in range(1, min(depth, len(parts)) + 1)] or [""]
        for prefix in prefixes:
            row = totals.setdefault(prefix, [0, 0, 0, 0])
            for index, value in enumerate(values):
                row[index] += value

    for path, stats in counts.modules.items():
        add(path, (stats.macs, stats.params, stats.memory_traffic, 0))
    for path, macs in (backward or {}).items():
        add(path, (0, 0, 0, macs))
    paths = sorted(totals, key=lambda p: (p == "", order.get(p, len(order)), p))
    return tuple(
        ModuleRow(
            path=path,
            kind=kinds.get(path, "") if path else type(model).__name__,
            depth=len(path.split(".")) if path else 0,
            macs=macs,
            params=params,
            memory_traffic=traffic,
            backward_macs=backward_macs,
        )
        for path in paths
        for macs, params, traffic, backward_macs in [totals[path]]
        if macs or params or traffic or backward_macs
    )


def profile_model(
    target: str,
    inputs: Sequence[str],
    *,
    depth: int = DEFAULT_DEPTH,
    device: str = "cpu",
    headroom: str = DEFAULT_HEADROOM,
    hardware: str | None = None,
    compile_backend: str | None = None,
    optimizer: str | None = None,
    new_tokens: int | None = None,
) -> Profile:
    """Parse the arguments, build the model, count one forward pass (and compile it, if asked).

    ``optimizer`` (``--train``): count one training step with that optimizer (``"none"``:
    forward and backward only) and the default loss, the sum of the output's float tensors.
    ``new_tokens`` (``--generate``): count a greedy generation of that many tokens after the
    prompt (the one ``--input``, token ids) instead.
    """
    module_name, attribute = parse_target(target)
    specs = tuple(parse_input(text) for text in inputs)
    if not specs:
        raise ProfileError(f"give the model's inputs with --input, e.g. --input 1x3x224x224 ({SHAPE_FORMAT})")
    depth = parse_depth(depth)
    device = parse_device(device)
    room = parse_option("--headroom", parse_fraction, headroom)
    spec = parse_option("--hardware", hardware_spec, hardware) if hardware else None
    if compile_backend is not None and device == "meta":
        raise ProfileError("--compile runs the model: profile it with --device cpu or cuda, not meta")
    if optimizer is not None and compile_backend is not None:
        raise ProfileError("--train counts the eager training step: drop --compile")
    if new_tokens is not None:
        _check_generation(
            new_tokens, specs, train=optimizer is not None, compiled=compile_backend is not None
        )
    from ..core.training.optimizers import OPTIMIZER_NAMES

    if optimizer is not None and optimizer != "none" and optimizer.lower() not in OPTIMIZER_NAMES:
        raise ProfileError(f"--optimizer {optimizer}: use one of {', '.join(OPTIMIZER_NAMES)} or none")
    factory = load_factory(module_name, attribute)

    from ..core.counting.count import count
    from ..core.devices import model_device
    from ..core.training.count import count_train_step
    from ..core.training.step import NothingToReduce, TrainSpec

    model, notes = build_model(factory, target, device)
    on = str(model_device(model, ()))
    # Inputs live where the weights are; a meta model runs on meta tensors only.
    tensors = make_inputs(specs, "meta" if on == "meta" else on)
    train = generation = None
    if new_tokens is not None:
        # Token ids are real even for a model on meta: generate() reads them as it prepares.
        prompt = make_inputs(specs, "cpu" if on == "meta" else on)[0]
        generation = _count_generation(model, prompt, new_tokens, on)
    try:
        if generation is not None:
            counts = generation.prefill
        elif optimizer is not None:
            step = TrainSpec(optimizer=None if optimizer == "none" else optimizer.lower())
            train = count_train_step(model, tensors, spec=step, execution="meta" if on == "meta" else "auto")
            counts = train.forward
        else:
            counts = count(model, tensors, execution="meta" if on == "meta" else "auto")
    except NothingToReduce:
        raise ProfileError(
            f"--train: the output of {target} has no floating-point tensor that depends on the "
            "parameters; the profile's loss is the sum of the output's float tensors"
        ) from None
    except MeasurementError as error:  # nothing to train, an optimizer that fails
        raise ProfileError(f"--train: {_folded(error)}") from None
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
    compiled = compile_model(model, tensors, compile_backend) if compile_backend is not None else None
    return Profile(
        target=target,
        inputs=specs,
        device=device,
        depth=depth,
        headroom=room,
        counts=counts,
        rows=module_rows(model, counts, depth, train.backward_modules if train else None),
        generation=generation,
        notes=tuple(notes),
        roofline=estimate(counts.ops, spec) if spec else None,
        compile_backend=compile_backend,
        compiled=compiled,
        train=train,
    )


def _check_generation(new_tokens: int, specs: Sequence[InputSpec], *, train: bool, compiled: bool) -> None:
    if new_tokens < 1:
        raise ProfileError(f"--generate {new_tokens}: a generation makes at least one new token")
    if train or compiled:
        raise ProfileError(
            f"--generate counts an eager generation: drop {'--train' if train else '--compile'}"
        )
    if len(specs) != 1 or specs[0].dtype.startswith(("float", "bfloat", "complex", "bool")):
        raise ProfileError(
            "--generate takes one --input, the prompt's token ids: --input 1x128:int64 (batch x tokens)"
        )
    if len(specs[0].shape) != 2:
        raise ProfileError(f"--generate: the prompt {specs[0]} is not batch x tokens, e.g. 1x128:int64")


def _count_generation(
    model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, on: str
) -> GenerationCounts:
    from ..core.generation.count import count_generation
    from ..core.generation.spec import GenerationSpec, can_generate

    if not can_generate(model):
        raise ProfileError(
            f"--generate needs a model with transformers' generate() (GenerationMixin), and "
            f"{type(model).__name__} has none: budget a hand-written decoder in a test, with "
            "model_budget.generate(model, input_ids, max_new_tokens=..., step=...)"
        )
    try:
        return count_generation(
            model, prompt, GenerationSpec(new_tokens), execution="meta" if on == "meta" else "auto"
        )
    except MeasurementError as error:  # no generate(), ...
        raise ProfileError(f"--generate: {_folded(error)}") from None
    except Exception as error:  # the model's own
        raise ProfileError(f"the generation of {type(model).__name__} raised {_one_line(error)}") from None


def compile_model(model: torch.nn.Module, tensors: Sequence[torch.Tensor], backend: str) -> CompileStats:
    """``torch.compile(model, backend=backend)`` run on ``tensors`` in a clean dynamo state.

    Run twice, as a budgeted call is: a recompile on the second run is a guard that never holds.

    The model is left as it was. A backend that is not installed, or a model the compiler
    fails on, is a :class:`ProfileError` with the compiler's message folded onto one line.
    """
    from ..core.compiling import CompileError, compile_session

    try:
        with compile_session(model, {"backend": backend}) as session:
            return session.run([(tuple(tensors), {})])
    except CompileError as error:
        # The compiler's own message (at most a few lines), whole: it lists the installed backends.
        raise ProfileError(f"--compile: {_folded(error, limit=1000)}") from None


def run(
    target: str,
    inputs: Sequence[str],
    *,
    depth: int = DEFAULT_DEPTH,
    device: str = "cpu",
    headroom: str = DEFAULT_HEADROOM,
    as_json: bool = False,
    hardware: str | None = None,
    compile_backend: str | None = None,
    optimizer: str | None = None,
    new_tokens: int | None = None,
) -> list[str]:
    """The command's output lines; raises :class:`ProfileError` for anything the user can fix.

    ``compile_backend``: also compile the model with this ``torch.compile`` backend;
    ``optimizer``: profile one training step with it (``--train``).
    """
    profile = profile_model(
        target,
        inputs,
        depth=depth,
        device=device,
        headroom=headroom,
        hardware=hardware,
        compile_backend=compile_backend,
        optimizer=optimizer,
        new_tokens=new_tokens,
    )
    if as_json:
        return [json.dumps(to_json(profile), indent=2)]
    return list(render_lines(profile))


def _one_line(error: BaseException) -> str:
    """``TypeError: message`` with the message folded onto one line."""
    message = _folded(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _folded(error: BaseException, limit: int = 400) -> str:
    """The error's message on one line, cut at ``limit`` characters."""
    message = " ".join(str(error).split())
    return message[: limit - 3] + "..." if len(message) > limit else message
