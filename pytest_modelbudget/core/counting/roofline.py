"""A roofline estimate of latency from the counted ops: deterministic, so CPU-only CI can gate it.

For a hardware spec (peak FLOP/s per dtype and memory bandwidth), each op takes
``max(FLOPs / peak, bytes / bandwidth)``: it is either compute-bound or memory-bound.
The estimate is the sum over ops. It ignores kernel launch overhead, caches and fusion
(memory traffic is an upper bound), so it is a model of the hardware, not a measurement:
useful to see which modules are memory-bound and to catch changes that move a model
across the roofline, not to predict wall time to the percent.

The presets are the dense (no sparsity) datasheet peaks. float32 uses the plain FP32 rate
(PyTorch does not use TF32 for matmuls by default); float16/bfloat16 the tensor-core rate.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...errors import UnitError, shown

if TYPE_CHECKING:
    from .dispatch import OpRecord


@dataclass(frozen=True)
class HardwareSpec:
    name: str
    peak_flops: Mapping[str, float]  # dtype name -> FLOP/s
    bandwidth: float  # bytes/s

    def peak(self, dtype: str) -> float:
        # Integer and unknown dtypes run at the float32 rate: a conservative default.
        return self.peak_flops.get(dtype) or self.peak_flops["float32"]


PRESETS: Mapping[str, HardwareSpec] = {
    # NVIDIA H100 SXM5 datasheet: FP32 67 TFLOPS, BF16/FP16 tensor 989.4 TFLOPS dense, 3.35 TB/s.
    "h100": HardwareSpec(
        "NVIDIA H100 SXM",
        {"float32": 67e12, "float16": 989.4e12, "bfloat16": 989.4e12, "float64": 34e12},
        3.35e12,
    ),
    # NVIDIA A100 SXM 80GB datasheet: FP32 19.5 TFLOPS, BF16/FP16 tensor 312 TFLOPS dense, 2.039 TB/s.
    "a100": HardwareSpec(
        "NVIDIA A100 SXM 80GB",
        {"float32": 19.5e12, "float16": 312e12, "bfloat16": 312e12, "float64": 9.7e12},
        2.039e12,
    ),
}


def hardware(value: object) -> HardwareSpec:
    """A preset name (``"h100"``, ``"a100"``) or ``{"peak_flops": {...}, "bandwidth": ...}``."""
    if isinstance(value, str) and value.lower() in PRESETS:
        return PRESETS[value.lower()]
    if isinstance(value, Mapping):
        flops, bandwidth = value.get("peak_flops"), value.get("bandwidth")
        if (
            isinstance(flops, Mapping)
            and "float32" in flops
            and all(isinstance(v, (int, float)) and v > 0 for v in flops.values())
            and isinstance(bandwidth, (int, float))
            and bandwidth > 0
        ):
            return HardwareSpec(
                str(value.get("name", "custom")),
                {str(k): float(v) for k, v in flops.items()},
                float(bandwidth),
            )
    raise UnitError(
        f"{shown(value)} is not a hardware preset ({', '.join(sorted(PRESETS))}) or a mapping "
        "{'peak_flops': {'float32': FLOP/s, ...}, 'bandwidth': bytes/s}"
    )


@dataclass(frozen=True)
class RooflineEstimate:
    hardware: str
    total_ms: float
    memory_bound_ms: float  # time spent in memory-bound ops
    by_module: Mapping[str, float] = field(default_factory=dict)  # module path -> ms
    memory_bound_ops: Mapping[str, int] = field(default_factory=dict)  # op name -> calls

    @property
    def memory_bound_share(self) -> float:
        return self.memory_bound_ms / self.total_ms if self.total_ms else 0.0


def estimate(ops: Iterable[OpRecord], spec: HardwareSpec) -> RooflineEstimate:
    """Sum of per-op roofline times for the ops of one counted forward."""
    total = memory_bound = 0.0
    by_module: dict[str, float] = defaultdict(float)
    bound_ops: dict[str, int] = defaultdict(int)
    for op in ops:
        compute_s = 2 * op.macs / spec.peak(op.dtype)
        memory_s = op.memory_traffic / spec.bandwidth
        seconds = max(compute_s, memory_s)
        total += seconds
        by_module[op.module] += seconds * 1e3
        if memory_s > compute_s:
            memory_bound += seconds
            bound_ops[op.op] += 1
    return RooflineEstimate(
        hardware=spec.name,
        total_ms=total * 1e3,
        memory_bound_ms=memory_bound * 1e3,
        by_module=dict(by_module),
        memory_bound_ops=dict(sorted(bound_ops.items(), key=lambda item: -item[1])),
    )
