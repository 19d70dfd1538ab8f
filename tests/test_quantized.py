"""Quantized models count like their float twins and are sized by the bytes they hold.

References that are not this counter: torchvision's published ``_ops`` and ``num_params``
of its quantized weights, the float twin's own ``parameters()``, and the bytes of
``torch.save(model.state_dict())``. Quantized forwards run for real (packed parameters
have no meta kernels); they are small and fast on the CPU.
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterator

import pytest
import torch
import torchvision
from torch import nn

from pytest_modelbudget.core.counting.count import count
from pytest_modelbudget.core.counting.held import unpacked

# torch 2.14 deprecates torch.ao quantization and creating quantized tensors; torchvision's
# quantized models and quantize_dynamic still use both.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions.*:UserWarning"),
    pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning"),
    # torchvision quantizes an uncalibrated model when no weights are loaded.
    pytest.mark.filterwarnings("ignore:must run observer before calling calculate_qparams:UserWarning"),
]


@pytest.fixture(autouse=True)
def fbgemm_engine() -> Iterator[None]:
    """torchvision's quantized builders switch the global engine (qnnpack for mobilenets);
    each test here starts on fbgemm, the x86 engine, and leaves the setting as it found it."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = "fbgemm"
    yield
    torch.backends.quantized.engine = before


QUANTIZED_MODELS = sorted(n for n in torchvision.models.list_models() if n.startswith("quantized_"))


def serialized_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(buffer.getvalue())


def architecture_kwargs(name: str) -> dict[str, object]:
    """What the builder sets when it loads the DEFAULT weights (and then keeps)."""
    if name.endswith(("googlenet", "inception_v3")):
        return {"transform_input": True, "aux_logits": False, "init_weights": False}
    return {}


def folded_batch_norm_channels(model: nn.Module) -> int:
    """Quantization folds each BatchNorm into the conv before it: 2C params become a C bias."""
    return sum(m.num_features for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def test_the_quantized_zoo_is_all_there() -> None:
    assert len(QUANTIZED_MODELS) == 12


@pytest.mark.slow
@pytest.mark.parametrize("name", QUANTIZED_MODELS)
def test_torchvision_quantized_models_count_like_their_float_twins(name: str) -> None:
    weights = torchvision.models.get_model_weights(name).DEFAULT
    kwargs = architecture_kwargs(name)
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, quantize=True, **kwargs).eval()
    size = int(weights.transforms().crop_size[0])
    counts = count(model, (torch.randn(1, 3, size, size),))

    assert round(counts.macs / 1e9, 3) == weights.meta["_ops"], f"{counts.macs:,} MACs"
    assert counts.uncounted == {}
    assert counts.macs_by_dtype == {"int8": counts.macs}  # every MAC an int8 kernel
    # Params: what the packed parameters hold, which is the float twin's parameters less
    # one per folded BatchNorm channel (its weight and bias became the conv's bias).
    twin = torchvision.models.get_model(name.removeprefix("quantized_"), weights=None, **kwargs)
    twin_params = sum(p.numel() for p in twin.parameters())
    assert counts.params == twin_params - folded_batch_norm_channels(twin)
    if name != "quantized_inception_v3":  # its published count keeps AuxLogits, which the builder drops
        assert twin_params == weights.meta["num_params"]
    # Size: the bytes really held (int8 weights, scales, zero points, float biases).
    assert counts.size_bytes == pytest.approx(serialized_bytes(model), rel=0.10)
    assert counts.size_by_dtype["qint8"] > 0.9 * counts.params


class Tagger(nn.Module):
    """Embeddings, a two-layer bidirectional LSTM and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(1000, 64)
        self.lstm = nn.LSTM(64, 128, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(256, 20)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.embed(tokens))[0])


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
    ).eval()


DYNAMIC = [
    ("mlp", mlp, (torch.randn(4, 512),), {nn.Linear}),
    ("lstm", lambda: Tagger().eval(), (torch.zeros(2, 16, dtype=torch.long),), {nn.LSTM, nn.Linear}),
]


@pytest.mark.parametrize(("label", "build", "inputs", "kinds"), DYNAMIC, ids=[d[0] for d in DYNAMIC])
def test_dynamic_quantization_counts_like_the_float_twin(
    label: str, build: object, inputs: tuple[torch.Tensor, ...], kinds: set[type[nn.Module]]
) -> None:
    float_model = build()  # type: ignore[operator]
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(float_model), kinds, dtype=torch.qint8)
    twin, counts = count(float_model, inputs), count(quantized, inputs)

    assert (counts.macs, counts.params) == (twin.macs, twin.params)
    assert counts.uncounted == {}
    assert counts.macs_by_dtype["int8"] > 0  # dynamic kernels quantize activations inside
    assert counts.size_bytes == pytest.approx(serialized_bytes(quantized), rel=0.10)
    assert counts.size_bytes < 0.5 * twin.size_bytes


@pytest.mark.parametrize("config", ["Int8WeightOnlyConfig", "Int8DynamicActivationInt8WeightConfig"])
def test_torchao_int8_models_count_like_the_float_twin(config: str) -> None:
    torchao = pytest.importorskip("torchao.quantization")
    x = torch.randn(4, 512)
    model = mlp()
    torchao.quantize_(model, getattr(torchao, config)())
    twin, counts = count(mlp(), (x,)), count(model, (x,))

    assert (counts.macs, counts.params) == (twin.macs, twin.params)
    assert counts.size_bytes == pytest.approx(serialized_bytes(model), rel=0.10)
    # Sized by the int8 data the tensor subclass holds, not its logical float32 dtype.
    assert counts.size_by_dtype["int8"] >= 512 * 512 * 2 + 512 * 10
    # Weight-only dequantizes and multiplies in float; dynamic multiplies int8 by int8.
    expected = "float32" if config == "Int8WeightOnlyConfig" else "int8"
    assert counts.macs_by_dtype == {expected: counts.macs}
    # Counted where it runs: torchao picks its kernels by device (meta would take another path).
    assert counts.executed_on == "cpu" and "tensor subclasses" in counts.meta_refused
    # On meta when asked: its int8 matmuls in out_dtype (a higher-order operator) are counted.
    assert count(model, (x,), execution="meta").macs == twin.macs


def test_quantized_conv_and_linear_formulas_match_the_float_ops() -> None:
    torch.manual_seed(0)
    layers = nn.Sequential(
        nn.Conv2d(8, 16, 3, groups=2, padding=1),
        nn.ConvTranspose2d(16, 8, 2, stride=2),
        nn.Flatten(),
        nn.Linear(8 * 16 * 16, 10),
    ).eval()
    x = torch.randn(2, 8, 8, 8)
    quantized = torch.ao.nn.quantized
    q = nn.Sequential(
        torch.ao.quantization.QuantStub(),
        quantized.Conv2d(8, 16, 3, groups=2, padding=1),
        quantized.ConvTranspose2d(16, 8, 2, stride=2),
        nn.Flatten(),
        quantized.Linear(8 * 16 * 16, 10),
        torch.ao.quantization.DeQuantStub(),
    ).eval()
    q[0] = torch.ao.nn.quantized.Quantize(0.1, 0, torch.quint8)
    float_counts, counts = count(layers, (x,)), count(q, (x,))
    # Analytic: grouped conv 2*16*8*8 outputs x (8/2)*3*3; transposed 2*16*8*8 inputs x 8*2*2;
    # linear 2 x 2048 x 10.
    assert float_counts.macs == 2 * 16 * 64 * 36 + 2 * 16 * 64 * 32 + 2 * 2048 * 10
    assert counts.macs == float_counts.macs
    assert counts.modules["1"].macs == float_counts.modules["0"].macs  # attributed per module


def snapshot(value: object) -> object:
    """A comparable copy: quantized tensors by their integers, packed parameters by what they hold."""
    if isinstance(value, torch.Tensor) and hasattr(value, "__tensor_flatten__"):  # torchao
        return ("subclass", [snapshot(getattr(value, name)) for name in value.__tensor_flatten__()[0]])
    if isinstance(value, torch.Tensor):
        return ("q", value.int_repr().clone(), value.dtype) if value.is_quantized else value.detach().clone()
    if isinstance(value, torch.ScriptObject):
        return ("packed", [snapshot(t) for t in unpacked(value)])
    return value


def same(old: object, new: object) -> bool:
    if isinstance(old, torch.Tensor):
        return isinstance(new, torch.Tensor) and torch.equal(old, new)
    if isinstance(old, (tuple, list)):
        return (
            isinstance(new, type(old))
            and len(old) == len(new)
            and all(same(a, b) for a, b in zip(old, new, strict=True))
        )
    return old == new


def state(model: nn.Module) -> dict[str, object]:
    return {key: snapshot(value) for key, value in model.state_dict().items()}


def test_quantized_models_are_left_as_they_were() -> None:
    static = torchvision.models.quantization.mobilenet_v2(weights=None, quantize=True).eval()
    dynamic = torch.ao.quantization.quantize_dynamic(Tagger().eval(), {nn.LSTM, nn.Linear})
    torchao = pytest.importorskip("torchao.quantization")
    subclassed = mlp()
    torchao.quantize_(subclassed, torchao.Int8DynamicActivationInt8WeightConfig())
    for model, inputs in (
        (static, (torch.randn(1, 3, 64, 64),)),
        (dynamic, (torch.zeros(2, 5, dtype=torch.long),)),
        (subclassed, (torch.randn(2, 512),)),
    ):
        before = state(model)
        count(model, inputs)
        after = state(model)
        assert before.keys() == after.keys()
        assert all(same(before[key], after[key]) for key in before), model
        assert not model.training


def test_autocast_counts_in_the_dtype_autocast_picks() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()
    x = torch.randn(2, 3, 8, 8)
    plain, cast = count(model, (x,)), count(model, (x,), autocast="bfloat16")
    assert cast.macs == plain.macs
    assert plain.macs_by_dtype == {"float32": plain.macs}
    assert cast.macs_by_dtype == {"bfloat16": plain.macs}
    assert cast.executed_on == "cpu"  # autocast acts on real tensors only
    assert next(model.parameters()).dtype == torch.float32


# -- end to end: a quantized model's budgets through pytest -------------------------------

QUANTIZED_PROJECT = """
import copy
from collections.abc import Iterator
import os
import pytest
import torch
from torch import nn

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


def quantized_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear})
    if os.environ.get("FALLBACK"):
        quantized[4] = model[4]  # the head left in float, as a careless change to the recipe would
    return quantized


@pytest.mark.model_budget(max_size="40 KB")
def test_int8_mlp(model_budget):
    model_budget(quantized_mlp(), torch.randn(4, 64))


@pytest.mark.model_budget(max_float_macs=0)
def test_no_float_macs(model_budget):
    model_budget(quantized_mlp(), torch.randn(4, 64))
"""


def test_a_quantized_model_records_its_dtypes_and_catches_a_fallback_to_float(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_quantized_model=QUANTIZED_PROJECT)
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    result = pytester.runpytest_subprocess("--update-budgets", "--budget-json=report.json")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["test *MACs*MAC dtypes*params*", "test_quantized_model.py::test_int8_mlp *int8 *"]
    )
    stored = (pytester.path / "budgets.yaml").read_text()
    # 4 rows x (64x64 + 64x64 + 64x8) MACs, all in int8 kernels.
    assert "    macs: 34816\n    float_macs: 0\n" in stored
    assert "    macs_by_dtype:\n      int8: 34816\n" in stored
    calls = json.loads((pytester.path / "report.json").read_text())["calls"]
    assert calls[0]["macs_by_dtype"] == {"int8": 34816}

    # The head left in float: the same MACs and params, but 4 x 64 x 8 of them now float,
    # past the baseline's 0 (no marker needed) and past the marker's hard 0.
    monkeypatch.setenv("FALLBACK", "1")
    result = pytester.runpytest_subprocess("--model-budget")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*model budget exceeded for test_quantized_model.py::test_int8_mlp:",
            "*float_macs 2.05 k > baseline 0 (+inf%)",
            "*model budget exceeded for test_quantized_model.py::test_no_float_macs:",
            "*float_macs 2.05 k > limit (marker) 0 (+inf%)",
        ]
    )


def test_a_quantized_conv_add_counts_its_convolution() -> None:
    from pytest_modelbudget.core.counting.formulas import mac_formula

    weight = torch.quantize_per_tensor(torch.randn(16, 8, 3, 3), 0.1, 0, torch.qint8)
    packed = torch.ops.quantized.conv2d_prepack(weight, None, [1, 1], [1, 1], [1, 1], 1)
    x = torch.quantize_per_tensor(torch.randn(2, 8, 10, 10), 0.1, 128, torch.quint8)
    out = torch.empty(2, 16, 10, 10)
    formula = mac_formula(torch.ops.quantized.conv2d_add.default)
    assert formula is not None
    # (qx, qaccum, packed weight, ...): 2*16*10*10 outputs x 8*3*3; the addition is no MAC.
    assert formula(x, x, packed, 0.1, 0, out=out) == 2 * 16 * 100 * 72


def test_dynamic_float16_rnn_counts_in_float16() -> None:
    quantized = torch.ao.quantization.quantize_dynamic(Tagger().eval(), {nn.LSTM}, dtype=torch.float16)
    counts = count(quantized, (torch.zeros(2, 5, dtype=torch.long),))
    assert counts.macs_by_dtype["float16"] > counts.macs_by_dtype["float32"]  # the LSTM, then the head


def test_a_formula_that_fails_is_reported_as_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    from pytest_modelbudget.core.counting import op_facts
    from pytest_modelbudget.core.counting.formulas import registry as mac_formulas
    from pytest_modelbudget.errors import MeasurementError

    def broken(*_: object, **__: object) -> int:
        raise ZeroDivisionError("a bug in a formula")

    monkeypatch.setitem(mac_formulas._FORMULAS, torch.ops.aten.addmm, broken)
    monkeypatch.setattr(op_facts, "_OP_INFO", {})  # looked up afresh
    with pytest.raises(
        MeasurementError, match=r"internal error in pytest-modelbudget: the MAC formula of aten\.addmm"
    ):
        count(nn.Linear(4, 2), (torch.randn(3, 4),))


def test_torchao_float8_weights_are_sized_as_float8() -> None:
    torchao = pytest.importorskip("torchao.quantization")
    x = torch.randn(4, 512, dtype=torch.bfloat16)
    model = mlp().to(torch.bfloat16)
    torchao.quantize_(model, torchao.Float8WeightOnlyConfig())
    twin, counts = count(mlp().to(torch.bfloat16), (x,)), count(model, (x,))

    assert (counts.macs, counts.params) == (twin.macs, twin.params)
    assert counts.size_by_dtype["float8_e4m3fn"] == 512 * 512 * 2 + 512 * 10  # one byte a weight
    assert counts.size_bytes == pytest.approx(serialized_bytes(model), rel=0.10)
    assert counts.macs_by_dtype == {"bfloat16": counts.macs}  # weight-only: dequantized to bfloat16
