"""`python -m pytest_modelbudget profile`: the table, the suggested marker, and its errors.

Subprocesses are few (each one imports torch): one profile of resnet50, one pytester run
that pastes its marker line into a test, and two runs that check the exit code and the
one-line error of the real command. Everything else calls ``main()`` in-process; the few
``--compile`` runs use the "eager" backend (dynamo's graph capture, no code generation).
"""

from __future__ import annotations

import ast
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_modelbudget.budgets import profile as profile_result
from pytest_modelbudget.budgets.budget import METRICS_BY_NAME, parse_budget
from pytest_modelbudget.cli import main as cli
from pytest_modelbudget.cli import profile

RESNET50_MACS = 4_089_184_256
RESNET50_PARAMS = 25_557_032

MODELS = """
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(100, 16)
        self.blocks = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 4)

    def forward(self, tokens):
        return self.head(self.blocks(self.embed(tokens)))


def build_tiny():
    return TinyNet()


def huge():
    # 10 billion parameters: 40 GB of float32, only ever built on the meta device here.
    return nn.Linear(100_000, 100_000)


class NeedsRealValues(nn.Module):
    def __init__(self):
        super().__init__()
        scale = torch.ones(1).item()  # cannot run on meta: the build falls back to the CPU
        self.fc = nn.Linear(4, 4)
        self.scale = scale

    def forward(self, x):
        return self.fc(x) * self.scale


def raises():
    raise ValueError("boom\\nsecond line")


def returns_int():
    return 3


NOT_CALLABLE = 3


def bad_forward():
    return nn.Linear(5, 3)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        y = self.fc(x)
        if y.sum() > 0:  # data-dependent: dynamo breaks the graph here
            return y.relu()
        return y * 2


class Relu(nn.Module):
    def forward(self, x):
        return torch.relu(x) + 1


def tiny_llama():
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config).eval()
"""
BRANCH_LINE = (
    MODELS.splitlines().index("        if y.sum() > 0:  # data-dependent: dynamo breaks the graph here") + 1
)


def run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_modelbudget", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def resnet50_output(tmp_path_factory: pytest.TempPathFactory) -> str:
    result = run_module(
        "profile", "torchvision.models:resnet50", "--input", "1x3x224x224", cwd=tmp_path_factory.mktemp("cwd")
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module of small models, named ``profile_models``."""
    (tmp_path / "profile_models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "profile_models", raising=False)
    return "profile_models"


def marker_limits(line: str) -> dict[str, str]:
    """The keywords of a pasted ``@pytest.mark.model_budget(...)`` line."""
    call = ast.parse(line.removeprefix("@")).body[0]
    assert isinstance(call, ast.Expr) and isinstance(call.value, ast.Call)
    assert not call.value.args
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.value.keywords if kw.arg}


def test_resnet50_table_totals_and_marker(resnet50_output: str) -> None:
    lines = resnet50_output.splitlines()
    rows = {line.split()[0] for line in lines if line.strip()}
    assert {"conv1", "layer1", "layer2", "layer3", "layer4", "avgpool", "fc", "total"} <= rows
    assert re.search(r"^layer3\s+Sequential\s+7\.1 M\s+1\.46 G\s+35\.8%\s+\S+ MiB$", resnet50_output, re.M)
    assert re.search(r"^fc\s+Linear\s+2\.05 M\s+2\.05 M\s+0\.1%", resnet50_output, re.M)
    assert f"MACs                  4.09 G ({RESNET50_MACS:,})" in resnet50_output
    assert f"params                25.6 M ({RESNET50_PARAMS:,})" in resnet50_output
    assert "FLOPs                 8.18 G (8,178,368,512)" in resnet50_output
    assert "arithmetic intensity" in resnet50_output
    assert "uncounted ops: none" in resnet50_output
    assert lines[-2] == "suggested budget (10% headroom):"
    assert lines[-1] == '@pytest.mark.model_budget(max_macs="4.5G", max_params="28.2M", max_size="113 MB")'


def test_the_suggested_limits_parse_and_leave_the_headroom(resnet50_output: str) -> None:
    size = int(re.search(r"size .*\(([\d,]+) bytes", resnet50_output)[1].replace(",", ""))  # type: ignore[index]
    budget = parse_budget(marker_limits(resnet50_output.splitlines()[-1]))
    measured = {"macs": RESNET50_MACS, "params": RESNET50_PARAMS, "size": size}
    assert set(budget.limits) == set(measured)
    for metric, value in measured.items():
        assert value * 1.10 <= budget.limits[metric] <= value * 1.10 * 1.01


def test_the_pasted_marker_line_passes_a_real_budget_test(
    resnet50_output: str, pytester: pytest.Pytester
) -> None:
    line = resnet50_output.splitlines()[-1]
    tight = ", ".join(
        f'{k}="{float(METRICS_BY_NAME[k.removeprefix("max_")].parse(v)) * 0.8:.0f}"'
        for k, v in marker_limits(line).items()
    )
    pytester.makepyfile(
        test_resnet=f"""
        import pytest
        import torch
        import torchvision


        {line}
        def test_resnet50(model_budget):
            model = torchvision.models.resnet50(weights=None).eval()
            model_budget(model, torch.randn(1, 3, 224, 224))


        # The same limits 20% lower: proves the pasted marker is really enforced.
        @pytest.mark.model_budget({tight})
        def test_resnet50_tight(model_budget):
            model = torchvision.models.resnet50(weights=None).eval()
            model_budget(model, torch.randn(1, 3, 224, 224))
        """
    )
    result = pytester.runpytest_subprocess("--model-budget", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*model budget exceeded for test_resnet.py::test_resnet50_tight*"])


def test_json_output(models: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["profile", f"{models}:build_tiny", "--input", "2x8:int64", "--depth", "2", "--json"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    data = json.loads(out)
    # blocks.0 and blocks.2: 2*8*16*32 each; head: 2*8*16*4
    assert data["totals"]["macs"] == 8192 + 8192 + 1024
    assert data["totals"]["flops"] == 2 * data["totals"]["macs"]
    assert data["totals"]["params"] == 1600 + 544 + 528 + 68
    assert data["inputs"] == [{"shape": [2, 8], "dtype": "int64"}]
    assert data["executed_on"] == "meta"
    paths = [m["path"] for m in data["modules"]]
    assert paths == ["embed", "blocks", "blocks.0", "blocks.1", "blocks.2", "head"]
    blocks = data["modules"][1]
    assert (blocks["type"], blocks["depth"], blocks["macs"]) == ("Sequential", 1, 16384)
    assert blocks["macs_share"] == pytest.approx(16384 / 17408)
    assert (
        data["marker"]
        == '@pytest.mark.model_budget(max_macs="19.2k", max_params="3.02k", max_size="12.1 kB")'
    )
    assert marker_limits(data["marker"]) == data["suggested_budget"]


def test_table_is_indented_by_depth_and_headroom_is_configurable(
    models: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(
        ["profile", f"{models}:TinyNet", "--input", "2x8:int64", "--depth", "2", "--headroom", "0"]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"^blocks +Sequential +1\.07 k +16\.4 k +94\.1%", out, re.M)
    assert re.search(r"^  blocks\.0 +Linear +544 +8\.19 k +47\.1%", out, re.M)
    assert re.search(r"^total +2\.74 k +17\.4 k +100\.0%", out, re.M)
    assert out.splitlines()[-2] == "suggested budget (0% headroom):"
    limits = parse_budget(marker_limits(out.splitlines()[-1])).limits
    assert limits["macs"] >= 17408 and limits["params"] >= 2740


def test_meta_device_profiles_a_model_too_big_to_allocate(
    models: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["profile", f"{models}:huge", "--input", "1x100000", "--device", "meta", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["params"] == 100_000 * 100_000 + 100_000
    assert data["totals"]["macs"] == 100_000 * 100_000
    assert data["totals"]["size_bytes"] == 4 * (100_000 * 100_000 + 100_000)
    assert data["suggested_budget"] == {"max_macs": "11G", "max_params": "11.1G", "max_size": "44.1 GB"}


def test_meta_device_falls_back_to_a_cpu_build_with_a_note(
    models: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["profile", f"{models}:NeedsRealValues", "--input", "2x4", "--device", "meta"])
    out = capsys.readouterr().out
    assert code == 0
    assert "note: cannot build on the meta device (RuntimeError: " in out
    assert "built on the CPU" in out
    assert "MACs                  32 (32)" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nocolon", "--input", "1x3"], "'nocolon' is not MODULE:FACTORY, e.g. torchvision.models:resnet50"),
        (["a:b:c", "--input", "1x3"], "'a:b:c' is not MODULE:FACTORY"),
        (
            ["{m}:TinyNet", "--input", "1xAx3"],
            "--input '1xAx3': 'A' is not a whole number; expected a shape such as 1x3x224x224",
        ),
        (["{m}:TinyNet", "--input", "1x0"], "--input '1x0': dimensions must be 1 or more"),
        (["{m}:TinyNet", "--input", "1x"], "--input '1x': an empty dimension is not a whole number"),
        (
            ["{m}:TinyNet", "--input", "1x3:int65"],
            "--input '1x3:int65': unknown dtype 'int65'; accepted: bfloat16, bool",
        ),
        (["{m}:TinyNet"], "give the model's inputs with --input, e.g. --input 1x3x224x224"),
        (["{m}:TinyNet", "--input", "2", "--depth", "0"], "--depth 0: the table needs at least one level"),
        (["{m}:TinyNet", "--input", "2", "--device", "tpu"], "--device 'tpu' is not one of cpu, meta, cuda"),
        (
            ["{m}:TinyNet", "--input", "2", "--headroom", "lots"],
            "--headroom: 'lots' is not a non-negative number",
        ),
        (
            ["no_such_module_xyz:build", "--input", "2"],
            "cannot import 'no_such_module_xyz': no module named 'no_such_module_xyz'",
        ),
        (
            ["{m}:TinyNett", "--input", "2"],
            "'profile_models' has no attribute 'TinyNett' (did you mean 'TinyNet'?)",
        ),
        (["{m}:TinyNet.nope", "--input", "2"], "'profile_models.TinyNet' has no attribute 'nope'"),
        (["{m}:raises", "--input", "2"], "profile_models:raises() raised ValueError: boom second line"),
        (
            ["{m}:returns_int", "--input", "2"],
            "profile_models:returns_int() returned a value of type int, not a torch.nn.Module",
        ),
        (
            ["{m}:NOT_CALLABLE", "--input", "2"],
            "profile_models:NOT_CALLABLE is a value of type int, not a callable",
        ),
        (
            ["{m}:bad_forward", "--input", "2x4"],
            "the forward of profile_models:bad_forward raised RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x4 and 5x3)",
        ),
        (
            ["{m}:TinyNet", "--input", "2x8"],
            "the forward of profile_models:TinyNet raised RuntimeError: Expected tensor for argument #1 'indices'",
        ),
        (
            ["{m}:Relu", "--input", "2x4", "--compile-backend", "tvmx"],
            "--compile: torch.compile backend 'tvmx' is not available (Invalid backend: 'tvmx'",
        ),
        (
            # A backend of torch's own tests that fails on relu: a model the compiler fails on.
            ["{m}:Relu", "--input", "2x4", "--compile-backend", "relu_compile_error_TESTING_ONLY"],
            "--compile: torch.compile failed on this model (BackendCompilerFailed: ",
        ),
        (
            ["{m}:Relu", "--input", "2x4", "--compile", "--device", "meta"],
            "--compile runs the model: profile it with --device cpu or cuda, not meta",
        ),
        (
            ["{m}:build_tiny", "--input", "2x8:int64", "--optimizer", "adamm"],
            "--optimizer adamm: use one of sgd, sgd-momentum, adam, adamw,",
        ),
        (
            ["{m}:Relu", "--input", "2x4", "--train"],
            "--train: the model has no parameter with requires_grad=True",
        ),
    ],
)
def test_errors_are_one_line_with_exit_code_2(
    models: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code = cli.main(["profile", *(arg.format(m=models) for arg in args)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"python -m pytest_modelbudget profile: error: {message}")


def test_an_unimportable_module_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_models.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        profile.ProfileError,
        match="importing 'broken_models' failed: ModuleNotFoundError: No module named 'no_such_dependency_xyz'",
    ):
        profile.load_factory("broken_models", "build")
    (tmp_path / "syntax_models.py").write_text("def build(:\n")
    with pytest.raises(profile.ProfileError, match="importing 'syntax_models' failed: SyntaxError: "):
        profile.load_factory("syntax_models", "build")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # Fails before torch is imported.
        (["profile", "torchvision.models:resnet50", "--input", "1xAx3"], "'A' is not a whole number"),
        # The user's forward raises, after torch is imported and the model is built.
        (
            ["profile", "profile_models:bad_forward", "--input", "2x4"],
            "mat1 and mat2 shapes cannot be multiplied",
        ),
    ],
)
def test_the_real_command_fails_without_a_traceback(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "profile_models.py").write_text(MODELS)
    result = run_module(*args, cwd=tmp_path)  # `python -m` finds modules in the current directory
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert message in result.stderr


def test_help_lists_the_profile_command(tmp_path: Path) -> None:
    result = run_module("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert re.search(r"^\s+profile\s+count a model's MACs", result.stdout, re.M)
    sub = run_module("profile", "--help", cwd=tmp_path)
    assert sub.returncode == 0
    for option in (
        "--input",
        "--depth",
        "--device",
        "--json",
        "--headroom",
        "--compile",
        "--compile-backend",
    ):
        assert option in sub.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1x3x224x224", profile_result.InputSpec((1, 3, 224, 224))),
        ("1X128:int64", profile_result.InputSpec((1, 128), "int64")),
        ("4:long", profile_result.InputSpec((4,), "int64")),
        (" 2x3:BF16 ", profile_result.InputSpec((2, 3), "bfloat16")),
        ("2,3:half", profile_result.InputSpec((2, 3), "float16")),
    ],
)
def test_parse_input(text: str, expected: profile_result.InputSpec) -> None:
    assert profile.parse_input(text) == expected


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        (4_089_184_256 * 1.1, "count", "4.5G"),
        (25_557_032 * 1.1, "count", "28.2M"),
        (102_441_032 * 1.1, "bytes", "113 MB"),
        (28_200_000, "count", "28.2M"),
        (999_600, "count", "1M"),
        (999, "count", "999"),
        (1000, "count", "1k"),
        (1001, "count", "1.01k"),
        (0.5, "count", "1"),
        (123.4, "bytes", "124 B"),
        (12_345, "bytes", "12.4 kB"),
        (1.5e13, "count", "15T"),
    ],
)
def test_round_up_si(value: float, unit: str, expected: str) -> None:
    assert profile_result.round_up_si(value, unit) == expected


def test_rounded_limits_always_parse_back_to_at_least_the_value() -> None:
    rng = random.Random(0)
    values = [rng.uniform(1, 10) * 10 ** rng.randint(0, 14) for _ in range(3000)]
    values += [float(n * 10**e) for n in range(100, 1000) for e in (0, 3, 6, 9)]  # exact 3-digit values
    for value in values:
        for unit, metric in (("count", "macs"), ("bytes", "size")):
            text = profile_result.round_up_si(value, unit)
            parsed = METRICS_BY_NAME[metric].parse(text)
            assert value <= parsed <= max(value * 1.01, value + 1), (value, text)


def test_float_token_ids_get_a_hint(models: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["profile", f"{models}:TinyNet", "--input", "2x8"]) == 2
    assert capsys.readouterr().err.endswith("; token ids need an integer input, e.g. --input 1x128:int64\n")


def test_compile_shows_the_graph_break_with_its_reason_and_line(
    models: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["profile", f"{models}:Branchy", "--input", "2x4", "--compile-backend", "eager"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert "MACs                  32 (32)" in out  # the eager model's count, as without --compile
    section = out[out.index("compiled (torch.compile, backend eager") :].splitlines()
    assert section[2:5] == ["  graph breaks  1", "  recompiles    0", "  kernels       -  (inductor only)"]
    assert re.fullmatch(r"  compile time  \S+ m?s", section[5])
    assert (
        section[6]
        == f"  graph break 1 at {tmp_path / 'profile_models.py'}:{BRANCH_LINE}: Data-dependent branching"
    )
    assert section[7] == "      if y.sum() > 0:  # data-dependent: dynamo breaks the graph here"
    assert section[8].startswith("      (Detected data-dependent branching")


def test_compile_of_a_clean_model_in_json(models: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["profile", f"{models}:Relu", "--input", "2x4", "--compile-backend", "eager", "--json"])
    assert code == 0
    compiled = json.loads(capsys.readouterr().out)["compiled"]
    assert compiled.pop("compile_s") > 0
    assert compiled == {
        "backend": "eager",
        "label": "compiled:eager",
        "graphs": 1,
        "graph_breaks": [],
        "recompiles": [],
        "kernels": None,
    }


def test_without_compile_nothing_is_compiled(models: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["profile", f"{models}:Relu", "--input", "2x4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["compiled"] is None


QUANTIZED_FACTORY = """
import torchvision


def resnet18_int8():
    # torchvision's int8 ResNet-18: random weights, quantized for the fbgemm engine.
    return torchvision.models.quantization.resnet18(weights=None, quantize=True)
"""


def test_a_quantized_torchvision_model_shows_its_dtypes(tmp_path: Path) -> None:
    (tmp_path / "qmodels.py").write_text(QUANTIZED_FACTORY)
    result = run_module("profile", "qmodels:resnet18_int8", "--input", "1x3x224x224", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "  MACs by dtype         int8 1.81 G\n" in out  # every MAC in an int8 kernel
    assert "  params                11.7 M (11,684,712)\n" in out  # held in packed parameters
    assert "qint8 11.1 MiB" in out  # sized by the int8 weights, not float32
    assert marker_limits(out.splitlines()[-1])["max_float_macs"] == "0"


def test_train_prints_the_step_by_phase_and_memory_by_kind(
    models: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["profile", f"{models}:build_tiny", "--input", "2x8:int64", "--train", "--depth", "1"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert (
        lines[0]
        == f"{models}:build_tiny, inputs 2x8:int64, one training step (optimizer adamw), counted on meta"
    )
    assert re.search(r"^blocks\s+Sequential\s+1.07 k\s+16.4 k\s+94.1%\s+32.8 k", out, re.MULTILINE)
    # head: the input gradient and the weight gradient; embed: a lookup, no MACs either way
    assert re.search(r"^head\s+Linear\s+68\s+1.02 k\s+5.9%\s+2.05 k", out, re.MULTILINE)
    assert "    backward         34.8 k" in lines
    assert any(line.startswith("    optimizer state  ") for line in lines)
    marker = next(line for line in lines if line.startswith("@pytest.mark.model_budget("))
    assert list(marker_limits(marker))[:2] == ["max_train_macs", "max_train_memory"]
    parse_budget(marker_limits(marker))
    assert 'model_budget.train_step(model, *inputs, target=..., loss=..., optimizer="adamw")' in out


def test_train_json_with_another_optimizer(models: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        ["profile", f"{models}:build_tiny", "--input", "2x8:int64", "--optimizer", "sgd", "--json"]
    )
    out, _ = capsys.readouterr()
    assert code == 0
    data = json.loads(out)
    train = data["train"]
    assert train["optimizer"] == "sgd"
    assert train["train_macs"] == train["forward_macs"] + train["loss_macs"] + train["backward_macs"]
    assert train["forward_macs"] == data["totals"]["macs"] == 17408
    assert train["memory_by_kind"]["optimizer_state"] == 0  # plain SGD keeps no state
    assert sum(train["memory_by_kind"].values()) == train["train_memory"]
    assert {m["path"]: m["backward_macs"] for m in data["modules"]}["head"] == 2048


def test_generate_profiles_prefill_decode_and_the_kv_cache(
    models: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("transformers")
    import torch

    from pytest_modelbudget import GenerationSpec, count_generation

    args = ["profile", f"{models}:tiny_llama", "--input", "1x10:int64", "--generate", "5"]
    assert cli.main([*args, "--device", "meta", "--json"]) == 0
    generation = json.loads(capsys.readouterr().out)["generation"]
    torch.manual_seed(0)
    expected = count_generation(
        sys.modules[models].tiny_llama(), torch.zeros(1, 10, dtype=torch.long), GenerationSpec(5)
    )
    assert (generation["prefill_macs"], generation["decode_macs"]) == (
        expected.prefill.macs,
        expected.decode.macs,
    )
    assert (generation["new_tokens"], generation["last_context"]) == (5, 14)
    assert generation["step_macs"] == list(expected.step_macs)
    kv = 2 * 2 * 2 * 14 * 4 * 4  # layers x (K, V) x KV heads x positions x head_dim x float32 bytes
    assert expected.kv_cache == kv

    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "prefill MACs" in text and f"({expected.prefill.macs:,})" in text
    assert "KV cache" in text and f"({kv:,} bytes)" in text
    assert "model_budget.generate(model, input_ids, max_new_tokens=5)" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{m}:tiny_llama", "--input", "1x8:int64", "--generate", "0"], "--generate 0: a generation makes at least one"),
        (["{m}:tiny_llama", "--input", "1x8", "--generate", "3"], "--generate takes one --input, the prompt's token ids"),
        (["{m}:tiny_llama", "--input", "1x2x8:int64", "--generate", "3"], "--generate: the prompt 1x2x8:int64 is not"),
        (["{m}:tiny_llama", "--input", "1x8:int64", "--generate", "3", "--train"], "--generate counts an eager generation: drop --train"),
        (["{m}:build_tiny", "--input", "1x8:int64", "--generate", "3"], "--generate needs a model with transformers' generate()"),
    ],
)  # fmt: skip
def test_generate_errors_are_one_line(
    models: str, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    pytest.importorskip("transformers")
    code = cli.main(["profile", *(arg.format(m=models) for arg in args)])
    out, err = capsys.readouterr()
    assert (code, out, err.count("\n")) == (2, "", 1)
    assert err.startswith(f"python -m pytest_modelbudget profile: error: {message}"), err
