"""Every op family against numbers worked out by hand, on meta and on real (CPU) tensors.

The expected numbers are written out from the convention in mac_formulas.py, never read
back from the counter: a convolution costs ``numel(output) * C_in/groups * prod(kernel)``
(a transposed one ``numel(input) * C_out/groups * prod(kernel)``), a matmul the product
of its dimensions, attention ``Q @ K^T`` plus ``P @ V`` at full size, an RNN each weight
matrix once per token and direction. Each count runs with ``execution="meta"`` and
``execution="real"``, which must agree: they reach different kernels (fused CPU fast
paths on real, decompositions on meta).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytest_modelbudget.core.counting import shape_rules
from pytest_modelbudget.core.counting.count import Counts, count
from pytest_modelbudget.errors import MeasurementError

aten = torch.ops.aten
EXECUTIONS = ["meta", "real"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Fn(nn.Module):
    """A module whose forward is a plain function: counts functional code."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def counted(model: nn.Module, *args: Any, execution: str, **kwargs: Any) -> Counts:
    torch.manual_seed(0)
    return count(model, args, kwargs, execution=execution)


def r(*shape: int, **options: Any) -> torch.Tensor:
    return torch.randn(*shape, **options)


# --- convolutions --------------------------------------------------------------------

CONVOLUTIONS = {
    # out [2,6,8]: 96 outputs x (4 in-channels x 3 taps)
    "conv1d": (lambda: nn.Conv1d(4, 6, 3), (2, 4, 10), 96 * 4 * 3),
    # out [2,8,8,8]: 1024 outputs x (4/2 channels per group x 9 taps)
    "conv2d grouped": (lambda: nn.Conv2d(4, 8, 3, groups=2), (2, 4, 10, 10), 1024 * 2 * 9),
    # out [1,8,6,6]: 288 outputs x (1 channel per group x 9 taps)
    "conv2d depthwise": (lambda: nn.Conv2d(8, 8, 3, padding=1, groups=8), (1, 8, 6, 6), 288 * 9),
    # out side (9 + 2*1 - 2*(3-1) - 1) // 2 + 1 = 4, so [1,4,4,4]: 64 x (3 x 9)
    "conv2d strided dilated": (
        lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=2),
        (1, 3, 9, 9),
        64 * 3 * 9,
    ),
    # the bias is an addition, not a MAC
    "conv2d no bias": (lambda: nn.Conv2d(3, 4, 3, bias=False), (1, 3, 5, 5), 4 * 3 * 3 * 3 * 9),
    # out [1,4,3,3,3]: 108 outputs x (2 x 27)
    "conv3d": (lambda: nn.Conv3d(2, 4, 3), (1, 2, 5, 5, 5), 108 * 2 * 27),
    # 80 inputs, each spread over 6 out-channels x 3 taps
    "conv_transpose1d": (lambda: nn.ConvTranspose1d(4, 6, 3, stride=2), (2, 4, 10), 80 * 6 * 3),
    # 200 inputs x (6/2 out-channels per group x 9 taps)
    "conv_transpose2d grouped": (
        lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2),
        (2, 4, 5, 5),
        200 * 3 * 9,
    ),
    # 54 inputs x (4 x 27)
    "conv_transpose3d": (lambda: nn.ConvTranspose3d(2, 4, 3, stride=2), (1, 2, 3, 3, 3), 54 * 4 * 27),
}


@pytest.mark.parametrize("execution", EXECUTIONS)
@pytest.mark.parametrize("case", list(CONVOLUTIONS))
def test_convolutions(case: str, execution: str) -> None:
    build, shape, expected = CONVOLUTIONS[case]
    counts = counted(build(), r(*shape), execution=execution)
    assert counts.macs == expected
    assert counts.uncounted == {}


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_functional_convolution(execution: str) -> None:
    weight = r(5, 3, 3, 3)
    counts = counted(Fn(lambda x: F.conv2d(x, weight, padding=1)), r(1, 3, 4, 4), execution=execution)
    assert counts.macs == (5 * 4 * 4) * 27


# --- linear and the matmul family ----------------------------------------------------

MATMULS = {
    "mm": (torch.mm, [(3, 5), (5, 4)], 3 * 5 * 4),
    "addmm": (lambda b, x, w: torch.addmm(b, x, w), [(4,), (3, 5), (5, 4)], 3 * 5 * 4),
    "bmm": (torch.bmm, [(2, 3, 5), (2, 5, 4)], 2 * 3 * 5 * 4),
    "baddbmm": (torch.baddbmm, [(2, 3, 4), (2, 3, 5), (2, 5, 4)], 2 * 3 * 5 * 4),
    "addbmm": (torch.addbmm, [(3, 4), (2, 3, 5), (2, 5, 4)], 2 * 3 * 5 * 4),
    "mv": (torch.mv, [(3, 5), (5,)], 3 * 5),
    "addmv": (torch.addmv, [(3,), (3, 5), (5,)], 3 * 5),
    "dot": (torch.dot, [(5,), (5,)], 5),
    # torch.matmul over the ranks it accepts
    "matmul 1x1": (torch.matmul, [(5,), (5,)], 5),
    "matmul 2x1": (torch.matmul, [(3, 5), (5,)], 3 * 5),
    "matmul 1x2": (torch.matmul, [(5,), (5, 4)], 5 * 4),
    "matmul 2x2": (torch.matmul, [(3, 5), (5, 4)], 3 * 5 * 4),
    "matmul 3x1": (torch.matmul, [(2, 3, 5), (5,)], 2 * 3 * 5),
    "matmul 1x3": (torch.matmul, [(5,), (2, 5, 4)], 2 * 5 * 4),
    "matmul 3x2": (torch.matmul, [(2, 3, 5), (5, 4)], 2 * 3 * 5 * 4),
    "matmul 2x3": (torch.matmul, [(3, 5), (2, 5, 4)], 2 * 3 * 5 * 4),
    "matmul 3x3": (torch.matmul, [(2, 3, 5), (2, 5, 4)], 2 * 3 * 5 * 4),
    "matmul 4x4": (torch.matmul, [(2, 2, 3, 5), (2, 2, 5, 4)], 4 * 3 * 5 * 4),
    # batch dims broadcast to [2,3]: six [3,5]@[5,4] products
    "matmul 4x3 broadcast": (torch.matmul, [(2, 1, 3, 5), (3, 5, 4)], 6 * 3 * 5 * 4),
    "@": (lambda a, b: a @ b, [(2, 3, 5), (5, 4)], 2 * 3 * 5 * 4),
    "einsum bmm": (lambda a, b: torch.einsum("bij,bjk->bik", a, b), [(2, 3, 5), (2, 5, 4)], 120),
    "einsum attention scores": (
        lambda q, k: torch.einsum("bhqd,bhkd->bhqk", q, k),
        [(2, 4, 8, 16), (2, 4, 10, 16)],
        2 * 4 * 8 * 10 * 16,
    ),
    "einsum contraction to scalars": (
        lambda a, b: torch.einsum("bij,bij->b", a, b),
        [(2, 3, 5), (2, 3, 5)],
        2 * 3 * 5,
    ),
    # An outer product has no accumulation: ATen runs it as a pointwise mul, no MACs.
    "einsum outer product": (lambda a, b: torch.einsum("i,j->ij", a, b), [(3,), (4,)], 0),
    "F.linear": (F.linear, [(2, 3, 5), (4, 5), (4,)], 2 * 3 * 5 * 4),
    "F.linear no bias": (F.linear, [(2, 3, 5), (4, 5)], 2 * 3 * 5 * 4),
    "F.linear 1-d input": (F.linear, [(5,), (4, 5), (4,)], 5 * 4),
    "F.bilinear": (F.bilinear, [(2, 3), (2, 4), (5, 3, 4), (5,)], 2 * 5 * 3 * 4),
}


@pytest.mark.parametrize("execution", EXECUTIONS)
@pytest.mark.parametrize("case", list(MATMULS))
def test_matmul_family(case: str, execution: str) -> None:
    fn, shapes, expected = MATMULS[case]
    counts = counted(Fn(fn), *(r(*s) for s in shapes), execution=execution)
    assert counts.macs == expected
    assert counts.uncounted == {}


@pytest.mark.parametrize("execution", EXECUTIONS)
@pytest.mark.parametrize(("shape", "expected"), [((3, 5), 60), ((2, 3, 5), 120), ((5,), 20)])
def test_linear_module(shape: tuple[int, ...], expected: int, execution: str) -> None:
    assert counted(nn.Linear(5, 4), r(*shape), execution=execution).macs == expected


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_out_variant(execution: str) -> None:
    out = torch.empty(3, 4)
    counts = counted(Fn(lambda a, b: torch.mm(a, b, out=out)), r(3, 5), r(5, 4), execution=execution)
    assert counts.macs == 60


# --- attention -----------------------------------------------------------------------

# q [2,4,8,16], k [2,4,10,16], v [2,4,10,12]: 8 (batch x head) pairs of 8 queries x 10
# keys; Q @ K^T is 16 deep and P @ V 12 deep.
SDPA_MACS = 8 * 8 * 10 * (16 + 12)


@pytest.mark.parametrize("execution", EXECUTIONS)
@pytest.mark.parametrize(
    "options",
    [{}, {"attn_mask": "float"}, {"attn_mask": "bool"}, {"dropout_p": 0.0, "scale": 0.5}],
    ids=["plain", "float mask", "bool mask", "scale"],
)
def test_sdpa(options: dict[str, Any], execution: str) -> None:
    masks = {"float": r(8, 10), "bool": torch.ones(8, 10, dtype=torch.bool).tril()}
    if "attn_mask" in options:
        options = {**options, "attn_mask": masks[options["attn_mask"]]}
    q, k, v = r(2, 4, 8, 16), r(2, 4, 10, 16), r(2, 4, 10, 12)
    counts = counted(Fn(F.scaled_dot_product_attention), q, k, v, execution=execution, **options)
    assert counts.macs == SDPA_MACS
    assert counts.uncounted == {}


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_sdpa_causal_counts_the_dense_product(execution: str) -> None:
    q, k, v = r(2, 4, 8, 16), r(2, 4, 8, 16), r(2, 4, 8, 12)
    counts = counted(Fn(F.scaled_dot_product_attention), q, k, v, is_causal=True, execution=execution)
    assert counts.macs == 8 * 8 * 8 * (16 + 12)


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_sdpa_grouped_query_attention(execution: str) -> None:
    # 8 query heads share 4 key/value heads; each query head still sees all 10 keys.
    q, k, v = r(2, 8, 8, 16), r(2, 4, 10, 16), r(2, 4, 10, 12)
    counts = counted(Fn(F.scaled_dot_product_attention), q, k, v, enable_gqa=True, execution=execution)
    assert counts.macs == 16 * 8 * 10 * (16 + 12)


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_sdpa_three_dimensional(execution: str) -> None:
    # No head dim: the CPU kernel is the fused flash one, meta decomposes to bmm.
    counts = counted(
        Fn(F.scaled_dot_product_attention), r(4, 8, 16), r(4, 10, 16), r(4, 10, 16), execution=execution
    )
    assert counts.macs == 4 * 8 * 10 * (16 + 16)


# nn.MultiheadAttention(16, 4) on x [2,5,16], self-attention, batch first:
#   in-projection  10 tokens x 16 -> 48       7,680
#   attention      2 x 5 x 5 x (16 + 16)      1,600  (summed over the 4 heads of 4)
#   out-projection 10 tokens x 16 -> 16       2,560
MHA_MACS = 7_680 + 1_600 + 2_560


def _mha() -> nn.MultiheadAttention:
    torch.manual_seed(0)
    return nn.MultiheadAttention(16, 4, batch_first=True)


@pytest.mark.parametrize("execution", EXECUTIONS)
@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_train(execution: str, need_weights: bool) -> None:
    x = r(2, 5, 16)
    counts = counted(_mha().train(), x, x, x, need_weights=need_weights, execution=execution)
    assert counts.macs == MHA_MACS


@pytest.mark.parametrize("execution", EXECUTIONS)
@pytest.mark.parametrize("no_grad", [False, True])
def test_multihead_attention_eval(execution: str, no_grad: bool) -> None:
    x = r(2, 5, 16)
    with torch.no_grad() if no_grad else torch.enable_grad():
        counts = counted(_mha().eval(), x, x, x, execution=execution)
    assert counts.macs == MHA_MACS
    ops = {op.op for op in counts.ops}
    # On CPU the inference fast path is one fused kernel; meta tensors take the slow path.
    assert ("aten._native_multi_head_attention" in ops) == (execution == "real")


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_multihead_cross_attention_with_other_key_and_value_sizes(execution: str) -> None:
    # query [2,5,16], key [2,7,8], value [2,7,6]
    mha = nn.MultiheadAttention(16, 4, kdim=8, vdim=6, batch_first=True).eval()
    expected = (
        10 * 16 * 16  # q projection
        + 14 * 8 * 16  # k projection
        + 14 * 6 * 16  # v projection
        + 2 * 5 * 7 * (16 + 16)  # attention
        + 10 * 16 * 16  # out projection
    )
    counts = counted(mha, r(2, 5, 16), r(2, 7, 8), r(2, 7, 6), execution=execution)
    assert counts.macs == expected == 10_496


# nn.TransformerEncoderLayer(16, 4, dim_feedforward=32) on [2,5,16]: the attention block
# above plus a 16 -> 32 -> 16 MLP on 10 tokens (2 x 10 x 16 x 32).
ENCODER_MACS = MHA_MACS + 2 * 10 * 16 * 32


@pytest.mark.parametrize("execution", EXECUTIONS)
@pytest.mark.parametrize("train", [True, False])
def test_transformer_encoder_layer(execution: str, train: bool) -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True).train(train)
    counts = counted(layer, r(2, 5, 16), execution=execution)
    assert counts.macs == ENCODER_MACS
    fused = "aten._transformer_encoder_layer_fwd" in {op.op for op in counts.ops}
    assert fused == (execution == "real" and not train)


# --- recurrent -----------------------------------------------------------------------

# 15 tokens (5 steps x batch 3), input 8, hidden 16, 2 layers, both directions; each
# direction applies W_ih and W_hh once per token:
#   LSTM (4 gates): layer 0  2 x 64 x (8 + 16) = 3,072   layer 1  2 x 64 x (32 + 16) = 6,144
#   GRU  (3 gates): layer 0  2 x 48 x (8 + 16) = 2,304   layer 1  2 x 48 x (32 + 16) = 4,608
RNNS = {
    "lstm": (lambda: nn.LSTM(8, 16, num_layers=2, bidirectional=True), 15 * (3_072 + 6_144)),
    "gru": (lambda: nn.GRU(8, 16, num_layers=2, bidirectional=True), 15 * (2_304 + 4_608)),
    # one gate, one direction: 16 x (8 + 16) + 16 x (16 + 16)
    "rnn tanh": (lambda: nn.RNN(8, 16, num_layers=2), 15 * (384 + 512)),
    # W_ih [64,8], W_hh [64,4] (the hidden state is projected to 4), W_hr [4,16]
    "lstm projected": (lambda: nn.LSTM(8, 16, proj_size=4), 15 * (512 + 256 + 64)),
}


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("execution", EXECUTIONS)
@pytest.mark.parametrize("case", list(RNNS))
def test_recurrent(case: str, execution: str) -> None:
    build, expected = RNNS[case]
    counts = counted(build(), r(5, 3, 8), execution=execution)
    assert counts.macs == expected
    assert counts.executed_on == ("meta" if execution == "meta" else "cpu")


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_recurrent_batch_first_with_initial_state(execution: str) -> None:
    lstm = nn.LSTM(8, 16, num_layers=2, bidirectional=True, batch_first=True)
    state = (r(4, 3, 16), r(4, 3, 16))
    counts = counted(lstm, r(3, 5, 8), state, execution=execution)
    assert counts.macs == RNNS["lstm"][1]


@pytest.mark.parametrize("execution", EXECUTIONS)
@pytest.mark.parametrize(
    ("cell", "expected"),
    [(nn.LSTMCell, 3 * 64 * (8 + 16)), (nn.GRUCell, 3 * 48 * (8 + 16)), (nn.RNNCell, 3 * 16 * (8 + 16))],
)
def test_recurrent_cells(cell: type[nn.Module], expected: int, execution: str) -> None:
    assert counted(cell(8, 16), r(3, 8), execution=execution).macs == expected


# --- what is not counted -------------------------------------------------------------


@pytest.mark.parametrize("execution", EXECUTIONS)
@pytest.mark.parametrize(
    ("fn", "shapes", "op"),
    [
        (torch.fft.fft, [(16,)], "aten._fft_r2c"),
        (torch.linalg.inv, [(4, 4)], "aten.linalg_inv_ex"),
        (torch.cdist, [(5, 3), (6, 3)], "aten._cdist_forward"),
    ],
    ids=["fft", "linalg.inv", "cdist"],
)
def test_arithmetic_without_a_formula_is_listed(fn: Any, shapes: Any, op: str, execution: str) -> None:
    def twice(*args: torch.Tensor) -> Any:
        return fn(*args), fn(*args)

    counts = counted(Fn(twice), *(r(*s) for s in shapes), execution=execution)
    assert counts.uncounted == {op: 2}
    assert counts.macs == 0


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_data_movement_is_neither_counted_nor_listed(execution: str) -> None:
    def shuffle(x: torch.Tensor) -> torch.Tensor:
        parts = [
            x.view(4, 3),
            x.t().contiguous().reshape(4, 3),
            x.permute(1, 0).flatten().unflatten(0, (4, 3)),
            x.unsqueeze(0).squeeze(0).expand(1, 3, 4).reshape(4, 3),
            x[:, ::2].repeat(1, 2).transpose(0, 1).clone(),
            x.index_select(1, torch.tensor([0, 1, 2, 3])).view(4, 3),
            torch.stack([x, x]).select(0, 1).narrow(0, 0, 3).reshape(4, 3),
        ]
        for part in parts:
            part.unsqueeze_(0).squeeze_(0)
        return torch.cat([*parts, *x.split(2, dim=1)[0].t().chunk(2)], dim=0)

    counts = counted(Fn(shuffle), r(3, 4), execution=execution)
    assert counts.macs == 0
    assert counts.uncounted == {}


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_normalisation_pooling_and_activations_cost_no_macs(execution: str) -> None:
    model = nn.Sequential(
        nn.BatchNorm2d(3),
        nn.GroupNorm(1, 3),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(2),
        nn.Hardswish(),
        nn.Flatten(),
        nn.LayerNorm(12),
        nn.Softmax(-1),
        nn.Dropout(0.5),
    )
    for mode in (model.train(), model.eval()):
        counts = counted(mode, r(2, 3, 8, 8), execution=execution)
        assert (counts.macs, counts.uncounted) == (0, {})


@pytest.mark.parametrize(
    "broken",
    [
        lambda: nn.Sequential(nn.Conv2d(3, 32, 3), nn.BatchNorm2d(64)),
        lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(4, 8, 3)),
        lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.LayerNorm(7)),
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(10, 4)),
    ],
    ids=["batch norm width", "conv channels", "layer norm width", "linear width"],
)
def test_a_model_that_cannot_run_does_not_count(broken: Callable[[], nn.Module]) -> None:
    # Shape shortcuts on meta must not let an inconsistent model through.
    with pytest.raises(MeasurementError, match="cannot run on the meta device"):
        count(broken().eval(), (r(1, 3, 8, 8),), execution="meta")
    with pytest.raises(RuntimeError):
        count(broken().eval(), (r(1, 3, 8, 8),), execution="auto")


# --- per-module breakdown, parameters, sizes -----------------------------------------


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)  # 4*4*9 + 4 = 148 params
        self.bn = nn.BatchNorm2d(4)  # 8 params, 9 buffer elements

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)  # 3*4*9 + 4 = 112 params
        self.blocks = nn.Sequential(Block(), Block())
        self.head = nn.Linear(4 * 8 * 8, 10)  # 2,560 + 10 params
        self.proj = nn.Parameter(torch.randn(10, 3))  # the root's own parameter: 30

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = self.blocks[0](x)  # a module called twice: its MACs count twice, params once
        return self.head(x.flatten(1)) @ self.proj  # the root's own op


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_per_module_breakdown(execution: str) -> None:
    counts = counted(Net(), r(1, 3, 8, 8), execution=execution)
    stem, block_conv, head, root = 256 * 27, 256 * 36, 256 * 10, 10 * 3  # 8x8x4 = 256 outputs

    assert counts.macs == stem + 3 * block_conv + head + root
    assert counts.params == 112 + 2 * 156 + 2570 + 30
    assert counts.buffers == 2 * 9
    top = counts.by_module(1)
    assert {path: stats.macs for path, stats in top.items()} == {
        "": root,
        "stem": stem,
        "blocks": 3 * block_conv,
        "head": head,
    }
    assert {path: stats.params for path, stats in top.items()} == {
        "": 30,
        "stem": 112,
        "blocks": 312,
        "head": 2570,
    }
    second = counts.by_module(2)
    assert (second["blocks.0"].macs, second["blocks.1"].macs) == (2 * block_conv, block_conv)
    assert second["blocks.0"].params == second["blocks.1"].params == 156
    assert counts.by_module(3)["blocks.0.bn"] == counts.modules["blocks.0.bn"]
    assert counts.by_module(0) == {"": counts.by_module(1)[""] + top["stem"] + top["blocks"] + top["head"]}
    assert sum(s.memory_traffic for s in top.values()) == counts.memory_traffic


def test_tied_weights_are_counted_once() -> None:
    class TiedLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(100, 8)
            self.head = nn.Linear(8, 100, bias=False)
            self.head.weight = self.embed.weight

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(tokens))

    counts = count(TiedLM(), (torch.randint(0, 100, (1, 6)),))
    assert counts.params == counts.trainable_params == 800
    assert counts.size_bytes == 800 * 4
    assert counts.macs == 6 * 8 * 100
    assert counts.modules["embed"].params == 800
    assert counts.modules["head"].params == 0  # the first module to hold it owns it


def test_trainable_params_and_sizes_by_dtype() -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(10, 20)
            self.bn = nn.BatchNorm1d(20)
            self.b = nn.Linear(20, 5).to(torch.bfloat16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.bn(self.a(x)).to(torch.bfloat16))

    model = Mixed()
    model.a.bias.requires_grad_(False)
    counts = count(model, (torch.randn(3, 10),), execution="meta")
    assert counts.params == 220 + 40 + 105
    assert counts.trainable_params == 200 + 40 + 105
    assert counts.buffers == 20 + 20 + 1  # running mean and var, num_batches_tracked
    assert counts.size_by_dtype == {"bfloat16": 105 * 2, "float32": (220 + 40 + 40) * 4, "int64": 8}
    assert counts.size_bytes == sum(counts.size_by_dtype.values())


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_half_precision_model(execution: str) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 10)).half()
    counts = counted(model, r(2, 3, 6, 6, dtype=torch.float16), execution=execution)
    assert counts.macs == 2 * 64 * 27 + 2 * 64 * 10
    assert counts.size_by_dtype == {"float16": (112 + 650) * 2}
    assert {op.dtype for op in counts.ops if op.macs} == {"float16"}


# --- memory traffic ------------------------------------------------------------------


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_memory_traffic_of_a_linear_layer(execution: str) -> None:
    # addmm reads x [3,5], W [4,5] and the bias [4] (not the [3,4] it broadcasts to)
    # and writes [3,4]; transposing W is a view and moves nothing.
    counts = counted(nn.Linear(5, 4), r(3, 5), execution=execution)
    assert counts.memory_traffic == (15 + 20 + 4 + 12) * 4
    # A half-precision input and layer: 2 bytes each; the 3-D input is viewed, not copied.
    counts = counted(nn.Linear(5, 4).half(), r(2, 3, 5, dtype=torch.float16), execution="meta")
    assert counts.memory_traffic == (30 + 20 + 4 + 24) * 2


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_memory_traffic_reads_a_broadcast_operand_once(execution: str) -> None:
    # [3,5] + [5]: reads 15 + 5, writes 15, whether b is broadcast by add or expanded.
    implicit = counted(Fn(torch.add), r(3, 5), r(5), execution=execution)
    expanded = counted(Fn(lambda a, b: a + b.expand(3, 5)), r(3, 5), r(5), execution=execution)
    assert implicit.memory_traffic == expanded.memory_traffic == (15 + 5 + 15) * 4


@pytest.mark.parametrize("execution", EXECUTIONS)
def test_memory_traffic_of_in_place_ops(execution: str) -> None:
    # relu_ reads and writes its 10 values, like relu does; x * x reads x once.
    in_place = counted(nn.ReLU(inplace=True), r(10), execution=execution)
    out_of_place = counted(nn.ReLU(), r(10), execution=execution)
    square = counted(Fn(lambda x: x * x), r(10), execution=execution)
    assert in_place.memory_traffic == out_of_place.memory_traffic == square.memory_traffic == 80


# --- CUDA ----------------------------------------------------------------------------


@cuda
def test_cuda_convolutions_and_matmuls() -> None:
    for case in ("conv2d grouped", "conv_transpose2d grouped", "conv3d"):
        build, shape, expected = CONVOLUTIONS[case]
        counts = count(build().cuda(), (r(*shape, device="cuda"),), execution="real")
        assert (counts.macs, counts.executed_on) == (expected, "cuda:0")
    for case in ("matmul 4x3 broadcast", "F.linear", "einsum attention scores"):
        fn, shapes, expected = MATMULS[case]
        counts = count(Fn(fn), tuple(r(*s, device="cuda") for s in shapes), execution="real")
        assert counts.macs == expected


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_attention_kernels(dtype: torch.dtype) -> None:
    # On CUDA, SDPA picks flash / memory-efficient / cuDNN kernels by dtype and shape.
    q, k, v = (r(2, 4, n, 16, device="cuda", dtype=dtype) for n in (8, 10, 10))
    assert count(Fn(F.scaled_dot_product_attention), (q, k, v), execution="real").macs == 8 * 8 * 10 * 32
    mha = _mha().eval().cuda().to(dtype)
    x = r(2, 5, 16, device="cuda", dtype=dtype)
    assert count(mha, (x, x, x), execution="real").macs == MHA_MACS


@cuda
def test_cuda_recurrent() -> None:
    for case in ("lstm", "gru"):
        build, expected = RNNS[case]
        counts = count(build().cuda(), (r(5, 3, 8, device="cuda"),), execution="real")
        assert counts.macs == expected
        assert counts.macs == count(build(), (r(5, 3, 8),), execution="meta").macs


# --- shape rules: the stand-ins for slow meta kernels agree with those kernels -------


def _meta(*shape: int, dtype: torch.dtype = torch.float32, layout: str = "contiguous") -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype, device="meta")
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last if t.dim() == 4 else torch.channels_last_3d)
    if layout == "permuted":  # the same shape, reached by permuting a contiguous tensor
        return torch.empty(shape[::-1], dtype=dtype, device="meta").permute(*range(len(shape) - 1, -1, -1))
    if layout == "sliced":
        return torch.empty((*shape[:-1], 2 * shape[-1]), dtype=dtype, device="meta")[..., ::2]
    return t


def _x(*shape: int, **options: Any) -> Callable[[], torch.Tensor]:
    return lambda: _meta(*shape, **options)


def _offs(groups: int) -> Callable[[], torch.Tensor]:
    return lambda: torch.empty(groups, dtype=torch.int32, device="meta")


IMAGE = (2, 3, 4, 5)
LAYOUTS = ["contiguous", "channels_last"]
UNARY = [getattr(aten, name) for name in shape_rules._UNARY]
UNARY_EXTRA = {
    aten.hardtanh: (-1.0, 1.0),
    aten.leaky_relu: (0.1,),
    aten.elu: (1.0,),
    aten.clamp: (0.0, 6.0),
    aten.clamp_min: (0.0,),
    aten.clamp_max: (6.0,),
}

# (overload, argument makers, keyword arguments): cases each rule must take and get right.
ACCEPTED: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = [
    *(
        (op.default, (_x(*shape, layout=layout, dtype=dtype), *UNARY_EXTRA.get(op, ())), {})
        for op in UNARY
        for shape in (IMAGE, (1, 4, 1, 1))
        for layout in LAYOUTS
        for dtype in (torch.float32, torch.float16)
    ),
    *((op.default, (_x(7), *UNARY_EXTRA.get(op, ())), {}) for op in UNARY),
    *(
        (getattr(aten, f"{op.__name__}_").default, (_x(*IMAGE, layout=layout), *UNARY_EXTRA.get(op, ())), {})
        for op in UNARY
        for layout in LAYOUTS
    ),
    (aten.gelu.default, (_x(*IMAGE),), {"approximate": "tanh"}),
    *(
        (op, (_x(*a, layout=layout), _x(*b, layout=layout if a == b else "contiguous")), {})
        for op in (aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor)
        for a, b in [
            (IMAGE, IMAGE),
            (IMAGE, (2, 3, 1, 1)),
            ((1, 3, 4, 5), (1, 3, 1, 1)),
            (IMAGE, (3, 1, 1)),
            (IMAGE, ()),
        ]
        for layout in LAYOUTS
    ),
    (aten.mul.Tensor, (_x(1, 3, 1, 1), _x(*IMAGE, layout="channels_last")), {}),
    (aten.add.Tensor, (_x(3, 5), _x(5)), {"alpha": 2}),
    (aten.add.Tensor, (_x(5), _x(3, 5)), {}),
    (aten.add_.Tensor, (_x(*IMAGE, layout="channels_last"), _x(2, 3, 1, 1)), {}),
    (aten.sub_.Tensor, (_x(3, 5), _x(5)), {"alpha": 2}),
    (aten.mul_.Tensor, (_x(*IMAGE), _x(*IMAGE)), {}),
    (aten.div_.Tensor, (_x(*IMAGE, layout="channels_last"), _x(*IMAGE, layout="channels_last")), {}),
    *(
        (
            aten.native_batch_norm.default,
            (_x(*shape, layout=layout, dtype=dtype), _x(3), _x(3), _x(3), _x(3), training, 0.1, 1e-5),
            {},
        )
        for shape, layout in [
            (IMAGE, "contiguous"),
            (IMAGE, "channels_last"),
            ((4, 3), "contiguous"),
            ((2, 3, 7), "contiguous"),
            ((2, 3, 2, 2, 2), "channels_last"),
        ]
        for dtype in (torch.float32, torch.bfloat16)
        for training in (False, True)
    ),
    (aten.native_batch_norm.default, (_x(1, 3, 1, 1), None, None, _x(3), _x(3), False, 0.1, 1e-5), {}),
    (aten.native_batch_norm.default, (_x(*IMAGE), None, None, None, None, True, 0.1, 1e-5), {}),
    (
        aten._native_batch_norm_legit_no_training.default,
        (_x(*IMAGE), _x(3), _x(3), _x(3), _x(3), 0.1, 1e-5),
        {},
    ),
    (
        aten._native_batch_norm_legit.default,
        (_x(*IMAGE, layout="channels_last"), _x(3), _x(3), _x(3), _x(3), True, 0.1, 1e-5),
        {},
    ),
    *(
        (
            aten.native_layer_norm.default,
            (_x(*shape, layout=layout, dtype=dtype), normalized, weight, weight, 1e-5),
            {},
        )
        for shape, normalized, layout in [
            ((2, 3, 8), [8], "contiguous"),
            ((2, 3, 8), [3, 8], "contiguous"),
            ((2, 7, 7, 8), [8], "permuted"),
            ((2, 5, 8), [8], "sliced"),
        ]
        for dtype in (torch.float32, torch.float16)
        for weight in (None, _x(*normalized, dtype=dtype))
    ),
    (aten.mm.default, (_x(3, 5), _x(5, 4)), {}),
    (aten.mm.default, (_x(3, 5, layout="permuted"), _x(5, 4, layout="sliced")), {}),
    (aten.addmm.default, (_x(4), _x(3, 5), _x(5, 4, layout="permuted")), {}),
    (aten.addmm.default, (_x(3, 4), _x(3, 5), _x(5, 4)), {"beta": 0.5, "alpha": 2}),
    (
        aten.addmm.default,
        (_x(1, 4, dtype=torch.float16), _x(3, 5, dtype=torch.float16), _x(5, 4, dtype=torch.float16)),
        {},
    ),
    (aten.bmm.default, (_x(2, 3, 5), _x(2, 5, 4)), {}),
    (aten.bmm.default, (_x(2, 3, 5, layout="permuted"), _x(2, 5, 4)), {}),
    (aten.baddbmm.default, (_x(2, 3, 4), _x(2, 3, 5), _x(2, 5, 4)), {}),
    (aten.baddbmm.default, (_x(4), _x(2, 3, 5), _x(2, 5, 4)), {"beta": 0.0}),
    # Grouped matmuls (mixture of experts): in bfloat16, which the meta kernel takes.
    (
        aten._grouped_mm.default,
        (_x(16, 32, dtype=torch.bfloat16), _x(4, 32, 8, dtype=torch.bfloat16), _offs(4)),
        {},
    ),
    (aten._grouped_mm.default, (_x(4, 6, 32, dtype=torch.bfloat16), _x(4, 32, 8, dtype=torch.bfloat16)), {}),
    (
        aten._grouped_mm.default,
        (_x(8, 64, dtype=torch.bfloat16), _x(64, 16, dtype=torch.bfloat16), _offs(4)),
        {},
    ),
    *(
        (
            aten.convolution.default,
            (
                _x(*x, layout=layout),
                _x(*w),
                bias,
                stride,
                padding,
                dilation,
                False,
                [0] * (len(x) - 2),
                groups,
            ),
            {},
        )
        for x, w, bias, stride, padding, dilation, groups in [
            ((2, 4, 10), (6, 4, 3), _x(6), [1], [0], [1], 1),
            ((2, 4, 10, 10), (8, 2, 3, 3), None, [1, 1], [0, 0], [1, 1], 2),
            ((1, 8, 6, 7), (8, 1, 3, 3), _x(8), [2, 1], [1, 1], [1, 2], 8),
            ((1, 3, 9, 9), (4, 3, 3, 3), None, [2, 2], [1, 1], [2, 2], 1),
            ((1, 2, 5, 5, 5), (4, 2, 3, 3, 3), _x(4), [1, 1, 1], [1, 1, 1], [1, 1, 1], 1),
            ((1, 3, 7, 7), (4, 3, 7, 7), None, [1, 1], [0, 0], [1, 1], 1),
        ]
        for layout in (LAYOUTS if len(x) in (4, 5) else ["contiguous"])
    ),
    *(
        (op, (_x(*shape, layout=layout, dtype=dtype), 0.5), {})
        for op in (aten.add.Scalar, aten.sub.Scalar, aten.mul.Scalar, aten.div.Scalar, aten.mul_.Scalar)
        for shape, layout in [(IMAGE, "contiguous"), (IMAGE, "channels_last"), ((3,), "contiguous")]
        for dtype in (torch.float32, torch.bfloat16)
    ),
    (aten.add.Scalar, (_x(3, 5), 2), {"alpha": 3}),
    (aten.add_.Scalar, (_x(3, 5), 2), {}),
    (aten.sub_.Scalar, (_x(3, 5), 2), {}),
    (aten.div_.Scalar, (_x(3, 5), 2), {}),
    *(
        (aten.masked_fill.Scalar, (_x(*IMAGE), mask, -100.0), {})
        for mask in (
            lambda: torch.empty(IMAGE, dtype=torch.bool, device="meta"),
            lambda: torch.empty(4, 5, dtype=torch.bool, device="meta"),
        )
    ),
    *(
        (op, (_x(*shape, layout=layout, dtype=dtype), dim, False), {})
        for op in (aten._softmax.default, aten._log_softmax.default)
        for shape, layout, dim in [
            (IMAGE, "contiguous", -1),
            (IMAGE, "contiguous", 1),
            ((2, 7), "contiguous", 0),
        ]
        for dtype in (torch.float32, torch.float16)
    ),
    (aten._safe_softmax.default, (_x(2, 4, 8, 8), -1), {}),
    (aten._safe_softmax.default, (_x(2, 4, 8, 8, dtype=torch.float16), -1), {}),
    (aten.roll.default, (_x(1, 56, 56, 96), [-3, -3], [1, 2]), {}),
    (aten.roll.default, (_x(2, 7), [1], [0]), {}),
    *(
        (aten.cat.default, (shapes, dim), {})
        for shapes, dim in [
            ([_x(1, 3, 4, 4), _x(1, 5, 4, 4), _x(1, 1, 4, 4)], 1),
            ([_x(2, 3), _x(4, 3)], 0),
            ([_x(2, 3), _x(2, 0)], -1),
            ([_x(1, 3, 4, 4)], 1),
        ]
    ),
    *(
        (aten.mean.dim, (_x(*shape), dims, keepdim), {})
        for shape, dims in [
            (IMAGE, [2, 3]),
            (IMAGE, [-1, -2]),
            (IMAGE, [1]),
            ((1, 4, 1, 1), [2, 3]),
            ((3, 5), [0]),
        ]
        for keepdim in (True, False)
    ),
]

# Cases a rule must leave to the kernel (it would get them wrong or the kernel raises).
DECLINED: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = [
    (aten.relu.default, (_x(*IMAGE, layout="permuted"),), {}),
    (aten.relu.default, (_x(*IMAGE, layout="sliced"),), {}),
    (aten.relu.default, (lambda: torch.empty(3, dtype=torch.int64, device="meta"),), {}),
    (aten.relu_.default, (_x(*IMAGE, layout="sliced"),), {}),
    (aten.add.Tensor, (_x(*IMAGE), _x(*IMAGE, layout="channels_last")), {}),
    (aten.add.Tensor, (_x(*IMAGE), _x(*IMAGE, dtype=torch.float16)), {}),
    (aten.add.Tensor, (_x(3, 5), _x(4)), {}),
    (aten.add.Tensor, (_x(*IMAGE, layout="channels_last"), _x(3, 1, 1, layout="permuted")), {}),
    (aten.div.Tensor, (_x(3, 5), _x(3, 5)), {"rounding_mode": "floor"}),
    (aten.add_.Tensor, (_x(2, 1), _x(2, 5)), {}),
    (aten.native_batch_norm.default, (_x(1, 3), _x(3), _x(3), _x(3), _x(3), True, 0.1, 1e-5), {}),
    (
        aten.native_batch_norm.default,
        (_x(*IMAGE, layout="permuted"), _x(3), _x(3), _x(3), _x(3), False, 0.1, 1e-5),
        {},
    ),
    (aten.native_batch_norm.default, (_x(*IMAGE), _x(4), _x(4), _x(4), _x(4), False, 0.1, 1e-5), {}),
    (aten.native_batch_norm.default, (_x(*IMAGE), None, None, _x(4), _x(4), True, 0.1, 1e-5), {}),
    (
        aten._native_batch_norm_legit_no_training.default,
        (_x(*IMAGE), _x(3), _x(3), _x(2), _x(3), 0.1, 1e-5),
        {},
    ),
    (aten.native_layer_norm.default, (_x(2, 3, 8), [3], None, None, 1e-5), {}),
    (aten.native_layer_norm.default, (_x(2, 3, 8), [8], _x(7), None, 1e-5), {}),
    (aten.mm.default, (_x(3, 5), _x(4, 4)), {}),
    (aten.mm.default, (_x(3, 5), _x(5, 4, dtype=torch.float16)), {}),
    (aten.addmm.default, (_x(3, 5), _x(3, 5), _x(5, 4)), {}),
    (aten.bmm.default, (_x(2, 3, 5), _x(3, 5, 4)), {}),
    (
        aten._grouped_mm.default,
        (_x(16, 32), _x(4, 32, 8, dtype=torch.bfloat16), _offs(4)),
        {},
    ),  # mixed dtypes
    (aten._grouped_mm.default, (_x(16, 32), _x(4, 32, 8)), {}),  # 2D x 3D needs offs
    (aten._grouped_mm.default, (_x(16, 32), _x(4, 32, 8), _offs(4), _x(8)), {}),  # a bias
    (
        aten.convolution.default,
        (_x(1, 3, 5, 5), _x(4, 2, 3, 3), None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1),
        {},
    ),
    (
        aten.convolution.default,
        (_x(1, 3, 2, 2), _x(4, 3, 3, 3), None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1),
        {},
    ),
    (
        aten.convolution.default,
        (_x(1, 4, 5, 5), _x(4, 2, 3, 3), None, [2, 2], [0, 0], [1, 1], True, [1, 1], 1),
        {},
    ),
    (aten.cat.default, ([_x(*IMAGE, layout="channels_last"), _x(*IMAGE, layout="channels_last")], 1), {}),
    (aten.cat.default, ([_x(2, 3), _x(2, 3, dtype=torch.float16)], 0), {}),
    (aten.cat.default, ([_x(2, 3), _x(3, 3)], 1), {}),
    (aten.cat.default, ([_x(2, 3), _x(0)], 0), {}),
    (
        aten.convolution.default,
        (_x(1, 3, 5, 5), _x(4, 3, 3, 3), _x(5), [1, 1], [0, 0], [1, 1], False, [0, 0], 1),
        {},
    ),
    (
        aten.convolution.default,
        (_x(1, 3, 5, 5), _x(4, 3, 3, 3), None, [0, 1], [0, 0], [1, 1], False, [0, 0], 1),
        {},
    ),
    (aten.mul.Scalar, (lambda: torch.empty(3, dtype=torch.int64, device="meta"), 0.5), {}),
    (
        aten.masked_fill.Scalar,
        (_x(4, 5), lambda: torch.empty(3, 4, 5, dtype=torch.bool, device="meta"), 0.0),
        {},
    ),
    (aten._softmax.default, (_x(2, 7, dtype=torch.float16), -1, True), {}),
    (aten._softmax.default, (_x(*IMAGE, layout="channels_last"), 1, False), {}),
    (
        aten.masked_fill.Scalar,
        (
            _x(*IMAGE, layout="channels_last"),
            lambda: torch.empty(IMAGE, dtype=torch.bool, device="meta"),
            0.0,
        ),
        {},
    ),
    (aten._safe_softmax.default, (_x(2, 7), -1), {"dtype": torch.float64}),
    (aten.roll.default, (_x(*IMAGE, layout="channels_last"), [1], [1]), {}),
    (aten.roll.default, (_x(2, 7), [1], []), {}),
    (aten.mean.dim, (_x(*IMAGE, layout="channels_last"), [2, 3], True), {}),
    (aten.mean.dim, (_x(*IMAGE), [1]), {"dtype": torch.float64}),
]


def _materialize(args: Any) -> Any:
    if isinstance(args, (list, tuple)):
        return type(args)(_materialize(a) for a in args)
    return args() if callable(args) else args


def _metadata(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.stride(), value.dtype, value.device.type)
    if isinstance(value, (list, tuple)):
        return [_metadata(v) for v in value]
    return value


def _case_id(case: tuple[Any, ...]) -> str:
    return str(case[0])


@pytest.mark.parametrize("case", ACCEPTED, ids=_case_id)
def test_shape_rule_agrees_with_meta_kernel(case: tuple[Any, ...]) -> None:
    func, makers, kwargs = case
    args = _materialize(makers)
    kernel = func(*args, **kwargs)
    rule = shape_rules.meta_outputs(func, args, kwargs)
    assert rule is not None, "the rule declined a case it is meant to take"
    if func._schema.returns[0].alias_info is not None:  # in place: returns its input
        assert rule is args[0]
    if func.overloadpacket in (
        aten.native_batch_norm,
        aten._native_batch_norm_legit_no_training,
        aten._native_batch_norm_legit,
    ):
        training = func is not aten._native_batch_norm_legit_no_training.default and args[5]
        if not training:
            # Eval: the CPU and CUDA kernels return empty saved statistics, the meta
            # kernel per-channel ones; the rule follows the real kernels.
            assert [_metadata(t) for t in rule[1:]] == [((0,), (1,), t.dtype, "meta") for t in kernel[1:]]
            kernel, rule = kernel[0], rule[0]
    assert _metadata(rule) == _metadata(kernel)


@pytest.mark.parametrize("case", DECLINED, ids=_case_id)
def test_shape_rule_leaves_other_cases_to_the_kernel(case: tuple[Any, ...]) -> None:
    func, makers, kwargs = case
    assert shape_rules.meta_outputs(func, _materialize(makers), kwargs) is None


def test_every_shape_rule_is_checked() -> None:
    assert shape_rules.overloads_with_rules() <= {case[0] for case in ACCEPTED}


def test_real_batch_norm_in_eval_returns_empty_statistics() -> None:
    # What the BatchNorm rule relies on (the counts must match on meta and CPU).
    x, c = torch.randn(2, 3, 4, 4), torch.randn(3)
    for outputs in (
        aten.native_batch_norm.default(x, c, c, c.abs(), c.abs(), False, 0.1, 1e-5),
        aten._native_batch_norm_legit_no_training.default(x, c, c, c.abs(), c.abs(), 0.1, 1e-5),
    ):
        assert [tuple(t.shape) for t in outputs[1:]] == [(0,), (0,)]
