"""The greedy loop a generation runs -- counted on meta, timed on a device: one loop, two uses.

* A transformers model runs its own ``generate(input_ids, max_new_tokens=N,
  min_new_tokens=N, do_sample=False)``, so the inputs, the attention mask, the position ids,
  the cache (any class the model's generation config asks for) and ``logits_to_keep`` are
  prepared exactly as ``generate`` prepares them; only its decoding loop is replaced
  (``custom_generate``) by :func:`_greedy_loop`: ``generate``'s own ``_prefill``, then
  ``N - 1`` decode steps through ``prepare_inputs_for_generation`` and
  ``_update_model_kwargs_for_generation``, each token the argmax of the last logits (a meta
  tensor on meta: nothing reads a token's value).
* A hand-written decoder runs ``step(model, tokens, positions)`` for the prompt, then once
  per new token (:mod:`.spec`).

What differs between counting and timing is :class:`Hooks`: the counter opens a counting
mode around the prefill and the decode steps; the timer synchronizes the device once per
token. Not run: ``generate``'s logits processors and stopping checks (greedy decoding of a
fixed number of tokens needs neither), and its extra look-ahead forward on CUDA
(transformers' deferred stop check).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from ...errors import MeasurementError
from .spec import GenerationSpec

# One decode step of a step= decoder: (tokens, positions) -> the step's output.
DecodeStep = Callable[[torch.Tensor, torch.Tensor], Any]


class Hooks:
    """What a use of the loop wraps around its phases (nothing, by default)."""

    def prefill(self) -> AbstractContextManager[object]:
        """Around the prompt's forward and the pick of the first token."""
        return nullcontext()

    def decode(self) -> AbstractContextManager[object]:
        """Around every decode step, and the bookkeeping between them."""
        return nullcontext()

    def step(self) -> AbstractContextManager[object]:
        """Around one decode step's forward."""
        return nullcontext()

    def token(self, token: torch.Tensor) -> None:
        """Each new token, once it is picked."""

    def finished(self, cache: Any) -> None:
        """The cache ``generate`` held at the end (transformers only)."""

    def decode_step(self, step: DecodeStep) -> DecodeStep:
        """What runs each decode step of a ``step=`` decoder: the step itself, or the replay
        of its CUDA graph when timing asks (:mod:`.run`)."""
        return step


def generate_greedy(model: Any, prompt: torch.Tensor, spec: GenerationSpec, hooks: Hooks) -> None:
    """``spec.max_new_tokens`` greedy tokens after ``prompt``, through ``generate`` or ``spec.step``."""
    if spec.step is None:
        _through_generate(model, prompt, spec, hooks)
    else:
        _through_step(model, prompt, spec, hooks)


def _through_generate(model: Any, prompt: torch.Tensor, spec: GenerationSpec, hooks: Hooks) -> None:
    def loop(_: Any, ids: torch.Tensor, **rest: Any) -> torch.Tensor:
        return _greedy_loop(model, ids, spec.max_new_tokens, hooks, **rest)

    with warnings.catch_warnings():
        # generate's notes on the model's sampling defaults, which greedy decoding ignores.
        warnings.simplefilter("ignore")
        model.generate(
            prompt,
            max_new_tokens=spec.max_new_tokens,
            min_new_tokens=spec.max_new_tokens,
            do_sample=False,
            custom_generate=loop,
            **spec.generate_kwargs,
        )


def _greedy_loop(
    model: Any,
    input_ids: torch.Tensor,
    new_tokens: int,
    hooks: Hooks,
    *,
    logits_processor: Any = None,
    stopping_criteria: Any = None,
    generation_config: Any = None,
    synced_gpus: bool = False,
    streamer: Any = None,
    **model_kwargs: Any,
) -> torch.Tensor:
    """``generate``'s greedy ``_sample`` loop for exactly ``new_tokens`` tokens."""
    encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
    with hooks.prefill():
        outputs = model._prefill(input_ids, generation_config, model_kwargs, is_first_iteration=True)
        token = outputs.logits[:, -1].argmax(-1)[:, None]
    hooks.token(token)
    with hooks.decode():
        model_kwargs = model._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=encoder_decoder
        )
        input_ids = torch.cat([input_ids, token], dim=-1)
        for _ in range(new_tokens - 1):
            with hooks.step():
                inputs = model.prepare_inputs_for_generation(
                    input_ids, next_sequence_length=1, **model_kwargs
                )
                outputs = model(**inputs, return_dict=True)
            model_kwargs = model._update_model_kwargs_for_generation(
                outputs, model_kwargs, is_encoder_decoder=encoder_decoder
            )
            token = outputs.logits[:, -1].argmax(-1)[:, None]
            hooks.token(token)
            input_ids = torch.cat([input_ids, token], dim=-1)
    hooks.finished(model_kwargs.get("cache", model_kwargs.get("past_key_values")))
    return input_ids


def _through_step(model: Any, prompt: torch.Tensor, spec: GenerationSpec, hooks: Hooks) -> None:
    """The prompt, then ``max_new_tokens - 1`` tokens, through the user's ``step``."""
    assert spec.step is not None
    length = int(prompt.shape[1])
    device = prompt.device
    step = spec.step
    decode_step = hooks.decode_step(lambda tokens, positions: step(model, tokens, positions))
    with hooks.prefill():
        logits = logits_of(spec.step(model, prompt, torch.arange(length, device=device)))
        token = logits[:, -1].argmax(-1, keepdim=True)
    hooks.token(token)
    with hooks.decode():
        for i in range(spec.max_new_tokens - 1):
            with hooks.step():
                logits = logits_of(decode_step(token, torch.tensor([length + i], device=device)))
            token = logits[:, -1].argmax(-1, keepdim=True)
            hooks.token(token)


def logits_of(output: Any) -> torch.Tensor:
    """A step's logits: the tensor it returned, or its output's ``.logits``."""
    logits = getattr(output, "logits", output)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 3:
        raise MeasurementError(
            f"step() returned {type(output).__name__}, not logits of shape (batch, tokens, vocabulary): "
            "return the model's logits (or an output with .logits)"
        )
    return logits
