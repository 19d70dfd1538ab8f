"""A generation, ``model_budget.generate(model, input_ids, max_new_tokens=...)``: prefill, decode, KV cache.

Counted on meta twins by a greedy loop (:func:`~..core.generation.count.count_generation`:
the prompt's forward as ``generate`` runs it, then ``max_new_tokens - 1`` decode steps, the
cache growing on meta); timed as two figures (:mod:`~..core.generation.run`): the first
token, and the whole generation, each under its own fingerprint. The decode rate is the
tokens after the first over the time the generation takes beyond its first token --
optimum-benchmark's decode latency, ``generate(N) - generate(1)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import MeasurementError
from .kind import CallKind, Measured, Timed
from .metric import Metric, Readings, timed_statistic

if TYPE_CHECKING:
    from ..core.counting.count import Counts
    from ..core.generation.count import GenerationCounts
    from ..core.generation.spec import GenerationSpec


def _decode_rate(readings: Readings) -> float | None:
    # Tokens after the first, over the generation's time beyond its first token.
    generation = timed_statistic(readings, "generation")
    first = timed_statistic(readings, "ttft")
    if generation is None or first is None:
        return None
    counts: GenerationCounts = readings.figures
    tokens = counts.batch * (counts.new_tokens - 1)
    decode_ms = generation - first
    return tokens * 1e3 / decode_ms if decode_ms > 0 else float("inf")


ROWS: tuple[Metric, ...] = (
    Metric(
        "prefill_macs",
        "max_prefill_macs",
        "count",
        "MACs of the prompt's forward, as generate runs it (logits only where it asks for them)",
        read=lambda r: r.figures.prefill.macs,
        ratcheted=True,
        call="generate",
        label="prefill MACs",
        module_figure="macs",
    ),
    Metric(
        "decode_macs",
        "max_decode_macs",
        "count",
        "MACs of every decode step after the first token, summed",
        read=lambda r: r.figures.decode.macs,
        ratcheted=True,
        call="generate",
        label="decode MACs",
        module_figure="decode_macs",
    ),
    Metric(
        "kv_cache",
        "max_kv_cache",
        "bytes",
        "bytes the KV cache holds at the end of the generation (a sliding window as the cache bounds it)",
        read=lambda r: r.figures.kv_cache,
        ratcheted=True,
        call="generate",
        label="KV cache",
    ),
    Metric(
        "ttft_ms",
        "max_ttft_ms",
        "ms",
        "time to first token: the prompt's forward and the first token (median, or p90)",
        read=lambda r: timed_statistic(r, "ttft"),
        timed=True,
        call="generate",
        label="TTFT",
        timed_by="ttft",
    ),
    Metric(
        "generation_ms",
        "max_generation_ms",
        "ms",
        "time of the whole generation, first token included (median, or p90)",
        read=lambda r: timed_statistic(r, "generation"),
        timed=True,
        call="generate",
        label="generation",
        timed_by="generation",
    ),
    Metric(
        "decode_tokens_per_s",
        "min_decode_tokens_per_s",
        "rate",
        "tokens after the first per second, over the batch: batch x (new tokens - 1) / (generation - TTFT)",
        read=_decode_rate,
        timed=True,
        higher_is_better=True,
        call="generate",
        label="decode tokens/s",
        timed_by="generation",
    ),
)


class Generate(CallKind):
    """A greedy generation of ``max_new_tokens`` tokens after a prompt."""

    name = "generate"
    noun = "generation"
    described = "a generation"
    remedy = "measure the generation with model_budget.generate(model, input_ids, max_new_tokens=...)"
    alternatives = "limit max_prefill_macs, max_decode_macs or max_kv_cache"
    rows: ClassVar[tuple[Metric, ...]] = ROWS
    measures = frozenset({"any", "generate"})
    refused: ClassVar[Mapping[str, str]] = {
        "autocast": "a generation runs in the model's own dtype: drop autocast= and cast the model "
        "(model.to(torch.bfloat16))",
        "compile": "a generation is counted and timed eagerly: drop compile= from the budget "
        "(compiled generation is not measured yet)",
    }
    untimed: ClassVar[Mapping[str, str]] = {
        "generation": "a generation of one new token has no decode to time: make max_new_tokens 2 or more",
    }
    graphs_whole_call = False  # cuda_graph= replays each decode step (fitted), not the loop
    mode = "generate"

    def __init__(self, spec: GenerationSpec) -> None:
        self.spec = spec

    def fitted(self, options: Mapping[str, Any]) -> Generate:
        """With the budget's ``cuda_graph=True``: each decode step timed as a CUDA-graph replay,
        for a ``step=`` decoder (the run-wide ``--budget-cuda-graphs`` leaves generations eager)."""
        if not options.get("cuda_graph"):
            return self
        if self.spec.step is None:
            raise MeasurementError(
                "cuda_graph= on a generation replays its decode step as a CUDA graph, which needs "
                "a static KV cache and a step= that runs one step on fixed tensors: transformers' "
                "generate prepares new tensors at every step. Give step= over a static cache "
                "(docs/generation.md), or drop cuda_graph="
            )
        return Generate(replace(self.spec, cuda_graph=True))

    @contextmanager
    def measure(
        self,
        model: Any,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        device: str | None,
        autocast: bool | str,
    ) -> Iterator[Measured]:
        from ..core.devices import Repeated
        from ..core.generation.count import count_generation
        from ..core.generation.run import repeated_generation
        from ..core.generation.spec import checked

        (prompt,) = args
        prompt = checked(model, prompt, self.spec)  # (batch, tokens): what timing repeats
        counted = count_generation(model, prompt, self.spec)

        def timed(new_tokens: int) -> Repeated:
            return Repeated(model, partial(repeated_generation, model, prompt, self.spec, new_tokens))

        figures = [Timed("ttft", timed(1), "ttft_ms", f"{self.mode} ttft")]
        if self.spec.max_new_tokens > 1:  # one new token is its first: there is no decode to time
            tokens = counted.batch * (self.spec.max_new_tokens - 1)
            mode = f"{self.mode} cuda-graph" if self.spec.cuda_graph else self.mode
            whole = timed(self.spec.max_new_tokens)
            figures.append(Timed("generation", whole, "generation_ms", mode, tokens, "ttft"))
        yield Measured(
            _whole(counted),
            figures=counted,
            module_figures={"decode_macs": {p: s.macs for p, s in counted.decode.modules.items() if s.macs}},
            timed=tuple(figures),
            details={
                "batch": counted.batch,
                "prompt_tokens": counted.prompt_tokens,
                "new_tokens": counted.new_tokens,
                "last_step_macs": counted.last_step_macs,
                "last_context": counted.last_context,
                "kv_cache_by_dtype": dict(counted.kv_cache_by_dtype),
            },
        )


def _whole(counted: GenerationCounts) -> Counts:
    """The counts a generation's result carries: the prefill's (its per-module MACs are the
    prefill's, beside ``decode_macs``), with the ops neither phase could count."""
    uncounted = dict(counted.prefill.uncounted)
    for op, n in counted.decode.uncounted.items():
        uncounted[op] = uncounted.get(op, 0) + n
    return replace(
        counted.prefill, uncounted=dict(sorted(uncounted.items())), meta_refused=counted.meta_refused
    )
