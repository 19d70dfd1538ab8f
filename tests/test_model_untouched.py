"""Counting leaves the model, and the process, exactly as it found them (DESIGN.md section 2).

After ``count()``: the same state_dict (keys, tensor objects and values), no hook on any
module and no global module hook, no added, removed or replaced attribute in any module,
the same training flags and ``requires_grad``, the same torch and Python RNG states. Also
when the forward raises, and with real execution -- where the forward does write into
the model (BatchNorm's running statistics) and draws random numbers (dropout). A counted
or timed training step also leaves every `.grad` (None stays None) and a user's optimizer.
"""

from __future__ import annotations

import copy
import importlib.util
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn
from torchvision_models import CLASSIFICATION_MODELS, build_on_meta, default_weights, image_batch, materialize

from pytest_modelbudget.core.counting.count import count
from pytest_modelbudget.core.training.count import count_train_step
from pytest_modelbudget.core.training.step import TrainSpec

REPO = Path(__file__).resolve().parents[1]
EXECUTIONS = ["auto", "meta", "real"]

# Models up to this size get real values, compared after the count; bigger ones stay on
# meta, where a count cannot write a value anyway, and are compared by tensor identity
# and metadata (filling 5.6 billion parameters would cost more than the whole suite).
MATERIALIZE_UP_TO = 30_000_000


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    # These tests copy and compare thousands of small tensors. With two intra-op threads
    # on a busy two-core machine (pytest -n 2), each such op waits about a millisecond
    # for its second thread to be scheduled: 100x slower than on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Snapshot:
    """Everything about a model and the process that a count must leave as it was."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.tensors = dict(model.state_dict(keep_vars=True))
        self.metadata = {name: _metadata(t) for name, t in self.tensors.items()}
        self.values = {
            name: t.detach().clone() for name, t in self.tensors.items() if t.device.type != "meta"
        }
        self.modules = list(model.named_modules())
        self.attributes = [dict(vars(module)) for _, module in self.modules]
        self.containers = [
            {key: dict(value) for key, value in vars(module).items() if isinstance(value, dict)}
            for _, module in self.modules
        ]
        self.training = [module.training for _, module in self.modules]
        self.torch_rng = torch.get_rng_state()
        self.python_rng = random.getstate()

    def assert_unchanged(self) -> None:
        __tracebackhide__ = True
        model = self.model
        assert list(model.named_modules()) == self.modules
        now = dict(model.state_dict(keep_vars=True))
        assert list(now) == list(self.tensors), "state_dict keys changed"
        for name, tensor in now.items():
            assert tensor is self.tensors[name], f"{name} was replaced"
            assert _metadata(tensor) == self.metadata[name], f"{name} changed shape, dtype or requires_grad"
            if name in self.values:
                assert torch.equal(tensor, self.values[name]), f"{name} changed value"
        for (path, module), attributes, containers, training in zip(
            self.modules, self.attributes, self.containers, self.training, strict=True
        ):
            where = path or "the root module"
            assert vars(module).keys() == attributes.keys(), f"attributes added or removed on {where}"
            for key, value in vars(module).items():
                assert value is attributes[key], f"{where}.{key} was replaced"
                if isinstance(value, dict):
                    assert value.keys() == containers[key].keys(), f"{where}.{key} changed"
                    assert all(value[k] is v for k, v in containers[key].items()), f"{where}.{key} changed"
            assert module.training == training, f"{where} changed its training flag"
        assert_no_hooks(model)
        assert torch.equal(torch.get_rng_state(), self.torch_rng), "torch's RNG state changed"
        assert random.getstate() == self.python_rng, "Python's RNG state changed"


def _metadata(tensor: torch.Tensor) -> Any:
    return (
        type(tensor),
        tuple(tensor.shape),
        tensor.stride(),
        tensor.dtype,
        tensor.device,
        tensor.requires_grad,
    )


GLOBAL_HOOKS = [
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_forward_hooks_always_called",
    "_global_forward_hooks_with_kwargs",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
    "_global_buffer_registration_hooks",
    "_global_module_registration_hooks",
    "_global_parameter_registration_hooks",
]


def assert_no_hooks(model: nn.Module) -> None:
    __tracebackhide__ = True
    for path, module in model.named_modules():
        for key, value in vars(module).items():
            if "hooks" in key and isinstance(value, dict):
                assert not value, f"{path or 'the root module'}.{key} holds {value}"
    for name in GLOBAL_HOOKS:
        hooks = getattr(torch.nn.modules.module, name, {})
        assert not hooks, f"torch.nn.modules.module.{name} holds {hooks}"


def counted_twice_alike(model: nn.Module, args: tuple[Any, ...], execution: str = "auto") -> None:
    __tracebackhide__ = True
    snapshot = Snapshot(model)
    first = count(model, args, execution=execution)
    snapshot.assert_unchanged()
    second = count(model, args, execution=execution)
    snapshot.assert_unchanged()
    assert first == second
    assert first.ops == second.ops


# --- the torchvision zoo -------------------------------------------------------------


@pytest.mark.parametrize("name", CLASSIFICATION_MODELS)
def test_torchvision_model_is_left_as_it_was(name: str) -> None:
    model = build_on_meta(name).eval()
    if default_weights(name).meta["num_params"] <= MATERIALIZE_UP_TO:
        materialize(model)
    image = image_batch(name, device=next(model.parameters()).device.type)
    snapshot = Snapshot(model)
    count(model, (image,))
    snapshot.assert_unchanged()


@pytest.mark.parametrize("execution", EXECUTIONS)
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "googlenet", "swin_t"])
def test_torchvision_model_in_train_mode(name: str, execution: str) -> None:
    # Train mode: BatchNorm updates its running statistics, dropout and stochastic depth
    # draw random numbers -- on real tensors, for real. Small inputs keep it fast.
    model = materialize(build_on_meta(name)).train()
    counted_twice_alike(model, (torch.randn(2, 3, 64, 64),), execution)


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_eval_mode_flags_are_kept_per_module(execution: str) -> None:
    # A model that is partly in train mode: each module keeps its own flag.
    model = torchvision.models.resnet18(weights=None).eval()
    model.layer2.train()
    model.fc.requires_grad_(False)
    counted_twice_alike(model, (torch.randn(2, 3, 64, 64),), execution)


# --- the example project -------------------------------------------------------------


def _example_models() -> Any:
    # Loaded under a private name: importing `example_project` would clash with the
    # copies that other tests run it from.
    spec = importlib.util.spec_from_file_location(
        "_untouched_example_models", REPO / "example_project" / "models.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("execution", EXECUTIONS)
@pytest.mark.parametrize("train", [False, True])
def test_example_project_models_are_left_as_they_were(execution: str, train: bool) -> None:
    models = _example_models()
    torch.manual_seed(0)
    counted_twice_alike(models.SimpleModel().train(train), (torch.randn(2, 1, 28, 28),), execution)
    gpt = models.TinyGPT().train(train)
    assert gpt.head.weight is gpt.embed.weight
    counted_twice_alike(gpt, (torch.randint(0, 1000, (1, 32)),), execution)
    assert gpt.head.weight is gpt.embed.weight


# --- forwards that misbehave ---------------------------------------------------------


class Noisy(nn.Module):
    """A forward that draws from both RNGs, caches tensors, hooks and flips flags."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.bn(x)) * random.random() + torch.rand(1)
        self.cache = x  # a new attribute
        self.fc.register_forward_hook(lambda *_: None)  # a hook left behind
        self.bn.eval()  # a flipped flag
        self.fc.weight.requires_grad_(False)
        self.register_buffer("seen", torch.ones(1))
        return self.fc(x)


class Raises(Noisy):
    """The same, then raises: after a BatchNorm in training mode and a dropout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        super().forward(x)
        raise RuntimeError("the forward failed")


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_a_forward_that_changes_the_model_leaves_no_trace(execution: str) -> None:
    model = Noisy().train()
    counted_twice_alike(model, (torch.randn(4, 8),), execution)
    assert not hasattr(model, "cache")
    assert "seen" not in dict(model.named_buffers())


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_a_forward_that_raises_leaves_no_trace(execution: str) -> None:
    model = Raises().train()
    x = torch.randn(4, 8)
    snapshot = Snapshot(model)
    for _ in range(2):
        with pytest.raises(Exception, match="the forward failed"):
            count(model, (x,), execution=execution)
        snapshot.assert_unchanged()


def test_real_execution_restores_running_statistics() -> None:
    # The point of the value comparison: on real tensors BatchNorm in training mode
    # really does update its buffers during the counted forward.
    model = nn.Sequential(nn.BatchNorm1d(8)).train()
    before = model[0].running_mean.clone()
    model(torch.randn(4, 8) + 3)
    assert not torch.equal(model[0].running_mean, before)  # a plain forward changes them
    counted_twice_alike(model, (torch.randn(4, 8) + 3,), "real")


def test_no_global_hooks_after_counting() -> None:
    count(nn.Linear(3, 3), (torch.randn(1, 3),))
    assert_no_hooks(nn.Module())


# --- training steps ------------------------------------------------------------------


def stepped_twice_alike(
    model: nn.Module, args: tuple[Any, ...], spec: TrainSpec, execution: str = "auto"
) -> None:
    """Two counted training steps: equal results, and the model, its ``.grad`` and the
    process as they were after each."""
    __tracebackhide__ = True
    snapshot = Snapshot(model)
    grads = {name: p.grad for name, p in model.named_parameters()}
    grad_values = {name: g.clone() for name, g in grads.items() if g is not None and g.device.type != "meta"}
    results = []
    for _ in range(2):
        results.append(count_train_step(model, args, spec=spec, execution=execution))
        snapshot.assert_unchanged()
        for name, p in model.named_parameters():
            assert p.grad is grads[name], f"{name}.grad was replaced"
            if name in grad_values:
                assert torch.equal(p.grad, grad_values[name]), f"{name}.grad changed value"
    assert results[0] == results[1]


@pytest.mark.slow
@pytest.mark.parametrize("name", CLASSIFICATION_MODELS)
def test_torchvision_model_training_step_leaves_it_as_it_was(name: str) -> None:
    model = build_on_meta(name).eval()
    if default_weights(name).meta["num_params"] <= MATERIALIZE_UP_TO:
        materialize(model)
    image = image_batch(name, device=next(model.parameters()).device.type)
    images = torch.cat([image, image])  # BatchNorm in train mode needs two values per channel
    snapshot = Snapshot(model)
    counts = count_train_step(model, (images,), spec=TrainSpec(optimizer="adamw"))
    snapshot.assert_unchanged()
    assert all(p.grad is None for p in model.parameters())
    assert counts.backward_macs > counts.forward.macs  # every model has weight gradients to compute


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_training_step_keeps_existing_gradients_and_running_statistics(execution: str) -> None:
    model = materialize(build_on_meta("resnet18")).train()
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()  # a test that already trained: .grad set, BatchNorm stats moved
    model.layer1.requires_grad_(False)
    model.fc.weight.grad = None  # None stays None, a tensor stays that very tensor
    stepped_twice_alike(
        model, (x,), TrainSpec(torch.randint(0, 1000, (2,)), nn.CrossEntropyLoss(), "adam"), execution
    )


def test_a_user_optimizer_is_never_stepped() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()  # state allocated, as in a real loop
    state = copy.deepcopy(optimizer.state_dict())
    stepped_twice_alike(model, (torch.randn(4, 8),), TrainSpec(optimizer=optimizer), "real")
    after = optimizer.state_dict()
    assert after["param_groups"] == state["param_groups"]
    for key, values in state["state"].items():
        for name, value in values.items():
            assert torch.equal(after["state"][key][name], value), f"optimizer state {key}.{name} changed"


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_a_training_step_that_raises_leaves_no_trace(execution: str) -> None:
    model = Noisy().train()

    def failing_loss(out: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the loss failed")

    x = torch.randn(4, 8)
    snapshot = Snapshot(model)
    for _ in range(2):
        with pytest.raises(Exception, match="the loss failed"):
            count_train_step(model, (x,), spec=TrainSpec(loss=failing_loss), execution=execution)
        snapshot.assert_unchanged()
        assert all(p.grad is None for p in model.parameters())


def test_timing_a_training_step_leaves_the_model_as_it_was() -> None:
    from functools import partial

    from pytest_modelbudget.core.timing.timer import TimingSettings, time_forward
    from pytest_modelbudget.core.training.step import train_step_on

    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2)).eval()
    x = torch.randn(4, 8)
    snapshot = Snapshot(model)
    # The timing core repeats what it is given: here a training step (calls/train_step.py's).
    step = partial(train_step_on, model, (x,), {}, spec=TrainSpec(optimizer="adamw"))
    settings = TimingSettings(mode="train step", min_time_s=0.05, time_budget_s=0.1, min_samples=3)
    stats = time_forward(model, (x,), None, settings, repeat=step)
    assert stats.fingerprint.endswith("| train step")
    snapshot.assert_unchanged()
    assert all(p.grad is None for p in model.parameters())
