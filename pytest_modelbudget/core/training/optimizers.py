"""Which optimizer a training step uses, built over the parameters it is counted or timed with.

``train_step(optimizer=...)`` takes a name (``"adamw"``), an optimizer class, a callable
``params -> optimizer``, or an optimizer the test already built (its class and its
param groups' settings are reused, the optimizer itself is never stepped). Whatever it
is, :func:`optimizer_factory` turns it into one function that builds a fresh optimizer
over the *twins* of the model's parameters -- so the real parameters and a user's
optimizer are never updated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ...errors import MeasurementError

# name -> (class name in torch.optim, settings besides its defaults)
OPTIMIZER_NAMES: Mapping[str, tuple[str, Mapping[str, Any]]] = {
    "sgd": ("SGD", {}),
    "sgd-momentum": ("SGD", {"momentum": 0.9}),
    "adam": ("Adam", {}),
    "adamw": ("AdamW", {}),
    "adamax": ("Adamax", {}),
    "nadam": ("NAdam", {}),
    "radam": ("RAdam", {}),
    "rmsprop": ("RMSprop", {}),
    "adagrad": ("Adagrad", {}),
    "adadelta": ("Adadelta", {}),
}

Factory = Callable[[Sequence[torch.Tensor]], torch.optim.Optimizer]


def optimizer_factory(spec: Any, model: torch.nn.Module) -> tuple[Factory | None, str]:
    """``(build, label)`` for a ``train_step(optimizer=...)`` value; ``(None, "none")`` for None.

    ``build(twins)`` takes the twins of all the model's parameters, in the order of
    ``model.parameters()``: a name, class or callable gets the trainable ones, an optimizer
    the test built gets its own param groups (frozen parameters in them are kept, and
    skipped by the optimizer as in a real loop: they get no gradient). Raises
    :class:`~...errors.MeasurementError` for a value that is none of the accepted kinds.
    """
    if spec is None:
        return None, "none"
    if isinstance(spec, str):
        if spec.lower() not in OPTIMIZER_NAMES:
            raise MeasurementError(
                f"optimizer={spec!r} is not a known name; use one of {', '.join(OPTIMIZER_NAMES)}, "
                "an optimizer class, or a callable params -> optimizer"
            )
        class_name, settings = OPTIMIZER_NAMES[spec.lower()]
        named = getattr(torch.optim, class_name)
        return _checked(lambda params: named(_trainable(params), **settings), spec), spec.lower()
    if isinstance(spec, torch.optim.Optimizer):
        return _like(spec, model), type(spec).__name__
    if isinstance(spec, type) and issubclass(spec, torch.optim.Optimizer):
        given: Callable[..., torch.optim.Optimizer] = spec
        return _checked(lambda params: given(_trainable(params)), spec.__name__), spec.__name__
    if callable(spec):
        build = spec
        return _checked(
            lambda params: build(_trainable(params)), getattr(spec, "__name__", "callable")
        ), "custom"
    raise MeasurementError(
        f"optimizer={spec!r} ({type(spec).__name__}) is not an optimizer: pass a name "
        f"({', '.join(OPTIMIZER_NAMES)}), an optimizer class, or a callable params -> optimizer"
    )


def _trainable(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [p for p in params if p.requires_grad]


def _checked(build: Callable[..., Any], what: str) -> Factory:
    def checked(params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
        try:
            optimizer = build(list(params))
        except Exception as error:
            raise MeasurementError(
                f"the optimizer {what} could not be built over the model's parameters "
                f"({type(error).__name__}: {error}); pass a callable such as "
                "optimizer=lambda params: torch.optim.SGD(params, lr=0.1)"
            ) from None
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise MeasurementError(
                f"optimizer {what} returned {type(optimizer).__name__}, not a torch.optim.Optimizer"
            )
        return optimizer

    return checked


def _like(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> Factory:
    """A factory that rebuilds ``optimizer``'s class and param groups over the twins."""
    position = {id(p): i for i, p in enumerate(model.parameters())}
    groups: list[tuple[list[int], dict[str, Any]]] = []
    for group in optimizer.param_groups:
        outside = [p for p in group["params"] if id(p) not in position]
        if outside:
            raise MeasurementError(
                f"the {type(optimizer).__name__} passed as optimizer= updates {len(outside)} tensor(s) "
                "that are not parameters of the model; build it over model.parameters()"
            )
        settings = {k: v for k, v in group.items() if k != "params"}
        groups.append(([position[id(p)] for p in group["params"]], settings))

    rebuild: Callable[..., torch.optim.Optimizer] = type(optimizer)

    def build(params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
        return rebuild([{"params": [params[i] for i in ids], **settings} for ids, settings in groups])

    return _checked(build, type(optimizer).__name__)
