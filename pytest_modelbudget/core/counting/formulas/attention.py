"""MACs of attention kernels: ``Q @ K^T`` plus ``P @ V``, at full (dense) size for the SDPA family
whatever its mask or ``is_causal`` -- the math backend and the meta device compute it that
way, so every backend gets the same count -- and the fused kernels of nn.MultiheadAttention
and nn.TransformerEncoderLayer as their unfused matmuls would be.
"""

from __future__ import annotations

from typing import Any

import torch

from .registry import _register

aten = torch.ops.aten


def _attention(batch_heads: int, q_len: int, kv_len: int, qk_dim: int, v_dim: int) -> int:
    # Q @ K^T then P @ V, dense.
    return batch_heads * q_len * kv_len * (qk_dim + v_dim)


@_register(
    aten._scaled_dot_product_flash_attention,
    aten._scaled_dot_product_flash_attention_for_cpu,
    aten._scaled_dot_product_efficient_attention,
    aten._scaled_dot_product_cudnn_attention,
    aten._scaled_dot_product_fused_attention_overrideable,
)
def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *_: Any, **__: Any) -> int:
    # Layout [..., heads, seq, dim]; with GQA, K/V have fewer heads than Q but every
    # query head still attends over the full key length.
    batch_heads = q.numel() // (int(q.shape[-2]) * int(q.shape[-1]))
    return _attention(batch_heads, int(q.shape[-2]), int(k.shape[-2]), int(q.shape[-1]), int(v.shape[-1]))


@_register(
    aten._scaled_dot_product_flash_attention_backward,
    aten._scaled_dot_product_flash_attention_for_cpu_backward,
    aten._scaled_dot_product_cudnn_attention_backward,
    aten._scaled_dot_product_fused_attention_overrideable_backward,
)
def _sdpa_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *_: Any, **__: Any
) -> int:
    # dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q: the forward's two products twice,
    # what autograd runs for the explicit-matmul twin (a fused kernel's recompute of P is
    # not counted, as FlopCounterMode does not).
    return 2 * _sdpa(q, k, v)


@_register(aten._scaled_dot_product_efficient_attention_backward)
def _sdpa_efficient_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *_: Any, **__: Any
) -> int:
    return 2 * _sdpa(q, k, v)


@_register(aten._flash_attention_backward, aten._efficient_attention_backward)
def _attention_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *_: Any, **__: Any
) -> int:
    return 2 * _attention_forward(q, k, v)


@_register(aten._flash_attention_forward, aten._efficient_attention_forward)
def _attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *_: Any, **__: Any) -> int:
    # These low-level kernels take [batch, seq, heads, dim].
    batch, q_len, heads, qk_dim = (int(s) for s in q.shape)
    return _attention(batch * heads, q_len, int(k.shape[1]), qk_dim, int(v.shape[-1]))


@_register(aten._native_multi_head_attention)
def _native_mha(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    embed_dim: int,
    num_heads: int,
    qkv_weight: torch.Tensor,
    *_: Any,
    **__: Any,
) -> int:
    # nn.MultiheadAttention's inference fast path: in-projection, attention, out-projection.
    tokens_q = query.numel() // int(query.shape[-1])
    tokens_k = key.numel() // int(key.shape[-1])
    tokens_v = value.numel() // int(value.shape[-1])
    e = int(embed_dim)
    projections = (tokens_q + tokens_k + tokens_v) * e * e + tokens_q * e * e
    batch = tokens_q // int(query.shape[-2])
    attention = _attention(batch, int(query.shape[-2]), int(key.shape[-2]), e, e)
    return projections + attention


@_register(aten._transformer_encoder_layer_fwd)
def _encoder_layer(
    src: torch.Tensor,
    embed_dim: int,
    num_heads: int,
    qkv_weight: torch.Tensor,
    qkv_bias: torch.Tensor,
    proj_weight: torch.Tensor,
    proj_bias: torch.Tensor,
    use_gelu: bool,
    norm_first: bool,
    eps: float,
    norm_weight_1: torch.Tensor,
    norm_bias_1: torch.Tensor,
    norm_weight_2: torch.Tensor,
    norm_bias_2: torch.Tensor,
    ffn_weight_1: torch.Tensor,
    *_: Any,
    **__: Any,
) -> int:
    # nn.TransformerEncoderLayer's fast path: self-attention block plus a two-layer MLP.
    tokens = src.numel() // int(src.shape[-1])
    e = int(embed_dim)
    seq = int(src.shape[-2])
    attention = 4 * tokens * e * e + _attention(tokens // seq, seq, seq, e, e)
    feedforward = 2 * tokens * e * int(ffn_weight_1.shape[0])
    return attention + feedforward
