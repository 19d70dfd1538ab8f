"""What the profile command found, as values: a :class:`Profile` and the limits it suggests.

The command (:mod:`pytest_modelbudget.cli.profile`) builds and counts a model into a
:class:`Profile`; the report layer (:mod:`pytest_modelbudget.report.profile`) renders it.
The suggested limits are budget arithmetic: the measured value plus headroom, rounded *up*
to a short number that the plugin parses back to at least that much.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import TYPE_CHECKING

from ..calls.common import FLOAT_DTYPES, float_macs
from .budget import METRICS_BY_NAME, parse_budget

if TYPE_CHECKING:
    from ..core.compiling import CompileStats
    from ..core.counting.count import Counts
    from ..core.counting.roofline import RooflineEstimate
    from ..core.generation.count import GenerationCounts
    from ..core.training.count import TrainCounts

# The metrics a suggested marker limits: the deterministic ones that budgets.yaml also
# ratchets. Memory traffic depends on how PyTorch decomposes ops, so it is left out.
SUGGESTED_METRICS = ("macs", "params", "size")


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
    backward_macs: int = 0  # with --train


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
    compile_backend: str | None = None  # with --compile: the torch.compile backend
    compiled: CompileStats | None = None  # with --compile: what compiling the model recorded
    train: TrainCounts | None = None  # with --train: one training step (counts is its forward)
    generation: GenerationCounts | None = None  # with --generate (counts is its prefill)

    def roofline_ms(self, path: str) -> float:
        """Roofline time of a module and its children ("" is the model's own ops)."""
        assert self.roofline is not None
        if not path:
            return self.roofline.by_module.get("", 0.0)
        return sum(ms for p, ms in self.roofline.by_module.items() if p == path or p.startswith(path + "."))

    @property
    def suggested(self) -> dict[str, str]:
        return suggest_limits(self.counts, self.headroom, self.train, self.generation)


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


def suggest_limits(
    counts: Counts,
    headroom: float,
    train: TrainCounts | None = None,
    generation: GenerationCounts | None = None,
) -> dict[str, str]:
    """Marker keyword -> limit with ``headroom`` above the measured value (zero values skipped);
    a training step's train MACs and memory first; a generation's prefill and decode MACs and
    KV cache instead of one pass's MACs."""
    measured = {"macs": counts.macs, "params": counts.params, "size": counts.size_bytes}
    names: tuple[str, ...] = SUGGESTED_METRICS
    if train is not None:
        measured.update(train_macs=train.macs, train_memory=train.memory)
        names = ("train_macs", "train_memory", *SUGGESTED_METRICS)
    if generation is not None:
        measured.update(
            prefill_macs=generation.prefill.macs,
            decode_macs=generation.decode.macs,
            kv_cache=generation.kv_cache,
        )
        names = ("prefill_macs", "decode_macs", "kv_cache", "params", "size")
    limits = {}
    for name in names:
        if measured[name] > 0:
            metric = METRICS_BY_NAME[name]
            limits[metric.keyword] = round_up_si(measured[name] * (1.0 + headroom), metric.unit)
    # A mixture of experts: its active parameters per token too (more experts per token).
    if counts.active_params is not None and counts.active_params != counts.params:
        active = METRICS_BY_NAME["active_params"]
        limits[active.keyword] = round_up_si(counts.active_params * (1.0 + headroom), active.unit)
    # A quantized (or float8) model: keep its MACs out of float, at its float share now.
    if set(counts.macs_by_dtype) - FLOAT_DTYPES and generation is None:
        in_float = float_macs(counts.macs_by_dtype)
        keyword = METRICS_BY_NAME["float_macs"].keyword
        limits[keyword] = round_up_si(in_float * (1.0 + headroom), "count") if in_float else "0"
    parse_budget(limits)  # the line must be valid for the plugin, whatever the numbers
    return limits
