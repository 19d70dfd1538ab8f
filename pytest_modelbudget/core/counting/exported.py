"""Exported programs: counted per module of their eager source, not all at the root.

``torch.export.export(model, ...).module()`` is a GraphModule: one flat graph, whose
submodules only hold the parameters. Its forward calls no submodule, so the module hooks
that place every op in its module see none. Each node of the graph still records the
modules it came from (``node.meta["nn_module_stack"]``): run through
:class:`_PlacedInterpreter`, each node's ops are placed in the innermost of them, so the
breakdown -- and a failure's "modules that grew" -- is the eager model's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def as_module(model: Any) -> Any:
    """An ``ExportedProgram`` as the module it runs (``.module()``); anything else as it is."""
    export = getattr(torch, "export", None)
    program = getattr(export, "ExportedProgram", None) if export is not None else None
    if program is not None and isinstance(model, program):
        return model.module()
    return model


def _placed(graph_module: torch.fx.GraphModule) -> bool:
    return any("nn_module_stack" in node.meta for node in graph_module.graph.nodes)


class _PlacedInterpreter(torch.fx.Interpreter):
    def __init__(self, module: torch.fx.GraphModule, place: Callable[[str], Any]) -> None:
        super().__init__(module)
        self._place = place

    def run_node(self, node: torch.fx.Node) -> Any:
        stack = node.meta.get("nn_module_stack")
        path = next(reversed(stack.values()))[0] if stack else ""
        with self._place(path):
            return super().run_node(node)


def placed_forward(model: Any, place: Callable[[str], Any]) -> Callable[..., Any] | None:
    """The forward of an exported module that places each node's ops in the module it came
    from (``place(path)`` is entered around each node), or None for any other model."""
    if not isinstance(model, torch.fx.GraphModule) or not _placed(model):
        return None
    codegen = model.graph._codegen

    def forward(*args: Any, **kwargs: Any) -> Any:
        flat = codegen.process_inputs(*args, **kwargs)
        out = _PlacedInterpreter(model, place).run(*flat)
        return codegen.process_outputs(out)

    return forward
