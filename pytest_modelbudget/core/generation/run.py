"""A generation run on a device, for timing: what :func:`~..timing.timer.time_forward` repeats.

Timed is the greedy loop of :mod:`.loop` -- the one the count runs -- in inference mode,
with one synchronization per token on CUDA, as a caller that streams tokens waits for each.
Two figures are timed: the first token (``new_tokens=1``: the prompt's forward and the first
token, the time to first token) and the whole generation; the decode rate is the tokens
after the first over the time the generation takes beyond its first token.

With ``cuda_graph`` (a ``step=`` decoder over a static cache), one decode step is captured
as a CUDA graph on fixed token and position tensors when timing starts, and every decode
step copies its token and position in and replays it: the decode without the host's kernel
launches, as gpt-fast and vLLM run it. The prompt's forward stays eager.

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

from ...errors import MeasurementError
from ..model_state import inputs_left_as_they_were
from .loop import DecodeStep, Hooks, generate_greedy, logits_of
from .spec import GenerationSpec

# Keywords of generate() that hold a cache the generation grows: copied for every run.
_CACHES = ("past_key_values", "cache")


class _Synchronized(Hooks):
    """One synchronization per token on CUDA: the token is on the host's side when it returns."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def token(self, token: torch.Tensor) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


class _GraphedDecode(_Synchronized):
    """Each decode step the replay of one CUDA graph of the step, captured once on fixed
    ``tokens`` and ``positions`` tensors that every step copies its own into."""

    def __init__(self, model: Any, spec: GenerationSpec, batch: int, device: torch.device) -> None:
        super().__init__(device)
        assert spec.step is not None
        step = spec.step
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.positions = torch.zeros(1, dtype=torch.long, device=device)
        # Warm-up and capture run the step at position 0 of the cache; every generation's
        # prompt overwrites it, and exclusive_use puts the buffers back after timing.
        self.replay, self.logits = capture_decode_step(
            lambda: logits_of(step(model, self.tokens, self.positions)), device
        )

    def decode_step(self, step: DecodeStep) -> DecodeStep:
        def replayed(tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            self.tokens.copy_(tokens)
            self.positions.copy_(positions)
            self.replay()
            return self.logits

        return replayed


def capture_decode_step(
    step: Callable[[], torch.Tensor], device: torch.device
) -> tuple[Callable[[], object], torch.Tensor]:
    """(replay, the logits tensor each replay writes): ``step`` captured as a CUDA graph
    after a warm-up on a side stream, as capture requires."""
    if device.type != "cuda":
        raise MeasurementError(
            f"cuda_graph= replays a generation's decode steps as CUDA graphs, which needs a CUDA "
            f"device, but the generation runs on {device}: drop cuda_graph=, or time it on cuda"
        )
    stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            logits = step()
    except Exception as error:
        raise MeasurementError(
            f"the decode step cannot be captured as a CUDA graph ({type(error).__name__}: {error}); "
            "drop cuda_graph=, or make the step capturable: a static KV cache written at the "
            "positions tensor, no .item() or other host synchronisation, no new CPU tensors"
        ) from error
    return graph.replay, logits


@contextmanager
def repeated_generation(
    model: Any, prompt: torch.Tensor, spec: GenerationSpec, new_tokens: int, device: torch.device
) -> Iterator[Callable[[], object]]:
    """A greedy generation of ``new_tokens`` tokens on ``device``, to repeat (a
    :data:`~..devices.Repeat` once the spec and token count are bound)."""
    prompt = prompt.to(device)
    kwargs = tree_map_only(torch.Tensor, lambda t: t.to(device), dict(spec.generate_kwargs))
    caches = {name: kwargs.pop(name) for name in _CACHES if kwargs.get(name) is not None}
    config = getattr(model, "generation_config", None)
    with (
        inputs_left_as_they_were((spec.generate_kwargs, config), restore_values=True),
        torch.inference_mode(),
        _quiet_transformers(),
    ):
        hooks: Hooks
        if spec.cuda_graph and new_tokens > 1:  # the first token alone has no decode step
            hooks = _GraphedDecode(model, spec, int(prompt.shape[0]), device)
        else:
            hooks = _Synchronized(device)

        def generation() -> None:
            # A cache passed in is the state the test's generation starts from: each run gets its own.
            fresh = {name: copy.deepcopy(cache) for name, cache in caches.items()}
            generate_greedy(
                model,
                prompt,
                replace(spec, max_new_tokens=new_tokens, generate_kwargs={**kwargs, **fresh}),
                hooks,
            )

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
