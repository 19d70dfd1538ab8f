"""Budget tests of the example project. Run: pytest example_project --model-budget"""

from __future__ import annotations

import pytest
import torch
import torchvision

from example_project.models import CachedGPT, SimpleModel, TinyGPT, int8_simple_model


# Latency is judged against the baseline of this kind of machine (see budgets.yaml,
# `timing:`), and against a hard limit anywhere.
@pytest.mark.model_budget(max_macs="2M", max_params="1.5M", max_latency_ms=20)
def test_simple_model(model_budget):
    model_budget(SimpleModel(), torch.randn(1, 1, 28, 28))


@pytest.mark.model_budget(max_macs="2G", max_params="12M", max_size="50 MB")
def test_resnet18(model_budget):
    model = torchvision.models.resnet18(weights=None).eval()
    model_budget(model, torch.randn(1, 3, 224, 224))


@pytest.mark.parametrize("seq_len", [128, 512])
@pytest.mark.model_budget(max_params="1M", tolerance="2%")
def test_tiny_gpt(model_budget, seq_len):
    tokens = torch.randint(0, 1000, (1, seq_len))
    model_budget(TinyGPT().eval(), tokens)


# No limits in code: this test's limits live under `limits:` in budgets.yaml.
@pytest.mark.model_budget
def test_mobilenet_batch_sizes(model_budget):
    model = torchvision.models.mobilenet_v3_small(weights=None).eval()
    model_budget(model, torch.randn(1, 3, 224, 224), name="batch1")
    model_budget(model, torch.randn(8, 3, 224, 224), name="batch8")


# Quantized: the linear layers' MACs stay int8 (their float fallback would exceed the
# float-MACs limit and the float_macs baseline), and the model stays small.
@pytest.mark.model_budget(max_float_macs="400k", max_size="1.5 MB")
def test_simple_model_int8(model_budget):
    model_budget(int8_simple_model(), torch.randn(1, 1, 28, 28))


# A training step: forward in train mode, loss, backward, AdamW step -- counted on meta
# tensors (MACs per module's backward, peak memory by kind), the model left untouched.
# Training memory is the budget that breaks first: this one fails before a job OOMs.
@pytest.mark.model_budget(max_train_macs="2G", max_train_memory="60 MB")
def test_tiny_gpt_train_step(model_budget):
    model = TinyGPT()
    tokens = torch.randint(0, 1000, (8, 128))
    next_tokens = torch.randint(0, 1000, (8, 128))

    def next_token_loss(logits, target):
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())

    model_budget.train_step(model, tokens, target=next_tokens, loss=next_token_loss, optimizer="adamw")


# A generation (docs/generation.md): the prompt's forward, then one step per new token.
# Counted on meta (prefill and decode MACs, the KV cache it fills), timed as time to first
# token and decode tokens per second. A decoder without transformers' generate() says how
# one step runs: step(model, tokens, positions) -> logits.
@pytest.mark.model_budget(
    max_prefill_macs="300M",
    max_decode_macs="200M",
    max_kv_cache="600 kB",
    max_ttft_ms=250,
    min_decode_tokens_per_s=20,
)
def test_cached_gpt_generate(model_budget):
    torch.manual_seed(0)
    model = CachedGPT().eval()
    model.setup_caches(batch=1, max_seq=256)
    prompt = torch.randint(0, 1000, (1, 128))
    model_budget.generate(
        model, prompt, max_new_tokens=32, step=lambda m, tokens, positions: m(tokens, positions)
    )
