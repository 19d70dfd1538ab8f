"""What LLM code is made of, counted: mixture-of-experts kernels, flex_attention, higher-order
operators, custom ops, exported programs, and inputs (a KV cache) left as they were.

References that are not the plugin: FlopCounterMode on the ``experts_implementation="eager"``
twin of each MoE model (with eager attention), transformers' ``num_parameters()``, the
analytic count from a BlockMask's own ``sparsity()``, and the eager model of an export.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import write_test
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pytest_modelbudget import count, count_train_step, register_mac_formula
from pytest_modelbudget.core.training.step import TrainSpec

transformers = pytest.importorskip("transformers")

# -- mixtures of experts --------------------------------------------------------------------

COMMON = dict(
    vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=64,
)  # fmt: skip


def _mixtral(k: int = 2) -> Any:
    return transformers.MixtralConfig(
        **COMMON, intermediate_size=64, num_local_experts=4, num_experts_per_tok=k
    )


def _qwen3_moe(k: int = 2) -> Any:
    return transformers.Qwen3MoeConfig(
        **COMMON, intermediate_size=64, moe_intermediate_size=48, num_experts=4, num_experts_per_tok=k,
        head_dim=8, decoder_sparse_step=1, mlp_only_layers=[],
    )  # fmt: skip


def _olmoe(k: int = 2) -> Any:
    return transformers.OlmoeConfig(
        **COMMON, intermediate_size=48, num_experts=4, num_experts_per_tok=k, eos_token_id=None
    )


def _deepseek_v3(k: int = 2) -> Any:
    return transformers.DeepseekV3Config(
        **{**COMMON, "num_key_value_heads": 4}, intermediate_size=64, moe_intermediate_size=16,
        n_routed_experts=8, num_experts_per_tok=k, n_shared_experts=1, n_group=2, topk_group=1,
        first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8,
        qk_nope_head_dim=8, v_head_dim=8, rope_scaling=None,
    )  # fmt: skip


def _gpt_oss(k: int = 2) -> Any:
    return transformers.GptOssConfig(
        **COMMON, intermediate_size=32, num_local_experts=4, num_experts_per_tok=k, head_dim=8,
        sliding_window=8, layer_types=["sliding_attention", "full_attention"],
    )  # fmt: skip


MOE = {
    "mixtral": (_mixtral, "MixtralForCausalLM", 4),
    "qwen3_moe": (_qwen3_moe, "Qwen3MoeForCausalLM", 4),
    "olmoe": (_olmoe, "OlmoeForCausalLM", 4),
    "deepseek_v3": (_deepseek_v3, "DeepseekV3ForCausalLM", 8),
    "gpt_oss": (_gpt_oss, "GptOssForCausalLM", 4),
}


def _build(name: str, k: int = 2, **implementation: str) -> Any:
    config, cls_name, _ = MOE[name]
    cls = getattr(transformers, cls_name)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = cls._from_config(config(k), **implementation) if implementation else cls(config(k))
    return model.eval()


def _reference_macs(model: Any, name: str, ids: torch.Tensor) -> int:
    """FlopCounterMode / 2 on the eager-experts, eager-attention twin of ``model``."""
    twin = _build(name, experts_implementation="eager", attn_implementation="eager")
    twin.load_state_dict(model.state_dict())
    with FlopCounterMode(display=False) as flops, torch.no_grad():
        twin(ids)
    return int(flops.get_total_flops()) // 2


@pytest.mark.parametrize("name", list(MOE))
def test_moe_kernels_count_exactly_on_meta(name: str) -> None:
    model = _build(name)  # the default experts implementation: grouped matmuls
    ids = torch.randint(0, 128, (2, 16))
    counts = count(model, (ids,))
    assert counts.executed_on == "meta"
    assert counts.macs == _reference_macs(model, name, ids)
    assert counts.params == model.num_parameters()
    assert counts.uncounted == {}


@pytest.mark.parametrize("implementation", ["grouped_mm", "batched_mm", "eager"])
def test_active_params_do_not_depend_on_the_experts_implementation(implementation: str) -> None:
    # Mixtral's experts: per layer 4 x (gate_up 2*64*32 + down 32*64) = 24,576 parameters, of
    # which a token passes through 2 of 4; two layers.
    model = _build("mixtral", experts_implementation=implementation)
    counts = count(model, (torch.randint(0, 128, (2, 16)),))
    assert counts.active_params == counts.params - 2 * 24_576 // 2
    assert counts.unrouted == ()


def test_active_params_of_shared_experts_and_expert_biases() -> None:
    # DeepSeek-V3: a dense first layer and a shared expert count whole; 2 of 8 routed experts.
    deepseek = count(_build("deepseek_v3"), (torch.randint(0, 128, (1, 8)),))
    routed = 8 * (32 * 32 + 32 * 16)  # gate_up (8, 2*16, 32) and down (8, 32, 16)
    assert deepseek.active_params == deepseek.params - routed * 6 // 8
    # GPT-OSS: the experts' biases are gathered by expert too.
    gpt_oss = count(_build("gpt_oss"), (torch.randint(0, 128, (1, 8)),))
    per_layer = 4 * (32 * 64 + 64 + 32 * 32 + 32)
    assert gpt_oss.active_params == gpt_oss.params - 2 * per_layer // 2


def test_a_bank_without_a_router_leaves_active_params_unknown() -> None:
    class Fixed(nn.Module):  # every token through expert 1: no topk to read k from
        def __init__(self) -> None:
            super().__init__()
            self.experts = nn.Parameter(torch.randn(4, 8, 8))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.bmm(self.experts[torch.ones(x.shape[0], dtype=torch.long)], x.unsqueeze(-1))

    counts = count(Fixed(), (torch.randn(3, 8),))
    assert counts.active_params is None and counts.unrouted == ("",)


def test_dense_models_have_all_their_params_active() -> None:
    counts = count(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)), (torch.randn(2, 8),))
    assert counts.active_params == counts.params


def test_transformers_fallback_op_counts_as_a_grouped_matmul() -> None:
    from transformers.integrations import moe  # registers transformers::grouped_mm_fallback

    assert moe is not None
    x, weight = torch.randn(10, 16), torch.randn(4, 16, 8)
    offs = torch.tensor([3, 5, 9, 10], dtype=torch.int32)

    class Fallback(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.transformers.grouped_mm_fallback(x, weight, offs)

    counts = count(Fallback(), (x,))
    assert counts.macs == 10 * 16 * 8 and counts.uncounted == {}


MOE_TEST = """
import transformers

@pytest.mark.model_budget
def test_mixtral(model_budget):
    k = int(__import__("os").environ.get("TOP_K", "2"))
    config = transformers.MixtralConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, num_local_experts=4,
        num_experts_per_tok=k, max_position_embeddings=64)
    torch.manual_seed(0)
    model_budget(transformers.MixtralForCausalLM(config).eval(), torch.zeros(1, 16, dtype=torch.long))
"""


def test_more_experts_per_token_fails_the_baseline_and_names_the_experts(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_test(project, MOE_TEST)
    project.runpytest("--model-budget", "--update-budgets").assert_outcomes(passed=1)
    entry = (project.path / "budgets.yaml").read_text()
    assert "active_params:" in entry  # ratcheted, and only for a mixture of experts
    monkeypatch.setenv("TOP_K", "4")
    result = project.runpytest("--model-budget")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*macs * > baseline * (+*%)",
            "*active_params * > baseline * (+*%)",
            "*modules that grew (macs): model.layers *",
        ]
    )


# -- flex_attention -------------------------------------------------------------------------

flex_attention_module = pytest.importorskip("torch.nn.attention.flex_attention")
flex_attention = flex_attention_module.flex_attention
create_block_mask = flex_attention_module.create_block_mask

B, H, L, D = 2, 4, 512, 16
PROJECTION = B * L * 64 * 3 * 64  # the qkv linear


def _causal(b: Any, h: Any, q: Any, kv: Any) -> Any:
    return q >= kv


def _window(b: Any, h: Any, q: Any, kv: Any) -> Any:
    return (q >= kv) & (q - kv < 128)


class FlexAttention(nn.Module):
    """Attention by flex_attention, its BlockMask made in the forward (as HF's is) or given."""

    def __init__(self, mask_mod: Callable[..., Any] | None) -> None:
        super().__init__()
        self.qkv = nn.Linear(64, 3 * 64)
        self.mask_mod = mask_mod

    def forward(self, x: torch.Tensor, block_mask: Any = None) -> torch.Tensor:
        q, k, v = self.qkv(x).view(B, L, 3, H, D).permute(2, 0, 3, 1, 4)
        if block_mask is None and self.mask_mod is not None:
            block_mask = create_block_mask(self.mask_mod, None, None, L, L, device=x.device)
        return flex_attention(q, k, v, block_mask=block_mask)


def _analytic(mask_mod: Callable[..., Any] | None) -> int:
    dense = B * H * L * L * (D + D)
    if mask_mod is None:
        return dense
    sparsity = create_block_mask(mask_mod, None, None, L, L, device="cpu").sparsity()
    return round(dense * (1 - sparsity / 100))


@pytest.mark.parametrize("mask_mod", [None, _causal, _window], ids=["dense", "causal", "sliding-window"])
def test_flex_attention_counts_the_blocks_its_mask_computes(mask_mod: Any) -> None:
    x = torch.randn(B, L, 64)
    counts = count(FlexAttention(mask_mod), (x,))
    assert counts.executed_on == "meta"
    assert counts.macs - PROJECTION == _analytic(mask_mod)
    assert counts.uncounted == {}
    if mask_mod is not None:  # a mask given to the count, made outside the forward
        given = create_block_mask(mask_mod, None, None, L, L, device="cpu")
        counts = count(FlexAttention(None), (x, given))
        assert counts.executed_on == "meta" and counts.macs - PROJECTION == _analytic(mask_mod)


@pytest.mark.parametrize("mask_mod", [None, _causal], ids=["dense", "causal"])
def test_flex_attention_backward_is_twice_its_forward(mask_mod: Any) -> None:
    step = count_train_step(FlexAttention(mask_mod), (torch.randn(B, L, 64),), spec=TrainSpec())
    attention = step.forward.macs - PROJECTION
    assert attention == _analytic(mask_mod)
    # The qkv weight gradient (the input needs none) plus the attention's, as for SDPA.
    assert step.backward_macs == PROJECTION + 2 * attention


def test_other_higher_order_operators_count_through_their_subgraph() -> None:
    class Branching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cond(x.sum() > 0, lambda t: self.a(t), lambda t: self.b(self.b(t)), (x,))

    taken = count(Branching(), (torch.ones(4, 8),))  # a data-dependent branch: counted on real
    assert (taken.macs, taken.executed_on) == (4 * 8 * 8, "cpu")
    assert taken.by_module(1)["a"].macs == 4 * 8 * 8
    other = count(Branching(), (-torch.ones(4, 8),))
    assert other.macs == 2 * 4 * 8 * 8 and other.uncounted == {}


# -- custom ops ---------------------------------------------------------------------------


def _custom_op(name: str) -> Any:
    @torch.library.custom_op(f"modelbudget_test::{name}", mutates_args=())
    def op(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x @ w

    @op.register_fake
    def _(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x.new_empty(x.shape[0], w.shape[1])

    return op


FORMULA_OP, FLOP_OP, UNKNOWN_OP = _custom_op("with_formula"), _custom_op("with_flops"), _custom_op("unknown")


class CustomOpModel(nn.Module):
    def __init__(self, op: Any) -> None:
        super().__init__()
        self.w, self.op = nn.Parameter(torch.randn(16, 8)), op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x, self.w)


def test_a_custom_op_counts_with_a_formula_given_either_way() -> None:
    x = torch.randn(4, 16)
    assert count(CustomOpModel(FORMULA_OP), (x,)).uncounted == {"modelbudget_test.with_formula": 1}
    register_mac_formula("modelbudget_test::with_formula", lambda x, w, *, out: x.shape[0] * w.numel())
    counts = count(CustomOpModel(FORMULA_OP), (x,))
    assert (counts.macs, counts.executed_on, counts.uncounted) == (4 * 16 * 8, "meta", {})

    from torch.utils.flop_counter import register_flop_formula

    @register_flop_formula(torch.ops.modelbudget_test.with_flops)
    def _(x_shape: Any, w_shape: Any, *_: Any, **__: Any) -> int:
        return 2 * x_shape[0] * x_shape[1] * w_shape[1]

    assert count(CustomOpModel(FLOP_OP), (x,)).macs == 4 * 16 * 8


def test_a_second_formula_for_an_op_is_refused() -> None:
    register_mac_formula(torch.ops.modelbudget_test.unknown.default, lambda *_, out: 0)
    with pytest.raises(
        RuntimeError, match=r"duplicate MAC formula registrations for modelbudget_test\.unknown$"
    ):
        register_mac_formula("modelbudget_test::unknown", lambda *_, out: 1)
    with pytest.raises(ValueError, match="'namespace::name'"):
        register_mac_formula("unknown", lambda *_, out: 1)


UNCOUNTED_TEST = """
@torch.library.custom_op("modelbudget_inner::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x @ x.T

@mystery.register_fake
def _(x):
    return x.new_empty(x.shape[0], x.shape[0])

class Mystery(torch.nn.Module):
    def forward(self, x):
        return mystery(x)

@pytest.mark.model_budget
def test_mystery(model_budget):
    model_budget(Mystery(), torch.randn(4, 8))
"""


def test_an_uncounted_custom_op_says_how_to_count_it_and_fails_under_strict(project: pytest.Pytester) -> None:
    write_test(project, UNCOUNTED_TEST)
    result = project.runpytest("--model-budget", "-W", "ignore::pytest_modelbudget.plugin.ModelBudgetWarning")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "*ops with arithmetic but no MAC formula (not counted): modelbudget_inner.mystery x1",
            "*give modelbudget_inner.mystery a formula: "
            "pytest_modelbudget.register_mac_formula('modelbudget_inner::mystery', *",
        ]
    )
    strict = project.runpytest("--model-budget", "--budget-strict")
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines(
        ["*--budget-strict: ops with arithmetic the counter cannot count: modelbudget_inner.mystery x1"]
    )


# -- exported programs ----------------------------------------------------------------------


def test_an_exported_model_keeps_the_eager_breakdown() -> None:
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 224, 224)
    eager = count(model, (x,))
    program = torch.export.export(model, (x,))
    for exported in (program.module(), program):
        counts = count(exported, (x,))
        assert counts.macs == eager.macs and counts.params == eager.params
        assert counts.by_module(2) == eager.by_module(2)
        assert counts.by_module(2)["layer1.0"].macs > 0  # not all at the root


# -- inputs left as they were ------------------------------------------------------------------


def test_a_decode_step_leaves_the_kv_cache_as_it_was() -> None:
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        cache = model(torch.randint(0, 128, (1, 8)), use_cache=True).past_key_values
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    step = torch.randint(0, 128, (1, 1))
    for execution in ("meta", "real"):
        counts = count(model, (step,), {"cache": cache, "use_cache": True}, execution=execution)
        assert counts.executed_on == ("meta" if execution == "meta" else "cpu")
        assert cache.get_seq_length() == 8
        for layer, (keys, values) in zip(cache.layers, before, strict=True):
            assert layer.keys.device.type == "cpu"
            assert torch.equal(layer.keys, keys) and torch.equal(layer.values, values)


def test_lists_dicts_and_tensors_given_to_a_count_are_left_as_they_were() -> None:
    class Greedy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor, seen: list[Any], state: dict[str, Any]) -> torch.Tensor:
            seen.append(x)
            state["last"] = x
            x.add_(1)  # in place, on the caller's tensor
            return self.linear(x)

    x, seen, state = torch.zeros(2, 4), ["first"], {"n": 1}
    for execution in ("meta", "real"):
        count(Greedy(), (x, seen, state), execution=execution)
        assert seen == ["first"] and state == {"n": 1} and torch.equal(x, torch.zeros(2, 4))


def test_a_triton_op_counts_on_meta_with_its_formula() -> None:
    triton = pytest.importorskip("triton")
    tl = pytest.importorskip("triton.language")
    from torch.library import triton_op, wrap_triton

    @triton.jit
    def double(x_ptr: Any, out_ptr: Any, n: Any, block: tl.constexpr) -> None:
        offsets = tl.program_id(0) * block + tl.arange(0, block)
        mask = offsets < n
        tl.store(out_ptr + offsets, 2 * tl.load(x_ptr + offsets, mask=mask), mask=mask)

    @triton_op("modelbudget_test::scaled_rows", mutates_args={})
    def scaled_rows(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(x)
        wrap_triton(double)[(1,)](x, out, x.numel(), block=1024)
        return out @ w

    register_mac_formula("modelbudget_test::scaled_rows", lambda x, w, *, out: x.shape[0] * w.numel())
    counts = count(CustomOpModel(scaled_rows), (torch.randn(4, 16),), execution="meta")
    assert (counts.macs, counts.executed_on, counts.uncounted) == (4 * 16 * 8, "meta", {})


def test_a_count_says_why_it_could_not_run_on_meta() -> None:
    # The eager experts loop asks which experts were hit (nonzero): a value meta cannot give.
    counts = count(_build("mixtral", experts_implementation="eager"), (torch.randint(0, 128, (1, 8)),))
    assert counts.executed_on == "cpu" and "nonzero" in counts.meta_refused
    assert count(_build("mixtral"), (torch.randint(0, 128, (1, 8)),)).meta_refused == ""


def test_profile_shows_and_suggests_active_params(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_modelbudget.cli.profile import run

    (tmp_path / "moe_factory.py").write_text(
        "import transformers\n"
        "def build():\n"
        "    return transformers.MixtralForCausalLM(transformers.MixtralConfig(vocab_size=128, "
        "hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, "
        "intermediate_size=64, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    lines = list(run("moe_factory:build", ["1x16:int64"], depth=1, device="cpu", headroom="10%"))
    assert any(line.strip().startswith("active params") and "(39,328) per token" in line for line in lines)
    assert 'max_active_params="43.3k"' in lines[-1]
