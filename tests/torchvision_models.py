"""torchvision's classification models as their published weights describe them, built cheaply.

``weights.meta`` publishes, for each model's default weights, the parameter count and the
MACs (``_ops``, in giga-MACs) at the weights' input size. Those numbers describe the
architecture the builder makes *when it loads the weights*, which is not always the
``weights=None`` default (see :func:`builder_kwargs`).

Building with random initialisation on CPU costs about 90 s for all of them on two cores
(regnet_y_128gf alone 15 s), so models are built without weights: on the meta device, no
memory and no initialisation. :func:`materialize` gives one real, deterministic values
when a test needs them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

CLASSIFICATION_MODELS = sorted(torchvision.models.list_models(module=torchvision.models))


def default_weights(name: str) -> WeightsEnum:
    return torchvision.models.get_model_weights(name).DEFAULT  # type: ignore[no-any-return]


def input_size(name: str) -> int:
    """The square image size the default weights were evaluated (and their MACs counted) at."""
    return int(default_weights(name).transforms().crop_size[0])


def builder_kwargs(name: str) -> dict[str, Any]:
    """The architecture arguments a builder overrides only when it loads weights."""
    weights = default_weights(name)
    if name == "inception_v3":
        # Keeps its AuxLogits branch (in the published parameter count; idle in eval).
        return {"transform_input": True, "init_weights": False}
    if name == "googlenet":
        # Drops its auxiliary classifiers after loading (not in the parameter count).
        return {"transform_input": True, "aux_logits": False, "init_weights": False}
    if name.startswith("vit_"):
        return {"image_size": weights.meta["min_size"][0]}  # 518 for vit_h_14
    if name == "maxvit_t":
        return {"input_size": weights.meta["min_size"]}
    return {}


def build_on_meta(name: str) -> nn.Module:
    """The model with meta parameters and buffers: no memory, no initialisation cost."""
    kwargs = builder_kwargs(name)
    try:
        with torch.device("meta"):
            return torchvision.models.get_model(name, weights=None, **kwargs)
    except NotImplementedError:
        # The RegNet builders compute their block widths with tensor ops and .tolist(),
        # which cannot run on meta: keep those real, put only the model's tensors on meta.
        with parameters_on_meta():
            return torchvision.models.get_model(name, weights=None, **kwargs)


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Like ``torch.device("meta")``, but only for parameters and buffers.

    Patches ``nn.Module.register_parameter`` and ``register_buffer`` for the duration
    of the block and restores them on exit, also when the block raises.
    """
    register_parameter = nn.Module.register_parameter
    register_buffer = nn.Module.register_buffer

    def register_meta_parameter(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(module, name, param)

    def register_meta_buffer(
        module: nn.Module, name: str, tensor: torch.Tensor | None, persistent: bool = True
    ) -> None:
        register_buffer(module, name, None if tensor is None else tensor.to("meta"), persistent)

    nn.Module.register_parameter = register_meta_parameter  # type: ignore[method-assign]
    nn.Module.register_buffer = register_meta_buffer  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter  # type: ignore[method-assign]
        nn.Module.register_buffer = register_buffer  # type: ignore[method-assign]


def materialize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move a meta-built model to CPU with deterministic, non-constant values, in place.

    Not torchvision's initialisation (which is what is slow), but real values that a
    count must leave untouched. Integer buffers (BatchNorm's num_batches_tracked) get
    small integers.
    """
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.is_floating_point():
                tensor.uniform_(-1.0, 1.0, generator=generator)
            else:
                tensor.copy_(torch.randint(0, 100, tensor.shape, generator=generator))
    return model


def image_batch(name: str, *, device: str = "meta", batch: int = 1) -> torch.Tensor:
    size = input_size(name)
    return torch.zeros(batch, 3, size, size, device=device)
