"""CUDA-graph decode: a generation's decode step captured once and replayed for every token.

There is no GPU in CI: the capture is faked where it cannot run (a fake replays the captured
step on the same fixed tensors, which is what a CUDA graph's replay does to its kernels), the
refusals and the CPU error run for real, and one test captures a real graph where CUDA is.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from pytest_modelbudget.core.generation import run
from pytest_modelbudget.core.generation.spec import GenerationSpec
from pytest_modelbudget.errors import MeasurementError

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DECODER = """
import torch
from torch import nn


class StaticDecoder(nn.Module):
    \"\"\"A static cache in a buffer, written at the positions tensor: capturable.\"\"\"

    def __init__(self, vocab=32, dim=8, max_seq=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab)
        self.register_buffer("cache", torch.zeros(1, max_seq, dim))

    def forward(self, tokens, positions):
        x = self.embed(tokens)
        self.cache.index_copy_(1, positions, x)
        seen = torch.arange(self.cache.shape[1], device=x.device) <= positions[-1]
        return self.out(x + (self.cache * seen[None, :, None]).sum(1, keepdim=True))
"""
namespace: dict[str, Any] = {}
exec(DECODER, namespace)
StaticDecoder: Callable[[], nn.Module] = namespace["StaticDecoder"]


def _recording_step(seen: list[tuple[int, list[list[int]], list[int]]]) -> Any:
    def step(model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        seen.append((id(tokens), tokens.tolist(), positions.tolist()))
        return model(tokens, positions)

    return step


def _generate(spec: GenerationSpec, device: str = "cpu") -> torch.Tensor:
    """The static cache after one timed generation: the embeddings of every token it made."""
    torch.manual_seed(0)
    model = StaticDecoder().to(device).eval()
    prompt = torch.randint(0, 32, (1, 4), device=device)
    with run.repeated_generation(
        model, prompt, spec, spec.max_new_tokens, torch.device(device)
    ) as generation:
        generation()
    return model.cache.cpu()


def test_each_decode_step_replays_one_capture_on_fixed_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    captures = []

    def fake_capture(step: Callable[[], torch.Tensor], device: torch.device) -> tuple[Any, torch.Tensor]:
        captures.append(device)
        logits = step()  # what capture records; a replay runs it again on the same tensors
        return (lambda: logits.copy_(step())), logits

    monkeypatch.setattr(run, "capture_decode_step", fake_capture)
    eager: list[Any] = []
    graphed: list[Any] = []
    eager_cache = _generate(GenerationSpec(6, step=_recording_step(eager)))
    graphed_cache = _generate(GenerationSpec(6, step=_recording_step(graphed), cuda_graph=True))

    assert captures == [torch.device("cpu")]  # once, when timing starts
    capture, prompt, *replays = graphed
    assert capture[1:] == ([[0]], [0])  # before the prompt, on zeros at position 0 (the prompt overwrites it)
    assert prompt[1:] == eager[0][1:]  # the prompt's forward is eager
    assert [r[1:] for r in replays] == [e[1:] for e in eager[1:]]  # the same tokens, the same positions
    assert len({r[0] for r in [capture, *replays]}) == 1  # every replay reads the one captured tensor
    assert torch.equal(graphed_cache, eager_cache)


def test_the_first_token_alone_captures_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run, "capture_decode_step", lambda *_: pytest.fail("captured"))
    seen: list[Any] = []
    _generate(GenerationSpec(1, step=_recording_step(seen), cuda_graph=True))
    assert len(seen) == 1


def test_capture_needs_a_cuda_device() -> None:
    with pytest.raises(MeasurementError, match="needs a CUDA device, but the generation runs on cpu"):
        run.capture_decode_step(lambda: torch.zeros(1), torch.device("cpu"))


@cuda
def test_a_real_graph_generates_what_the_eager_loop_generates() -> None:
    eager: list[Any] = []
    graphed: list[Any] = []
    eager_cache = _generate(GenerationSpec(6, step=_recording_step(eager)), "cuda")
    graphed_cache = _generate(GenerationSpec(6, step=_recording_step(graphed), cuda_graph=True), "cuda")
    # The step's Python runs only while warming up and capturing (4 calls at position 0); the
    # five decode steps are replays, which wrote the tokens the eager loop made into the cache.
    assert [g[2] for g in graphed[:4]] == [[0]] * 4
    assert graphed[4][1:] == eager[0][1:] and len(graphed) == 5
    assert torch.equal(graphed_cache, eager_cache)


# -- in a pytest run ------------------------------------------------------------------------

TESTS = """
import pytest
import torch
from decoder import StaticDecoder

import pytest_modelbudget.core.generation.run as run

CAPTURES = []


def fake_capture(step, device):
    CAPTURES.append(device)
    logits = step()
    return (lambda: logits.copy_(step())), logits


def step(model, tokens, positions):
    return model(tokens, positions)


@pytest.mark.model_budget(cuda_graph=True, min_decode_tokens_per_s=1)
def test_graphed(model_budget, monkeypatch):
    monkeypatch.setattr(run, "capture_decode_step", fake_capture)
    prompt = torch.zeros(1, 4, dtype=torch.long)
    model_budget.generate(StaticDecoder(), prompt, max_new_tokens=4, step=step)
    assert CAPTURES  # timed: captured once per measurement of the whole generation


@pytest.mark.model_budget(cuda_graph=True, timing=True)
def test_graphed_on_cpu(model_budget):
    model_budget.generate(StaticDecoder(), torch.zeros(1, 4, dtype=torch.long), max_new_tokens=4, step=step)


@pytest.mark.model_budget(cuda_graph=True)
def test_graphed_without_step(model_budget):
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1,
    )
    model_budget.generate(transformers.LlamaForCausalLM(config).eval(), torch.zeros(1, 4, dtype=torch.long),
                          max_new_tokens=2)
"""


def test_cuda_graph_on_a_generation_in_a_run(pytester: pytest.Pytester) -> None:
    pytest.importorskip("transformers")
    pytester.makepyfile(decoder=DECODER, test_graphs=TESTS)
    pytester.syspathinsert()
    result = pytester.runpytest(
        "--model-budget", "--update-budgets", "--budget-time=0.05", "--budget-json=report.json"
    )
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "model_budget: cuda_graph= replays a generation's decode steps as CUDA graphs, "
            "which needs a CUDA device, but the generation runs on cpu*",
            "  (while measuring test_graphs.py::test_graphed_on_cpu)",
            "model_budget: cuda_graph= on a generation replays its decode step as a CUDA "
            "graph, which needs a static KV cache and a step=*",
            "  (while measuring test_graphs.py::test_graphed_without_step)",
        ]
    )
    assert "Traceback" not in result.stdout.str()
    stored = __import__("yaml").safe_load((pytester.path / "budgets.yaml").read_text())["entries"]
    modes = sorted(key.rsplit(" | ", 1)[1] for key in stored["test_graphs.py::test_graphed"]["timing"])
    assert modes == ["generate cuda-graph", "generate ttft"]  # never compared with an eager decode
    calls = json.loads((pytester.path / "report.json").read_text())["calls"]
    (graphed,) = (c for c in calls if c["key"] == "test_graphs.py::test_graphed")
    assert graphed["metrics"]["decode_tokens_per_s"] > 0
