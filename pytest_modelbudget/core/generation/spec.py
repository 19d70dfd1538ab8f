"""A generation: what ``model_budget.generate(model, input_ids, max_new_tokens=...)`` asks, checked.

Two routes, one loop: a model with transformers' ``generate`` (``GenerationMixin``, any cache
class it uses) is driven through ``generate`` itself, so its inputs are prepared exactly as
``generate`` prepares them; a hand-written decoder (a gpt-fast-style model with a static KV
cache in its buffers, say) gives a ``step`` callable instead:

    step(model, tokens, positions) -> logits

``tokens`` is ``(batch, new tokens)`` (the prompt, then one token at a time), ``positions``
the positions they take (``arange(prompt)``, then ``[prompt + i]``); the logits' last
position picks the next token, greedily.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import MeasurementError

Step = Callable[[Any, torch.Tensor, torch.Tensor], Any]


@dataclass(frozen=True)
class GenerationSpec:
    """A greedy generation of ``max_new_tokens`` tokens after a prompt."""

    max_new_tokens: int
    step: Step | None = None  # for a model without transformers' generate
    generate_kwargs: Mapping[str, Any] = field(default_factory=dict)  # passed on to generate()
    # Time each decode step as a CUDA-graph replay (the budget's cuda_graph=; step= only: a
    # static cache and a step on fixed tensors are what a graph can replay). Counting ignores it.
    cuda_graph: bool = False


# generate() keywords a greedy generation of exactly max_new_tokens tokens decides itself.
_DECIDED = {
    "min_new_tokens": "it makes exactly max_new_tokens tokens",
    "max_length": "it makes exactly max_new_tokens tokens",
    "min_length": "it makes exactly max_new_tokens tokens",
    "do_sample": "it is greedy",
    "num_beams": "it is greedy, one beam",
    "custom_generate": "it runs its own greedy loop",
    "assistant_model": "it is not speculative",
    "streamer": "it streams nothing",
}

# Keywords of generate(), not of a forward: on a plain forward call they are a mistake.
GENERATION_KEYWORDS = frozenset(
    {*_DECIDED, "max_new_tokens", "generation_config", "temperature", "top_k", "top_p", "stopping_criteria"}
)


def can_generate(model: Any) -> bool:
    """Whether the model has transformers' generate loop (GenerationMixin)."""
    return callable(getattr(model, "generate", None)) and callable(
        getattr(model, "prepare_inputs_for_generation", None)
    )


def checked(model: Any, input_ids: Any, spec: GenerationSpec) -> torch.Tensor:
    """The prompt as a ``(batch, tokens)`` tensor of token ids; MeasurementError for what cannot
    generate: no generate loop and no step, fewer than one new token, a prompt that is not ids."""
    if (
        not isinstance(spec.max_new_tokens, int)
        or isinstance(spec.max_new_tokens, bool)
        or spec.max_new_tokens < 1
    ):
        raise MeasurementError(
            f"max_new_tokens={spec.max_new_tokens!r}: a generation makes at least one new token"
        )
    if spec.step is None and not can_generate(model):
        raise MeasurementError(
            f"{type(model).__name__} has no generate() (transformers' GenerationMixin): pass "
            "step=lambda model, tokens, positions: model(tokens, positions) -- the call that runs "
            "one step of your decoder and returns its logits (docs/generation.md)"
        )
    if spec.step is not None and not callable(spec.step):
        raise MeasurementError(
            f"step= must be a callable (model, tokens, positions) -> logits, got {spec.step!r}"
        )
    if spec.step is not None and spec.generate_kwargs:
        raise MeasurementError(
            f"{', '.join(sorted(spec.generate_kwargs))}: a generation through step= takes no other "
            "keywords -- the step is called as step(model, tokens, positions); bind what else it "
            "needs in the callable"
        )
    decided = sorted(set(spec.generate_kwargs) & set(_DECIDED))
    if decided:
        raise MeasurementError(
            f"{decided[0]}= is decided by the generation ({_DECIDED[decided[0]]}): drop it; "
            "docs/generation.md says what is counted and timed"
        )
    if not isinstance(input_ids, torch.Tensor) or input_ids.is_floating_point() or input_ids.is_complex():
        what = (
            f"a {str(input_ids.dtype).removeprefix('torch.')} tensor"
            if isinstance(input_ids, torch.Tensor)
            else type(input_ids).__name__
        )
        raise MeasurementError(
            f"the prompt is {what}, not token ids: pass an integer tensor of shape (batch, tokens), "
            "e.g. tokenizer(text, return_tensors='pt').input_ids"
        )
    if input_ids.is_meta:
        raise MeasurementError(
            "the prompt is on the meta device: pass real token ids (a CPU tensor will do); the "
            "model itself may stay on meta"
        )
    prompt: torch.Tensor = input_ids.unsqueeze(0) if input_ids.dim() == 1 else input_ids
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise MeasurementError(f"the prompt has shape {tuple(prompt.shape)}; expected (batch, tokens)")
    return prompt
