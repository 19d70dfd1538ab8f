"""The counter reproduces torchvision's published numbers for every classification model.

For each model's default weights torchvision publishes ``num_params`` and ``_ops``: the
giga-MACs of one image at the weights' input size, to 3 decimals. That is the MAC
convention of DESIGN.md section 2, so the count must agree to every published decimal,
and the parameter count exactly. Models are built on the meta device (see
torchvision_models.py), so the whole zoo -- vit_h_14 at 518x518 and regnet_y_128gf
included -- is counted in seconds.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision_models import (
    CLASSIFICATION_MODELS,
    build_on_meta,
    default_weights,
    image_batch,
    input_size,
)

from pytest_modelbudget.core.counting.count import count


def test_the_zoo_is_all_there() -> None:
    # A parametrization over an empty list would pass vacuously.
    assert len(CLASSIFICATION_MODELS) >= 80
    assert {"resnet50", "vit_h_14", "regnet_y_128gf", "inception_v3"} <= set(CLASSIFICATION_MODELS)


@pytest.mark.parametrize("name", CLASSIFICATION_MODELS)
def test_published_macs_and_params(name: str) -> None:
    meta = default_weights(name).meta
    counts = count(build_on_meta(name).eval(), (image_batch(name),), execution="meta")

    assert counts.executed_on == "meta"
    assert counts.params == meta["num_params"]
    assert round(counts.macs / 1e9, 3) == meta["_ops"], f"{counts.macs:,} MACs"
    assert counts.uncounted == {}


# Real CPU execution of real models must give what the meta count gives: the meta
# kernels, cached shapes and shape rules change nothing. A few cheap, varied models.
# Memory traffic agrees too, except where CPU runs a fused kernel that meta tensors
# cannot take (ViT's attention: _native_multi_head_attention reads and writes less).
@pytest.mark.parametrize(
    ("name", "same_traffic"),
    [
        ("resnet18", True),
        ("mobilenet_v3_small", True),
        ("squeezenet1_1", True),
        ("shufflenet_v2_x0_5", True),
        ("vit_b_32", False),
    ],
)
def test_real_execution_agrees_with_meta(name: str, same_traffic: bool) -> None:
    model = torchvision.models.get_model(name, weights=None).eval()
    size = input_size(name)
    image = torch.randn(1, 3, size, size)
    real = count(model, (image,), execution="real")
    meta = count(model, (image,), execution="meta")

    assert real.executed_on == "cpu"
    assert (real.macs, real.params, real.size_bytes) == (meta.macs, meta.params, meta.size_bytes)
    assert {p: (s.macs, s.params) for p, s in real.modules.items()} == {
        p: (s.macs, s.params) for p, s in meta.modules.items()
    }
    assert (real.memory_traffic == meta.memory_traffic) == same_traffic
    assert round(real.macs / 1e9, 3) == default_weights(name).meta["_ops"]
