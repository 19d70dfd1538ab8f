"""Mixture-of-experts models: which parameters are expert banks, and the parameters a token uses.

An *expert bank* is a parameter whose first dimension enumerates experts: the weights a
grouped matmul multiplies by (``_grouped_mm``'s ``mat_b``), or a parameter whose rows are
gathered or selected by expert id (``weights[expert_ids]``: the batched form, per-expert
biases; ``weights[i]``: the eager loop over experts). A *router* is a ``topk`` over a last
dimension of as many experts, in the module around the bank (``mlp.gate`` or ``mlp.router``
for ``mlp.experts``): it sends each token through ``k`` of the ``E`` experts.

The *active parameters* per token are then every parameter, except that of each bank only
``k / E`` counts: Mixtral-8x7B's "12.9B active of 46.7B". A bank without a router that
matches it (a custom routing the counter cannot see) leaves them unknown, and says so.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

aten = torch.ops.aten

# Ops whose argument 0 (or 1: mat_b) is an expert bank when it is a parameter.
_GROUPED = frozenset(
    getattr(aten, name).default for name in ("_grouped_mm", "_scaled_grouped_mm") if hasattr(aten, name)
)
_GATHER = aten.index.Tensor
_SELECT = aten.select.int  # weights[i] with i a Python int (the eager loop over experts)
_TOPK = aten.topk.default


class _Router(NamedTuple):
    experts: int
    k: int
    module: str  # where the topk ran


class ExpertTracker:
    """Sees the ops of a count that touch expert banks and routers (fed by the dispatch mode)."""

    WATCHED = frozenset({*_GROUPED, _GATHER, _SELECT, _TOPK})

    def __init__(self) -> None:
        self.banks: dict[int, tuple[torch.Tensor, str]] = {}  # id(parameter) -> (parameter, module)
        self.routers: list[_Router] = []

    def saw(self, func: Any, args: tuple[Any, ...], module: str, parameter_of: Any) -> None:
        """``parameter_of(tensor)``: the model's parameter a tensor is (or views), else None."""
        if func is _TOPK:
            x, k = args[0], args[1]
            dim = args[2] if len(args) > 2 else -1
            self.routers.append(_Router(int(x.shape[dim]), int(k), module))
            return
        if func is _GATHER:
            bank, indices = args[0], args[1]
            if not indices or indices[0] is None or bank.dim() < 2:
                return  # not a gather along the first dimension
        elif func is _SELECT:
            bank, dim = args[0], args[1]
            if dim != 0 or bank.dim() < 2:
                return
        else:  # a grouped matmul: its weights
            bank = args[1]
            if bank.dim() != 3:
                return
        parameter = parameter_of(bank)
        if parameter is not None:
            self.banks.setdefault(id(parameter), (parameter, module))

    def active_params(self, params: int) -> int | None:
        """Parameters a token passes through: ``params`` less the unrouted share of each bank;
        None when a bank has no router to say how many of its experts a token uses."""
        inactive = 0
        for bank, module in self.banks.values():
            k = self._k_of(int(bank.shape[0]), module)
            if k is None:
                return None
            inactive += bank.numel() * (int(bank.shape[0]) - k) // int(bank.shape[0])
        return params - inactive

    def _k_of(self, experts: int, module: str) -> int | None:
        """The k of the routers over ``experts`` experts in the module around ``module``."""
        ks = {
            r.k for r in self.routers if r.experts == experts and _within(module, r.module.rpartition(".")[0])
        }
        return ks.pop() if len(ks) == 1 else None

    @property
    def unrouted(self) -> list[str]:
        """Modules holding a bank that no router matches (their active parameters are unknown)."""
        return sorted({m for bank, m in self.banks.values() if self._k_of(int(bank.shape[0]), m) is None})


def _parent(module: str) -> str:
    return module.rpartition(".")[0]


def _within(module: str, parent: str) -> bool:
    return not parent or module == parent or module.startswith(parent + ".")
