"""Counting a training step: the MACs autograd performs, the memory it holds, the model untouched.

The reference for MACs is ``torch.utils.flop_counter.FlopCounterMode`` over a real CPU step
(forward, loss, backward) of a deep copy of the same model: ``train_macs`` must equal its
total / 2 exactly. Where FlopCounterMode is blind (CPU scaled_dot_product_attention counts
0 in torch 2.14), the reference is the same model with attention as explicit matmuls.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

from pytest_modelbudget.core.training.count import MEMORY_KINDS, count_train_step
from pytest_modelbudget.core.training.step import TrainSpec
from pytest_modelbudget.errors import MeasurementError


def reference_macs(model: nn.Module, args: tuple[Any, ...], loss: Any = None, target: Any = None) -> int:
    """FlopCounterMode's FLOPs / 2 over a real forward + loss + backward of a copy."""
    twin = copy.deepcopy(model).train()
    with FlopCounterMode(display=False) as counter:
        out = twin(*args)
        value = out.sum() if loss is None else loss(out, target)
        value.backward()
    return int(counter.get_total_flops()) // 2


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, sdpa: bool) -> None:
        super().__init__()
        self.heads, self.sdpa = heads, sdpa
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = x.shape
        q, k, v = (
            t.view(batch, seq, self.heads, dim // self.heads).transpose(1, 2)
            for t in self.qkv(self.norm1(x)).split(dim, dim=2)
        )
        if self.sdpa:
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # explicit-matmul attention: what FlopCounterMode can see on the CPU
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
            causal = torch.ones(seq, seq, dtype=torch.bool, device=x.device).tril()
            attended = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ v
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, seq, dim))
        return x + self.mlp(self.norm2(x))


class SmallGPT(nn.Module):
    """A small decoder with tied embedding and head, optionally checkpointed blocks."""

    def __init__(self, sdpa: bool = False, checkpointed: str | None = None, vocab: int = 100) -> None:
        super().__init__()
        self.checkpointed = checkpointed
        self.embed, self.position = nn.Embedding(vocab, 64), nn.Embedding(16, 64)
        self.blocks = nn.ModuleList(Block(64, 4, sdpa) for _ in range(2))
        self.norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            if self.checkpointed:
                x = checkpoint(block, x, use_reentrant=self.checkpointed == "reentrant")
            else:
                x = block(x)
        return self.head(self.norm(x))


def lm_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), target.flatten())


TOKENS = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
NEXT = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(1))


# --- MACs: exactly what autograd runs -------------------------------------------------


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_resnets_match_flop_counter(name: str) -> None:
    model = getattr(torchvision.models, name)()
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 1000, (2,))
    counts = count_train_step(
        model, (x,), spec=TrainSpec(y, nn.CrossEntropyLoss(), "adamw"), execution="meta"
    )
    assert counts.macs == reference_macs(model, (x,), nn.CrossEntropyLoss(), y)
    # The first convolution's input needs no gradient: its backward is the weight gradient only.
    assert counts.backward_by_module(1)["conv1"] == counts.forward.by_module(1)["conv1"].macs
    assert counts.executed_on == "meta"
    assert not counts.uncounted


def test_frozen_layers_get_no_gradient_computations() -> None:
    model = torchvision.models.resnet18()
    model.requires_grad_(False)
    model.layer4.requires_grad_(True)
    model.fc.requires_grad_(True)
    x = torch.randn(2, 3, 64, 64)
    counts = count_train_step(model, (x,), execution="meta")
    assert counts.macs == reference_macs(model, (x,))
    assert set(counts.backward_by_module(1)) == {"layer4", "fc"}
    full = count_train_step(torchvision.models.resnet18(), (x,), execution="meta")
    assert counts.backward_macs < full.backward_macs / 4


@pytest.mark.parametrize("sdpa", [False, True])
def test_small_gpt(sdpa: bool) -> None:
    model = SmallGPT(sdpa=sdpa)
    counts = count_train_step(model, (TOKENS,), spec=TrainSpec(NEXT, lm_loss, "adam"), execution="meta")
    explicit = SmallGPT(sdpa=False)
    assert counts.macs == reference_macs(explicit, (TOKENS,), lm_loss, NEXT)
    assert counts.backward_macs == 2 * counts.forward.macs  # every MAC op has two gradients here
    assert not counts.uncounted


@pytest.mark.parametrize("mode", ["non-reentrant", "reentrant"])
def test_activation_checkpointing_counts_the_recomputed_forward(mode: str) -> None:
    model = SmallGPT(checkpointed=mode)
    counts = count_train_step(model, (TOKENS,), spec=TrainSpec(NEXT, lm_loss), execution="meta")
    assert counts.macs == reference_macs(model, (TOKENS,), lm_loss, NEXT)
    plain = count_train_step(SmallGPT(), (TOKENS,), spec=TrainSpec(NEXT, lm_loss), execution="meta")
    recomputed = sum(s.macs for p, s in plain.forward.by_module(2).items() if p.startswith("blocks."))
    if mode == "non-reentrant":
        # Non-reentrant checkpointing stops recomputing once every tensor the backward
        # needs is back: each block's last linear layer (its output is not saved) is not run.
        recomputed -= sum(s.macs for p, s in plain.forward.modules.items() if p.endswith("mlp.2"))
    assert counts.backward_macs == plain.backward_macs + recomputed
    # The recomputed forward belongs to its blocks' backward.
    assert counts.backward_by_module(2)["blocks.0"] > plain.backward_by_module(2)["blocks.0"]


def test_tied_weights_are_one_parameter_with_one_gradient() -> None:
    model = SmallGPT()
    spec = TrainSpec(NEXT, lm_loss, "sgd-momentum")  # one momentum buffer per parameter
    tied = count_train_step(model, (TOKENS,), spec=spec, execution="meta")
    param_bytes = sum(p.numel() * 4 for p in model.parameters())  # the tied weight once
    assert tied.memory_by_kind["params"] == tied.memory_by_kind["optimizer_state"] == param_bytes
    untied = SmallGPT()
    untied.head.weight = nn.Parameter(untied.embed.weight.detach().clone())
    separate = count_train_step(untied, (TOKENS,), spec=spec, execution="meta")
    assert separate.memory_by_kind["optimizer_state"] == param_bytes + untied.head.weight.numel() * 4
    # The same gradient computations either way: the tied gradient is accumulated, not recomputed.
    assert tied.macs == separate.macs == reference_macs(model, (TOKENS,), lm_loss, NEXT)


def test_vit_in_train_mode_counts_what_its_math_attention_twin_counts() -> None:
    # In train mode torchvision's ViT attends through F.scaled_dot_product_attention; under
    # the MATH backend the same call decomposes into explicit matmuls.
    with torch.device("meta"):
        model = torchvision.models.vit_b_16()
    x = torch.randn(1, 3, 224, 224, device="meta")
    fused = count_train_step(model, (x,), execution="meta")
    with sdpa_kernel(SDPBackend.MATH):
        math_twin = count_train_step(model, (x,), execution="meta")
    assert (
        "aten._scaled_dot_product_flash_attention_for_cpu_backward" in {op.op for op in fused.forward.ops}
        or fused.backward_macs > 0
    )
    assert (fused.forward.macs, fused.backward_macs) == (math_twin.forward.macs, math_twin.backward_macs)
    assert not fused.uncounted


def test_a_forward_that_needs_real_values_is_counted_on_real_clones() -> None:
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x[: int(x.abs().sum().item() > 0) + 1])

    model = Dynamic()
    x = torch.randn(4, 8)
    counts = count_train_step(model, (x,))
    assert counts.executed_on == "cpu"
    assert counts.macs == reference_macs(model, (x,))
    assert model.fc.weight.grad is None
    with pytest.raises(MeasurementError, match="cannot run on the meta device"):
        count_train_step(model, (x,), execution="meta")


# --- memory ------------------------------------------------------------------------


def test_memory_breakdown_adds_up_and_holds_params_grads_and_adam_state() -> None:
    model = torchvision.models.resnet18()
    x, y = torch.randn(8, 3, 224, 224), torch.randint(0, 1000, (8,))
    counts = count_train_step(
        model, (x,), spec=TrainSpec(y, nn.CrossEntropyLoss(), "adamw"), execution="meta"
    )
    kinds = counts.memory_by_kind
    assert list(kinds) == list(MEMORY_KINDS)
    assert sum(kinds.values()) == counts.memory
    param_bytes = sum(p.numel() * 4 for p in model.parameters())
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    assert kinds["params"] == param_bytes + buffer_bytes
    # AdamW keeps two moments per parameter and a step counter per tensor (float32, on the CPU).
    assert kinds["optimizer_state"] == 2 * param_bytes + 4 * len(list(model.parameters()))
    assert 0 < kinds["grads"] <= param_bytes
    assert kinds["activations"] > 8 * 3 * 224 * 224 * 4  # the input batch and more


def test_optimizer_state_follows_the_optimizer() -> None:
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    x = torch.randn(4, 256)
    param_bytes = sum(p.numel() * 4 for p in model.parameters())
    state = {
        name: count_train_step(model, (x,), spec=TrainSpec(optimizer=name)).memory_by_kind["optimizer_state"]
        for name in ("sgd", "sgd-momentum", "adam", "adagrad")
    }
    assert state["sgd"] == 0
    assert state["sgd-momentum"] == param_bytes
    assert state["adam"] == 2 * param_bytes + 4 * 4
    assert state["adagrad"] == param_bytes + 4 * 4
    assert count_train_step(model, (x,)).memory_by_kind["optimizer_state"] == 0


def test_optimizer_as_class_callable_and_instance() -> None:
    model = nn.Linear(32, 32)
    x = torch.randn(2, 32)
    by_name = count_train_step(model, (x,), spec=TrainSpec(optimizer="adamw"))
    by_class = count_train_step(model, (x,), spec=TrainSpec(optimizer=torch.optim.AdamW))
    by_callable = count_train_step(
        model, (x,), spec=TrainSpec(optimizer=lambda p: torch.optim.AdamW(p, lr=0.1))
    )
    user_optimizer = torch.optim.AdamW(model.parameters(), lr=0.5)
    by_instance = count_train_step(model, (x,), spec=TrainSpec(optimizer=user_optimizer))
    assert by_name.memory == by_class.memory == by_callable.memory == by_instance.memory
    assert (by_name.optimizer, by_class.optimizer, by_instance.optimizer) == ("adamw", "AdamW", "AdamW")
    assert user_optimizer.state_dict()["state"] == {}  # never stepped
    assert user_optimizer.param_groups[0]["lr"] == 0.5


# --- bad input: one clear message -----------------------------------------------------


def test_a_loss_that_is_not_a_scalar() -> None:
    with pytest.raises(
        MeasurementError,
        match=r"the loss returned a float32 tensor of shape \(2, 4\), not a floating-point scalar",
    ):
        count_train_step(nn.Linear(3, 4), (torch.randn(2, 3),), spec=TrainSpec(loss=lambda out: out * 2))


def test_a_model_with_nothing_to_train() -> None:
    model = nn.Linear(3, 4).requires_grad_(False)
    with pytest.raises(MeasurementError, match="no parameter with requires_grad=True"):
        count_train_step(model, (torch.randn(2, 3),))


@pytest.mark.parametrize(
    ("optimizer", "message"),
    [
        ("adamm", r"optimizer='adamm' is not a known name; use one of sgd, sgd-momentum, adam, adamw"),
        (42, r"optimizer=42 \(int\) is not an optimizer"),
        (lambda params: "nope", "returned str, not a torch.optim.Optimizer"),
        (
            lambda params: torch.optim.SGD(params, lr=-1.0),
            r"could not be built .*ValueError: Invalid learning rate",
        ),
    ],
)
def test_an_optimizer_that_cannot_be_built(optimizer: Any, message: str) -> None:
    with pytest.raises(MeasurementError, match=message):
        count_train_step(nn.Linear(3, 4), (torch.randn(2, 3),), spec=TrainSpec(optimizer=optimizer))


def test_an_optimizer_over_other_tensors() -> None:
    stranger = torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=0.1)
    with pytest.raises(MeasurementError, match="that are not parameters of the model"):
        count_train_step(nn.Linear(3, 4), (torch.randn(2, 3),), spec=TrainSpec(optimizer=stranger))


def test_an_output_the_default_loss_cannot_reduce() -> None:
    class Indices(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x).argmax(-1)

    with pytest.raises(
        MeasurementError, match=r"has no floating-point tensor that depends on the parameters.*pass loss="
    ):
        count_train_step(Indices(), (torch.randn(2, 3),))


def test_the_default_loss_sums_every_float_output() -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(3, 5)

        def forward(self, x: torch.Tensor) -> dict[str, Any]:
            return {"a": self.a(x), "b": (self.b(x), x.long())}

    counts = count_train_step(TwoHeads(), (torch.randn(2, 3),), execution="meta")
    assert set(counts.backward_by_module(1)) == {"a", "b"}


def test_an_optimizer_built_over_all_parameters_of_a_partly_frozen_model() -> None:
    # The usual pattern: freeze the backbone, then AdamW(model.parameters()).
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    model[0].requires_grad_(False)
    user_optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    counts = count_train_step(model, (torch.randn(2, 8),), spec=TrainSpec(optimizer=user_optimizer))
    by_name = count_train_step(model, (torch.randn(2, 8),), spec=TrainSpec(optimizer="adamw"))
    # State only for what gets a gradient: the second layer's 68 parameters, two moments each.
    assert (
        counts.memory_by_kind["optimizer_state"]
        == by_name.memory_by_kind["optimizer_state"]
        == 2 * 68 * 4 + 2 * 4
    )


def test_a_fused_optimizer_falls_back_to_real_clones() -> None:
    model = nn.Linear(8, 4)
    fused = torch.optim.AdamW(model.parameters(), fused=True)
    counts = count_train_step(model, (torch.randn(2, 8),), spec=TrainSpec(optimizer=fused))
    assert counts.executed_on == "cpu"
    assert counts.memory_by_kind["optimizer_state"] == 2 * 36 * 4 + 2 * 4
    assert model.weight.grad is None and fused.state_dict()["state"] == {}
    with pytest.raises(MeasurementError, match=r"cannot run on the meta device \(RuntimeError: `fused=True`"):
        count_train_step(model, (torch.randn(2, 8),), spec=TrainSpec(optimizer=fused), execution="meta")


def test_a_target_without_a_loss_and_a_loss_without_its_target() -> None:
    model, x = nn.Linear(3, 4), torch.randn(2, 3)
    with pytest.raises(MeasurementError, match="target= was given without loss="):
        count_train_step(model, (x,), spec=TrainSpec(target=torch.tensor([1, 2])))
    with pytest.raises(MeasurementError, match=r"loss\(output\) raised TypeError: .*target.*needs target="):
        count_train_step(model, (x,), spec=TrainSpec(loss=nn.CrossEntropyLoss()))


def test_an_integer_loss_names_its_dtype() -> None:
    with pytest.raises(
        MeasurementError, match=r"the loss returned a int64 tensor of shape \(\), not a floating-point"
    ):
        count_train_step(
            nn.Linear(3, 4), (torch.randn(2, 3),), spec=TrainSpec(loss=lambda out: out.sum().long())
        )
