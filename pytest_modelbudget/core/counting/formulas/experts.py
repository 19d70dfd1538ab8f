"""MACs of mixture-of-experts kernels: each routed row through its expert's matrix.

A grouped matmul multiplies groups of rows of ``mat_a`` by one matrix each of ``mat_b``
(the experts' weights): as many MACs as a dense matmul of all the rows by one expert, since
every row goes through exactly one expert. Under top-k routing that total does not depend on
which experts were chosen, so it counts exactly on meta tensors.

* ``aten._grouped_mm`` and its scaled (float8) variants, by layout of ``mat_a`` x ``mat_b``:
  2D x 3D ``(rows, K) x (experts, K, N)`` -> ``rows * K * N`` (the MoE forward); 3D x 3D
  ``(G, M, K) x (G, K, N)`` -> ``G * M * K * N``; 2D x 2D, groups along K (a weight
  gradient) -> ``M * K * N``; 3D x 2D, groups along N -> ``M * K * N``. Every row of
  ``mat_a`` counts: rows past ``offs[-1]`` (expert-parallel sentinels) would be counted
  though the kernel skips them, as a meta count cannot read ``offs``.
* transformers' fallback op for CPU float32 and its backward, ``transformers::grouped_mm_fallback``
  (a loop of ``mm`` over the experts) and ``..._backward`` (the input and weight gradients).
* The batched form (``weights[expert_ids]`` gathered, then ``bmm``) and the eager loop
  (``linear`` on each expert's rows) need nothing here: they are matmuls.
"""

from __future__ import annotations

from typing import Any

import torch

from .registry import _register

aten = torch.ops.aten


def grouped_mm_macs(a: torch.Tensor, b: torch.Tensor) -> int:
    """MACs of a grouped matmul of ``a`` by ``b``, whatever the layout (see the module docstring)."""
    if a.dim() == 2 and b.dim() == 3:
        return int(a.shape[0]) * int(a.shape[1]) * int(b.shape[2])
    if a.dim() == 3 and b.dim() == 3:
        return int(a.shape[0]) * int(a.shape[1]) * int(a.shape[2]) * int(b.shape[2])
    if a.dim() == 2 and b.dim() == 2:  # out (groups, M, N): each group contracts its slice of K
        return int(a.shape[0]) * int(a.shape[1]) * int(b.shape[1])
    return int(a.shape[1]) * int(a.shape[2]) * int(b.shape[1])  # 3D x 2D: groups along N


_SCALED_GROUPED = [
    getattr(aten, name) for name in ("_scaled_grouped_mm", "_scaled_grouped_mm_v2") if hasattr(aten, name)
]


@_register(aten._grouped_mm, *_SCALED_GROUPED)
def _grouped_mm(a: torch.Tensor, b: torch.Tensor, *_: Any, **__: Any) -> int:
    return grouped_mm_macs(a, b)


@_register("transformers::grouped_mm_fallback")
def _transformers_grouped_mm(x: torch.Tensor, weight: torch.Tensor, *_: Any, **__: Any) -> int:
    return grouped_mm_macs(x, weight)  # (rows, K) x (experts, K, N)


@_register("transformers::grouped_mm_fallback_backward")
def _transformers_grouped_mm_backward(x: torch.Tensor, weight: torch.Tensor, *_: Any, **__: Any) -> int:
    # The input gradient and the weight gradient, each as many MACs as the forward.
    return 2 * grouped_mm_macs(x, weight)
