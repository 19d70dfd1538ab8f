"""A generation run on a device, for timing: what :func:`~..timing.timer.time_forward` repeats.

Timed is the greedy loop of :mod:`.loop` -- the one the count runs -- in inference mode,
with one synchronization per token on CUDA, as a caller that streams tokens waits for each.
Two figures are timed: the first token (``new_tokens=1``: the prompt's forward and the first
token, the time to first token) and the whole generation; the decode rate is the tokens
after the first over the time the generation takes beyond its first token.

Each repetition starts where the test's generation would: a cache passed in is copied for
every run (the copy is inside the timed call), a static cache in buffers is overwritten from
position 0, and the model, its buffers and the RNG states are put back by
:func:`~..devices.exclusive_use` afterwards.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
from torch.utils._pytree import tree_map_only

from ..model_state import inputs_left_as_they_were
from .loop import Hooks, generate_greedy
from .spec import GenerationSpec

# Keywords of generate() that hold a cache the generation grows: copied for every run.
_CACHES = ("past_key_values", "cache")


class _Synchronized(Hooks):
    """One synchronization per token on CUDA: the token is on the host's side when it returns."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def token(self, token: torch.Tensor) -> None:
        torch.cuda.synchronize(self.device)


@contextmanager
def repeated_generation(
    model: Any, prompt: torch.Tensor, spec: GenerationSpec, new_tokens: int, device: torch.device
) -> Iterator[Callable[[], object]]:
    """A greedy generation of ``new_tokens`` tokens on ``device``, to repeat (a
    :data:`~..devices.Repeat` once the spec and token count are bound)."""
    prompt = prompt.to(device)
    kwargs = tree_map_only(torch.Tensor, lambda t: t.to(device), dict(spec.generate_kwargs))
    caches = {name: kwargs.pop(name) for name in _CACHES if kwargs.get(name) is not None}
    hooks = _Synchronized(device) if device.type == "cuda" else Hooks()

    def generation() -> None:
        # A cache passed in is the state the test's generation starts from: each run gets its own.
        fresh = {name: copy.deepcopy(cache) for name, cache in caches.items()}
        generate_greedy(
            model,
            prompt,
            replace(spec, max_new_tokens=new_tokens, generate_kwargs={**kwargs, **fresh}),
            hooks,
        )

    config = getattr(model, "generation_config", None)
    with (
        inputs_left_as_they_were((spec.generate_kwargs, config), restore_values=True),
        torch.inference_mode(),
        _quiet_transformers(),
    ):
        yield generation


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' notes about the inputs (no attention mask, ...): the count showed them
    once; repeated a thousand times while timing they would bury the test's output."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def generate_once(model: Any, prompt: torch.Tensor, spec: GenerationSpec) -> None:
    """One real greedy generation where the model is, leaving it as it was: what the fixture
    runs without ``--model-budget``, so the test still exercises the model."""
    from ..model_state import Inventory, model_left_as_it_was

    config = getattr(model, "generation_config", None)
    with (
        model_left_as_it_was(Inventory.of(model), restore_values=True),
        inputs_left_as_they_were((spec.generate_kwargs, config), restore_values=True),
        torch.inference_mode(),
    ):
        generate_greedy(model, prompt, spec, Hooks())
