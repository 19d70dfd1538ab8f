"""The profile command's output: a :class:`~pytest_modelbudget.budgets.profile.Profile` as lines or JSON.

Lines of text and a JSON-able object, nothing else; :mod:`pytest_modelbudget.__main__` writes them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..budgets.baselines import ROOT_MODULE
from ..calls.common import beyond_float32
from ..units import format_bytes, format_count, format_duration, format_seconds
from .text_table import text_table
from .words import dtype_breakdown, graph_break_lines

if TYPE_CHECKING:
    from ..budgets.profile import Profile
    from ..core.compiling import CompileStats
    from ..core.generation.count import GenerationCounts
    from ..core.training.count import TrainCounts


def marker_line(limits: Mapping[str, str]) -> str:
    arguments = ", ".join(f'{keyword}="{value}"' for keyword, value in limits.items())
    return f"@pytest.mark.model_budget({arguments})"


def render_lines(profile: Profile) -> Iterator[str]:
    """The human-readable profile: header, module table, totals, uncounted ops, marker, compile figures."""
    counts = profile.counts
    inputs = ", ".join(str(spec) for spec in profile.inputs)
    train, generation = profile.train, profile.generation
    mode = f"one training step (optimizer {train.optimizer})" if train else "eval mode"
    if generation is not None:
        mode = f"a greedy generation of {generation.new_tokens} new token(s), prefill below"
    yield f"{profile.target}, inputs {inputs}, {mode}, counted on {counts.executed_on}"
    if counts.meta_refused:
        yield f"  (not on meta: {counts.meta_refused})"
    for note in profile.notes:
        yield f"note: {note}"
    yield ""
    yield from _module_table(profile)
    yield ""
    yield from _totals(profile)
    yield ""
    if train is not None:
        yield from _train_section(train)
        yield ""
    if generation is not None:
        yield from _generation_section(generation)
        yield ""
    uncounted = (
        train.uncounted if train else _generation_uncounted(generation) if generation else counts.uncounted
    )
    if uncounted:
        ops = ", ".join(f"{op} x{n}" for op, n in uncounted.items())
        yield f"uncounted ops (arithmetic with no MAC formula, not in the MACs above): {ops}"
    else:
        yield "uncounted ops: none"
    yield ""
    limits = profile.suggested
    if limits:
        yield f"suggested budget ({profile.headroom:.0%} headroom):"
        yield marker_line(limits)
        if train is not None:
            optimizer = "" if train.optimizer == "none" else f', optimizer="{train.optimizer}"'
            call = f"model_budget.train_step(model, *inputs, target=..., loss=...{optimizer})"
            yield f"for a test calling {call}"
        if generation is not None:
            new_tokens = generation.new_tokens
            yield f"for a test calling model_budget.generate(model, input_ids, max_new_tokens={new_tokens})"
    else:
        yield "suggested budget: none (the model has no MACs, params or size to limit)"
    if profile.compiled is not None:
        yield ""
        yield from _compile_section(profile.compiled, profile.compile_backend)


def _generation_section(generation: GenerationCounts) -> Iterator[str]:
    """``--generate``: the prefill, the decode steps, the last of them, the KV cache by dtype."""
    rows = [
        ("prompt", f"{generation.batch} x {generation.prompt_tokens} tokens"),
        ("prefill MACs", f"{format_count(generation.prefill.macs)} ({generation.prefill.macs:,})"),
        (
            "decode MACs",
            f"{format_count(generation.decode.macs)} ({generation.decode.macs:,}, "
            f"{generation.new_tokens - 1} step(s) after the first token)",
        ),
        (
            "last step",
            f"{format_count(generation.last_step_macs)} MACs at context {generation.last_context}",
        ),
        ("KV cache", f"{format_bytes(generation.kv_cache)} ({generation.kv_cache:,} bytes)"),
        *((f"  {dtype}", format_bytes(n)) for dtype, n in generation.kv_cache_by_dtype.items()),
    ]
    yield f"generation ({generation.new_tokens} new token(s), greedy; counted on {generation.executed_on})"
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        yield f"  {name.ljust(width)}  {value}"


def _generation_uncounted(generation: GenerationCounts) -> dict[str, int]:
    total = dict(generation.prefill.uncounted)
    for op, n in generation.decode.uncounted.items():
        total[op] = total.get(op, 0) + n
    return dict(sorted(total.items()))


def _train_section(train: TrainCounts) -> Iterator[str]:
    """``--train``: the step's MACs by phase and its estimated peak memory by kind."""
    figures = [
        ("train MACs", f"{format_count(train.macs)} ({train.macs:,})"),
        ("  forward", format_count(train.forward.macs)),
        ("  loss", format_count(train.loss_macs)),
        ("  backward", format_count(train.backward_macs)),
        ("train FLOPs", format_count(train.flops)),
        ("train memory", f"{format_bytes(train.memory)} ({train.memory:,} bytes, estimated peak)"),
        *((f"  {kind.replace('_', ' ')}", format_bytes(n)) for kind, n in train.memory_by_kind.items()),
        ("optimizer traffic", format_bytes(train.optimizer_traffic)),
    ]
    width = max(len(name) for name, _ in figures)
    yield f"training step (optimizer {train.optimizer}; loss: the sum of the output's float tensors)"
    for name, value in figures:
        yield f"  {name:<{width}}  {value}"


def _compile_section(compiled: CompileStats, backend: str | None) -> Iterator[str]:
    """``--compile``: the figures a compiled budget limits, then where each break is and why."""
    kernels = "-  (inductor only)" if compiled.kernels is None else str(compiled.kernels)
    figures = [
        ("graphs", str(compiled.graphs)),
        ("graph breaks", str(len(compiled.graph_breaks))),
        ("recompiles", str(len(compiled.recompiles))),
        ("kernels", kernels),
        ("compile time", format_seconds(compiled.compile_s)),
    ]
    width = max(len(name) for name, _ in figures)
    yield f"compiled (torch.compile, backend {backend}; the counts above are the eager model's)"
    for name, value in figures:
        yield f"  {name:<{width}}  {value}"
    yield from graph_break_lines(compiled.graph_breaks)
    for recompile in compiled.recompiles:
        yield (
            f"  recompile of {recompile.function} ({recompile.filename}:{recompile.lineno}): "
            f"guard failed: {recompile.guard}"
        )


def _module_table(profile: Profile) -> Iterator[str]:
    counts = profile.counts
    roofline = profile.roofline
    headers = (
        "module",
        "type",
        "params",
        "MACs",
        "% MACs",
        *(("backward MACs",) if profile.train else ()),
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
            *((format_count(row.backward_macs),) if profile.train else ()),
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
        *((format_count(profile.train.backward_macs),) if profile.train else ()),
        format_bytes(counts.memory_traffic),
        *((format_duration(roofline.total_ms),) if roofline else ()),
    )
    right_aligned = range(2, len(headers))  # every number column
    yield from text_table(headers, rows, right_aligned=right_aligned, total=total, rules=True)


def _totals(profile: Profile) -> Iterator[str]:
    counts = profile.counts
    roofline = profile.roofline
    size_detail = ", ".join(f"{dtype} {format_bytes(n)}" for dtype, n in counts.size_by_dtype.items())
    totals = [
        ("MACs", f"{format_count(counts.macs)} ({counts.macs:,})"),
        *(
            [("MACs by dtype", dtype_breakdown(counts.macs_by_dtype))]
            if beyond_float32(counts.macs_by_dtype)
            else []
        ),
        ("FLOPs", f"{format_count(counts.flops)} ({counts.flops:,})"),
        ("params", f"{format_count(counts.params)} ({counts.params:,})"),
        *(
            [("active params", f"{_active(counts.active_params)} per token (mixture of experts)")]
            if counts.active_params != counts.params
            else []
        ),
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


def to_json(profile: Profile) -> dict[str, Any]:
    """The profile as a JSON-able object (``--json``)."""
    counts = profile.counts
    limits = profile.suggested
    return {
        "target": profile.target,
        "inputs": [{"shape": list(spec.shape), "dtype": spec.dtype} for spec in profile.inputs],
        "device": profile.device,
        "executed_on": counts.executed_on,
        "meta_refused": counts.meta_refused,
        "active_params": counts.active_params,
        "convention": counts.convention,
        "depth": profile.depth,
        "totals": {
            "macs": counts.macs,
            "macs_by_dtype": dict(counts.macs_by_dtype),
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
                **({"backward_macs": row.backward_macs} if profile.train else {}),
            }
            for row in profile.rows
        ],
        "uncounted": dict(profile.train.uncounted if profile.train else counts.uncounted),
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
        "compiled": (
            {"backend": profile.compile_backend, **profile.compiled.to_dict()} if profile.compiled else None
        ),
        "train": _train_json(profile.train) if profile.train else None,
        "generation": _generation_json(profile.generation) if profile.generation else None,
    }


def _generation_json(generation: GenerationCounts) -> dict[str, Any]:
    return {
        "batch": generation.batch,
        "prompt_tokens": generation.prompt_tokens,
        "new_tokens": generation.new_tokens,
        "prefill_macs": generation.prefill.macs,
        "decode_macs": generation.decode.macs,
        "step_macs": list(generation.step_macs),
        "last_context": generation.last_context,
        "kv_cache": generation.kv_cache,
        "kv_cache_by_dtype": dict(generation.kv_cache_by_dtype),
        "executed_on": generation.executed_on,
    }


def _train_json(train: TrainCounts) -> dict[str, Any]:
    return {
        "optimizer": train.optimizer,
        "train_macs": train.macs,
        "forward_macs": train.forward.macs,
        "loss_macs": train.loss_macs,
        "backward_macs": train.backward_macs,
        "train_flops": train.flops,
        "train_memory": train.memory,
        "memory_by_kind": dict(train.memory_by_kind),
        "optimizer_traffic": train.optimizer_traffic,
        "executed_on": train.executed_on,
    }


def _active(active: int | None) -> str:
    return (
        "unknown (an expert bank without a router the counter can see)"
        if active is None
        else (f"{format_count(active)} ({active:,})")
    )


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def _paren(detail: str) -> str:
    return f": {detail})" if detail else ")"
