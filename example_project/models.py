"""Models of a small, realistic user project guarded by model budgets.

Set EXAMPLE_WIDEN=1 to widen SimpleModel's hidden layer from 500 to 600 units: the
"accidental bloat" that `pytest example_project --model-budget` catches.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

HIDDEN = 600 if os.environ.get("EXAMPLE_WIDEN") == "1" else 500


class SimpleModel(nn.Module):
    """The classic worked example: two convolutions and two linear layers on 1x28x28."""

    def __init__(self, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 5)
        self.conv2 = nn.Conv2d(10, 20, 3)
        self.fc1 = nn.Linear(2000, hidden)
        self.fc2 = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # 1x28x28 -> 10x24x24 -> 10x12x12
        x = F.relu(self.conv2(x))  # -> 20x10x10
        x = F.relu(self.fc1(x.flatten(1)))
        return F.log_softmax(self.fc2(x), dim=1)


class Block(nn.Module):
    """Pre-norm transformer block; attention through F.scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, dim = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, seq, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, seq, dim))
        return x + self.mlp(self.norm2(x))


class TinyGPT(nn.Module):
    """A small decoder-only language model."""

    def __init__(self, vocab: int = 1000, dim: int = 128, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied: counted once

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class CachedAttention(nn.Module):
    """Causal self-attention over a static KV cache kept in buffers (as gpt-fast does)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("k_cache", None, persistent=False)  # sized by setup_cache()
        self.register_buffer("v_cache", None, persistent=False)

    def setup_cache(self, batch: int, max_seq: int) -> None:
        shape = (batch, self.heads, max_seq, self.proj.in_features // self.heads)
        self.k_cache = torch.zeros(shape)
        self.v_cache = torch.zeros(shape)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        assert self.k_cache is not None and self.v_cache is not None, "call setup_caches() first"
        batch, seq, dim = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        self.k_cache[:, :, positions] = k
        self.v_cache[:, :, positions] = v
        # Every step attends over the whole cache; the mask hides the positions not yet written.
        visible = positions[:, None] >= torch.arange(self.k_cache.shape[2], device=x.device)
        attended = F.scaled_dot_product_attention(q, self.k_cache, self.v_cache, attn_mask=visible)
        return self.proj(attended.transpose(1, 2).reshape(batch, seq, dim))


class CachedBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = CachedAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), positions)
        return x + self.mlp(self.norm2(x))


class CachedGPT(nn.Module):
    """A hand-written decoder without transformers' generate(), gpt-fast style: a static KV
    cache in buffers, ``forward(tokens, positions)`` for the prompt and for each new token."""

    def __init__(
        self, vocab: int = 1000, dim: int = 128, depth: int = 2, heads: int = 4, max_seq: int = 256
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(max_seq, dim)
        self.blocks = nn.ModuleList(CachedBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def setup_caches(self, batch: int, max_seq: int) -> None:
        for block in self.blocks:
            block.attention.setup_cache(batch, max_seq)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position(positions)
        for block in self.blocks:
            x = block(x, positions)
        return self.head(self.norm(x))


def int8_simple_model() -> nn.Module:
    """SimpleModel with its linear layers quantized to int8 by torchao (weights and activations).

    torchao quantizes linear layers; the convolutions stay in float32, which the budget
    below the test says how much of is allowed.
    """
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    torch.manual_seed(0)
    model = SimpleModel().eval()
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model
