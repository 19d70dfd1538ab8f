"""Generation budgets: prefill and decode MACs, the KV cache, time to first token, decode rate.

References that are not the plugin: FlopCounterMode over a real greedy ``model.generate`` with
eager attention (``experts_implementation="eager"`` for a mixture of experts) -- prefill is
``generate`` of one new token, decode ``generate`` of N minus prefill (optimum-benchmark's
definition) -- and the bytes of the ``past_key_values`` that real ``generate`` returns; for a
hand-written decoder with a static cache, FlopCounterMode over the real steps and the bytes
of its cache buffers. Timing verdicts run on a fake clock.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import pytest
import torch
from conftest import FIXED_MACHINE_SPEED
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pytest_modelbudget.core.generation.count import count_generation
from pytest_modelbudget.core.generation.spec import GenerationSpec
from pytest_modelbudget.errors import MeasurementError

transformers = pytest.importorskip("transformers")

COMMON = dict(
    vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=64,
)  # fmt: skip


def _config(family: str) -> tuple[Any, type, dict[str, str]]:
    """A tiny config of each family, its model class, and what makes its twin eager."""
    t = transformers
    if family == "llama":
        return t.LlamaConfig(**COMMON, intermediate_size=64), t.LlamaForCausalLM, {}
    if family == "qwen3":
        return t.Qwen3Config(**COMMON, intermediate_size=64, head_dim=8), t.Qwen3ForCausalLM, {}
    if family == "gpt_oss":  # a sliding-window layer beside a full one: its cache keeps the window
        config = t.GptOssConfig(
            **COMMON, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2, head_dim=8,
            sliding_window=4, layer_types=["sliding_attention", "full_attention"],
        )  # fmt: skip
        return config, t.GptOssForCausalLM, {"experts_implementation": "eager"}
    config = t.MixtralConfig(**COMMON, intermediate_size=64, num_local_experts=4, num_experts_per_tok=2)
    return config, t.MixtralForCausalLM, {"experts_implementation": "eager"}


def _reference(twin: nn.Module, ids: torch.Tensor, new_tokens: int) -> tuple[int, Any]:
    with warnings.catch_warnings(), FlopCounterMode(display=False) as flops:
        warnings.simplefilter("ignore")
        out = twin.generate(  # type: ignore[operator]
            ids,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            return_dict_in_generate=True,
        )
    return flops.get_total_flops() // 2, out


@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt_oss", "mixtral"])
def test_generation_counts_equal_a_real_greedy_generate(family: str) -> None:
    config, cls, eager = _config(family)
    torch.manual_seed(0)
    model = cls(config).eval()
    twin = cls._from_config(_config(family)[0], attn_implementation="eager", **eager).eval()
    twin.load_state_dict(model.state_dict())
    ids = torch.randint(0, 128, (2, 10))
    new_tokens = 6

    prefill, _ = _reference(twin, ids, 1)
    whole, out = _reference(twin, ids, new_tokens)
    cache = out.past_key_values
    kv_bytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))

    counted = count_generation(model, ids, GenerationSpec(new_tokens))
    assert counted.executed_on == "meta"
    assert counted.prefill.macs == prefill
    assert counted.decode.macs == whole - prefill
    assert counted.kv_cache == kv_bytes
    assert counted.kv_cache_by_dtype == {"float32": kv_bytes}
    assert len(counted.step_macs) == new_tokens - 1 and sum(counted.step_macs) == counted.decode.macs
    assert counted.step_macs == tuple(sorted(counted.step_macs))  # each step attends over more
    assert counted.last_context == 10 + new_tokens - 1


def test_a_sliding_window_bounds_the_cache() -> None:
    # GPT-OSS's sliding layer keeps 4 positions whatever the context; the full layer keeps all.
    config, cls, _ = _config("gpt_oss")
    model = cls(config).eval()
    short = count_generation(model, torch.randint(0, 128, (1, 10)), GenerationSpec(4))
    long = count_generation(model, torch.randint(0, 128, (1, 20)), GenerationSpec(4))
    per_position = 2 * 2 * 8 * 4  # keys and values, 2 KV heads x head_dim 8, float32
    assert long.kv_cache - short.kv_cache == 10 * per_position  # only the full layer grew


def test_the_count_leaves_model_config_cache_and_rng_as_they_were() -> None:
    config, cls, _ = _config("llama")
    model = cls(config).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    generation_config = model.generation_config.to_dict()
    cache = transformers.DynamicCache(config=config)
    ids = torch.randint(0, 128, (1, 8))
    rng = torch.get_rng_state()
    counted = count_generation(model, ids, GenerationSpec(3, generate_kwargs={"past_key_values": cache}))
    assert counted.kv_cache > 0
    assert cache.get_seq_length() == 0  # the cache passed in is still empty
    assert torch.equal(torch.get_rng_state(), rng)
    assert model.generation_config.to_dict() == generation_config
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# -- a hand-written decoder: a static KV cache in buffers, step(model, tokens, positions) ---------


class StaticCacheDecoder(nn.Module):
    """gpt-fast style: keys and values written into preallocated buffers at the positions
    given; attention as plain matmuls (FlopCounterMode counts them on the CPU)."""

    def __init__(
        self, vocab: int = 64, dim: int = 32, heads: int = 2, max_seq: int = 32, batch: int = 1
    ) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.embed = nn.Embedding(vocab, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, vocab)
        self.register_buffer("k_cache", torch.zeros(batch, heads, max_seq, self.head_dim))
        self.register_buffer("v_cache", torch.zeros(batch, heads, max_seq, self.head_dim))

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = (*tokens.shape, None)
        q, k, v = self.qkv(self.embed(tokens)).view(batch, seq, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        self.k_cache[:, :, positions] = k
        self.v_cache[:, :, positions] = v
        scores = q @ self.k_cache.transpose(-1, -2) / self.head_dim**0.5
        visible = positions[:, None] >= torch.arange(self.k_cache.shape[2])
        attended = scores.masked_fill(~visible, float("-inf")).softmax(-1) @ self.v_cache
        return self.out(attended.transpose(1, 2).reshape(batch, seq, -1))


def _step(model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return model(tokens, positions)


def test_a_step_decoder_counts_what_its_real_steps_run() -> None:
    torch.manual_seed(0)
    model = StaticCacheDecoder().eval()
    ids = torch.randint(0, 64, (1, 7))
    new_tokens = 5
    before = {k: v.clone() for k, v in model.state_dict().items()}

    real = StaticCacheDecoder().eval()
    real.load_state_dict(model.state_dict())
    with torch.no_grad():
        with FlopCounterMode(display=False) as prefill:
            token = real(ids, torch.arange(7))[:, -1].argmax(-1, keepdim=True)
        with FlopCounterMode(display=False) as decode:
            for i in range(new_tokens - 1):
                token = real(token, torch.tensor([7 + i]))[:, -1].argmax(-1, keepdim=True)

    counted = count_generation(model, ids, GenerationSpec(new_tokens, step=_step))
    assert counted.executed_on == "meta"  # the cache buffers too: as meta twins while counting
    assert counted.prefill.macs == prefill.get_total_flops() // 2
    assert counted.decode.macs == decode.get_total_flops() // 2
    assert counted.kv_cache == model.k_cache.nbytes + model.v_cache.nbytes  # a static cache holds it all
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_step_decoder_counts_on_real_tensors_when_asked() -> None:
    model = StaticCacheDecoder().eval()
    zeros = model.k_cache.clone()
    counted = count_generation(
        model, torch.randint(0, 64, (1, 7)), GenerationSpec(3, step=_step), execution="real"
    )
    on_meta = count_generation(model, torch.randint(0, 64, (1, 7)), GenerationSpec(3, step=_step))
    assert counted.executed_on == "cpu"
    assert (counted.prefill.macs, counted.decode.macs, counted.kv_cache) == (
        on_meta.prefill.macs,
        on_meta.decode.macs,
        on_meta.kv_cache,
    )
    assert torch.equal(model.k_cache, zeros)  # the steps wrote into it; it was put back


@pytest.mark.parametrize(
    ("model", "prompt", "spec", "message"),
    [
        (nn.Linear(4, 4), torch.zeros(1, 4, dtype=torch.long), GenerationSpec(2), "has no generate()"),
        (StaticCacheDecoder(), torch.zeros(1, 4, dtype=torch.long), GenerationSpec(0, step=_step), "at least one"),
        (StaticCacheDecoder(), torch.zeros(1, 4), GenerationSpec(2, step=_step), "not token ids"),
        (StaticCacheDecoder(), [[1, 2]], GenerationSpec(2, step=_step), "the prompt is list"),
        (StaticCacheDecoder(), torch.zeros(1, 4, dtype=torch.long, device="meta"), GenerationSpec(2, step=_step), "on the meta device"),
        (StaticCacheDecoder(), torch.zeros(1, 4, dtype=torch.long), GenerationSpec(2, step="run"), "must be a callable"),
        (StaticCacheDecoder(), torch.zeros(1, 4, dtype=torch.long), GenerationSpec(2, step=_step, generate_kwargs={"attention_mask": 1}), "takes no other keywords"),
        (StaticCacheDecoder(), torch.zeros(1, 4, dtype=torch.long), GenerationSpec(2, step=lambda m, t, p: 3), "not logits"),
    ],
)  # fmt: skip
def test_what_cannot_generate_is_a_clear_error(
    model: Any, prompt: Any, spec: GenerationSpec, message: str
) -> None:
    with pytest.raises(MeasurementError, match=message):
        count_generation(model, prompt, spec)


# -- end to end: the fixture, budgets.yaml, the summary, growth caught ------------------------------

MODELS = """
import os
import torch
import transformers

def tiny_llama():
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=int(os.environ.get("KV_HEADS", "2")), max_position_embeddings=64,
        intermediate_size=64,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()

def prompt():
    return torch.randint(0, 128, (1, int(os.environ.get("PROMPT", "10"))))
"""


@pytest.fixture
def llm(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(llms=MODELS)
    pytester.syspathinsert()
    return pytester


def _write(pytester: pytest.Pytester, body: str) -> None:
    pytester.makepyfile(test_llm="import pytest\nimport torch\nfrom llms import tiny_llama, prompt\n" + body)


GENERATE_TEST = """
@pytest.mark.model_budget
def test_generate(model_budget):
    measured = model_budget.generate(tiny_llama(), prompt(), max_new_tokens=4)
    if measured is not None:
        assert measured.call == "generate" and measured.generation.new_tokens == 4
"""


def test_kv_heads_and_a_longer_prompt_fail_their_baselines(
    llm: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(llm, GENERATE_TEST)
    llm.runpytest("--model-budget", "--update-budgets").assert_outcomes(passed=1)
    entry = next(
        iter(__import__("yaml").safe_load((llm.path / "budgets.yaml").read_text())["entries"].values())
    )
    assert {"prefill_macs", "decode_macs", "kv_cache", "params", "size"} <= set(entry)
    assert "macs" not in entry  # one pass's MACs: a generation has prefill and decode instead
    assert {"decode_macs", "macs"} <= set(entry["modules"]["model.layers"])
    llm.runpytest("--model-budget").assert_outcomes(passed=1)

    monkeypatch.setenv("KV_HEADS", "4")  # grouped-query attention lost: twice the cache
    result = llm.runpytest("--model-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*kv_cache 6.5 KiB > baseline 3.25 KiB (+100.0%)*"])
    monkeypatch.delenv("KV_HEADS")

    monkeypatch.setenv("PROMPT", "20")  # a longer prompt: more prefill, a longer context to decode over
    result = llm.runpytest("--model-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*prefill_macs * > baseline * (+1*%)*", "*modules that grew (macs): model.layers*"]
    )


def test_the_summary_and_json_show_the_generation(llm: pytest.Pytester) -> None:
    _write(llm, GENERATE_TEST)
    result = llm.runpytest("--model-budget", "--budget-json=report.json")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "test_llm.py::test_generate*201 k + 72.2 k*",
            "generation test_llm.py::test_generate: prompt 1 x 10, 4 new tokens: last step 24.2 k MACs "
            "at context 13; KV cache 3.25 KiB (float32)",
        ]
    )
    (call,) = json.loads((llm.path / "report.json").read_text())["calls"]
    assert call["metrics"]["prefill_macs"] == 201216 and call["metrics"]["kv_cache"] == 3328
    assert call["details"]["last_context"] == 13 and call["details"]["kv_cache_by_dtype"] == {"float32": 3328}


def test_run_wide_compile_and_cuda_graphs_leave_a_generation_eager(llm: pytest.Pytester) -> None:
    # --budget-compile compiles forwards; a generation is counted and timed eagerly, not refused.
    _write(llm, GENERATE_TEST)
    result = llm.runpytest(
        "--model-budget", "--budget-compile", "--budget-cuda-graphs", "--budget-json=report.json"
    )
    result.assert_outcomes(passed=1)
    (call,) = json.loads((llm.path / "report.json").read_text())["calls"]
    assert call["compiled"] is None and "graph_breaks" not in call["metrics"]
    assert call["metrics"]["prefill_macs"] == 201216


def test_without_model_budget_it_generates_once(llm: pytest.Pytester) -> None:
    _write(
        llm,
        """
def test_plain(model_budget):
    model = tiny_llama()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    assert model_budget.generate(model, prompt(), max_new_tokens=3) is None
    assert len(calls) == 3  # the prompt, then two more tokens
""",
    )
    llm.runpytest().assert_outcomes(passed=1)


WRONG_CALLS = """
@pytest.mark.model_budget(max_macs="1G")
def test_pass_limit_on_generation(model_budget):
    model_budget.generate(tiny_llama(), prompt(), max_new_tokens=2)

@pytest.mark.model_budget(max_kv_cache="1 MB")
def test_generation_limit_on_forward(model_budget):
    model_budget(tiny_llama(), prompt())

def test_generation_keyword_on_forward(model_budget):
    model_budget(tiny_llama(), prompt(), max_new_tokens=3)

def test_forward_keyword_on_generation(model_budget):
    model_budget.generate(tiny_llama(), prompt(), max_new_tokens=3, pixel_values=torch.ones(1))

def test_sampling(model_budget):
    model_budget.generate(tiny_llama(), prompt(), max_new_tokens=3, do_sample=True)

def test_no_new_tokens(model_budget):
    model_budget.generate(tiny_llama(), prompt(), max_new_tokens=0)

@pytest.mark.model_budget(min_decode_tokens_per_s=1)
def test_decode_rate_of_one_token(model_budget):
    model_budget.generate(tiny_llama(), prompt(), max_new_tokens=1)

@pytest.mark.model_budget(compile=True)
def test_compiled_generation(model_budget):
    model_budget.generate(tiny_llama(), prompt(), max_new_tokens=2)
"""


def test_wrong_calls_get_one_clear_message(llm: pytest.Pytester) -> None:
    _write(llm, WRONG_CALLS)
    result = llm.runpytest("--model-budget")
    result.assert_outcomes(failed=8)
    result.stdout.fnmatch_lines_random(
        [
            "*max_macs limit(s) one pass of the model, not a generation: limit max_prefill_macs, "
            "max_decode_macs or max_kv_cache, or measure a forward with model_budget(model, ...)*",
            "*max_kv_cache limit(s) a generation: measure the generation with model_budget.generate(*",
            "*max_new_tokens=: keyword(s) of a generation, not of a forward: measure it with model_budget.generate(*",
            "*the model's generation raised ValueError: The following `model_kwargs` are not used by the model: ?'pixel_values'?*",
            "*do_sample= is decided by the generation (it is greedy): drop it*",
            "*max_new_tokens=0: a generation makes at least one new token*",
            "*min_decode_tokens_per_s cannot be judged: a generation of one new token has no decode to time*",
            "*a generation is counted and timed eagerly: drop compile= from the budget*",
        ]
    )
    assert "Traceback" not in result.stdout.str()


# -- timing: two figures, their own fingerprints, verdicts on a fake clock ----------------------------

# Each step's time, from what it runs: the prompt's forward PREFILL_MS, a decode step DECODE_MS.
FAKE_STEP_CLOCK = (
    """
import os

import pytest

import pytest_modelbudget.core.timing.timer as timing

STEPS = []  # the tokens each step of the decoder below ran, in order


@pytest.fixture(autouse=True)
def fake_block_timer(monkeypatch):
    now = [0.0]

    def fake(call, own_clock=False):
        def run_block(number):
            start = len(STEPS)
            for _ in range(number):
                call()
            prefill, decode = (float(os.environ.get(name, "1")) for name in ("PREFILL_MS", "DECODE_MS"))
            elapsed = sum(prefill if tokens > 1 else decode for tokens in STEPS[start:]) / 1e3
            now[0] += elapsed
            return elapsed

        return run_block

    monkeypatch.setattr(timing, "_cpu_block_timer", fake)
    monkeypatch.setattr(timing, "wall_clock", lambda: now[0])
    fix_machine_speed(monkeypatch)
"""
    + FIXED_MACHINE_SPEED
)

TIMED_TEST = """
import torch
from torch import nn
from conftest import STEPS


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(64, 16)
        self.out = nn.Linear(16, 64)

    def forward(self, tokens, positions):
        return self.out(self.embed(tokens))


def step(model, tokens, positions):
    if not tokens.is_meta:  # the real steps timing runs, not the count's
        STEPS.append(tokens.shape[1])
    return model(tokens, positions)


@pytest.mark.model_budget(max_ttft_ms=5, min_decode_tokens_per_s=800)
def test_decode(model_budget):
    measured = model_budget.generate(Decoder(), torch.zeros(1, 8, dtype=torch.long), max_new_tokens=5, step=step)
    if measured is not None and measured.timings:
        assert set(measured.timings) == {"ttft", "generation"}
"""


@pytest.fixture
def timed(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(FAKE_STEP_CLOCK)
    pytester.makepyfile(test_decode="import pytest\n" + TIMED_TEST)
    return pytester


def test_a_slower_decode_step_fails_decode_tokens_per_s(
    timed: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFILL_MS", "2")
    monkeypatch.setenv("DECODE_MS", "1")  # 4 tokens after the first in 4 ms: 1000 tokens/s
    timed.runpytest("--model-budget", "--update-budgets").assert_outcomes(passed=1)
    stored = __import__("yaml").safe_load((timed.path / "budgets.yaml").read_text())["entries"]
    timing = stored["test_decode.py::test_decode"]["timing"]
    assert sorted(key.rsplit(" | ", 1)[1] for key in timing) == ["generate", "generate ttft"]
    by_mode = {key.rsplit(" | ", 1)[1]: value for key, value in timing.items()}
    assert by_mode["generate ttft"]["median_ms"] == pytest.approx(2)  # the prompt's forward
    assert by_mode["generate"]["median_ms"] == pytest.approx(6)  # and four decode steps

    result = timed.runpytest("--model-budget")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*TTFT 2 ms, decode tokens/s 1 k/s*"])

    monkeypatch.setenv("DECODE_MS", "2")  # each decode step twice as slow; the prompt's forward as fast
    result = timed.runpytest("--model-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines_random(
        [
            "*decode_tokens_per_s 500/s < limit (marker) 800/s*",
            "*generation_ms 10 ms > baseline 6 ms (+66.7%, tolerance 10%)*",
        ]
    )
    assert "ttft_ms 2 ms > " not in result.stdout.str()  # the first token is as fast as before


def test_a_slower_prompt_fails_ttft(timed: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFILL_MS", "8")
    result = timed.runpytest("--model-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*ttft_ms 8 ms > limit (marker) 5 ms*"])
