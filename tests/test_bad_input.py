"""A catalogue of bad inputs, each run end to end through pytest.

Every case must end in ONE clear message (naming the test or the file, what is wrong, and
what is accepted or what to do), show no traceback from the plugin's internals, and leave
budgets.yaml byte-identical on disk with no temporary file beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from conftest import write_test

from pytest_modelbudget.budgets import baselines

USAGE = pytest.ExitCode.USAGE_ERROR
FAILED = pytest.ExitCode.TESTS_FAILED

# A canonical file (as the plugin writes it), so that a run that should change nothing
# leaves it byte-identical.
KNOWN = baselines.render({"test_model.py::test_bad": baselines.Entry(limits={"max_macs": "2G"})}).encode()

MEASURED = """
@pytest.mark.model_budget
def test_bad(model_budget):
    model_budget(SimpleModel(), torch.randn(1, 1, 28, 28))
"""


def marked(marker: str) -> str:
    return MEASURED.replace("@pytest.mark.model_budget", f"@pytest.mark.model_budget({marker})")


def calling(*lines: str) -> str:
    body = "".join(f"    {line}\n" for line in lines)
    return (
        f"\n@pytest.mark.model_budget\ndef test_bad(model_budget):\n    x = torch.randn(1, 1, 28, 28)\n{body}"
    )


def entry(*lines: str) -> bytes:
    """A budgets.yaml whose one entry holds ``lines``."""
    body = "".join(f"    {line}\n" for line in lines)
    return f"version: 1\nentries:\n  test_model.py::test_bad:\n{body}".encode()


BROKEN = """
import torch
from torch import nn

class Broken(nn.Module):
    def __init__(self, real=False):
        super().__init__()
        self.real = real
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x):
        if self.real:
            x = x * (x.abs().sum().item() > 0)  # needs real values: counted on real tensors
        x = self.bn(x)  # in training mode this updates the running statistics
        raise ValueError(f"expected 5 features, got {x.shape[1]}")
"""

# The test checks, whatever happens, that the model is exactly as it was before.
FORWARD_RAISES = """
from broken import Broken

@pytest.mark.model_budget
def test_bad(model_budget):
    model = Broken(real=REAL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        model_budget(model, torch.randn(3, 4))
    finally:
        after = model.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), "state_dict changed"
        assert model.training and model.bn.training, "training flag changed"
"""

PWNED = "pwned-by-budgets-yaml"


def no_pwned(pytester: pytest.Pytester) -> None:
    assert not (pytester.path / PWNED).exists(), "the YAML tag was executed"


def make_dir(name: str) -> Callable[[pytest.Pytester], None]:
    return lambda pytester: pytester.mkdir(name) and None


def read_only(pytester: pytest.Pytester) -> None:
    (pytester.path / "budgets.yaml").chmod(0o444)


def dir_untouched(name: str) -> Callable[[pytest.Pytester], None]:
    def check(pytester: pytest.Pytester) -> None:
        assert list((pytester.path / name).iterdir()) == []

    return check


def not_created(name: str) -> Callable[[pytest.Pytester], None]:
    def check(pytester: pytest.Pytester) -> None:
        assert not (pytester.path / name).exists()

    return check


@dataclass(frozen=True)
class Case:
    id: str
    expect: list[str]  # fragments of the one message, in order of appearance
    file: bytes | None = KNOWN  # budgets.yaml before the run (None: no file)
    test: str = MEASURED  # test_model.py
    args: tuple[str, ...] = ("--update-budgets",)
    ret: int = USAGE
    files: dict[str, str] = field(default_factory=dict)  # more modules of the project
    setup: Callable[[pytest.Pytester], None] | None = None
    check: Callable[[pytest.Pytester], None] | None = None
    xfail: str | None = None  # a known bug: the reason


# A few hundred bytes of YAML aliases that expand to 9**6 strings (a "billion laughs").
ALIAS_BOMB = (
    "["
    + ", ".join(
        ["&a0 [a, a, a, a, a, a, a, a, a]"]
        + [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 6)]
    )
    + "]"
)

FILE = "budgets.yaml"  # every file problem starts with the file's path

CASES = [
    # -- budgets.yaml --------------------------------------------------------------------
    Case("file-empty", [FILE, "is empty; delete it or run pytest --model-budget --update-budgets"], file=b""),
    Case(
        "file-list-at-top",
        [FILE, "must be a mapping with 'version' and 'entries', not a list"],
        file=b"- test_model.py::test_bad\n- macs: 1\n",
    ),
    Case(
        "file-invalid-yaml",
        [FILE, "is not valid YAML: ", "at line 3, column 1"],
        file=b"version: 1\nentries: {\n",
    ),
    Case(
        "file-merge-conflict",
        [FILE, "is not valid YAML", "line 4"],
        file=b"version: 1\nentries:\n<<<<<<< HEAD\n  a:\n    macs: 1\n=======\n  a:\n    macs: 2\n>>>>>>> b\n",
    ),
    Case(
        "file-tab-indent",
        [FILE, "is not valid YAML", "line 3"],
        file=entry("macs: 1").replace(b"  test", b"\ttest"),
    ),
    Case(
        "file-latin-1", [FILE, "is not UTF-8 text (byte 2)"], file=b"# \xe9t\xe9\nversion: 1\nentries: {}\n"
    ),
    Case(
        "file-utf-16", [FILE, "is not UTF-8 text (byte 0)"], file="version: 1\nentries: {}\n".encode("utf-16")
    ),
    Case(
        "file-python-tag",
        [FILE, "contains a tag that a safe loader refuses", "python/object/apply:os.system", "(line 1)"],
        file=f"!!python/object/apply:os.system ['touch {PWNED}']\n".encode(),
        check=no_pwned,
    ),
    Case(
        "file-python-tag-in-entry",
        [FILE, "contains a tag that a safe loader refuses", "python/object/apply:os.system"],
        file=entry(f"macs: !!python/object/apply:os.system ['touch {PWNED}']"),
        check=no_pwned,
    ),
    Case(
        "file-unknown-tag",
        [FILE, "contains a tag that a safe loader refuses", "!include"],
        file=b"!include other.yaml\n",
    ),
    Case(
        "file-duplicate-entry",
        [FILE, "duplicate key 'test_model.py::test_bad'", "(line 5)"],
        file=entry("macs: 1") + b"  test_model.py::test_bad:\n    macs: 2\n",
    ),
    Case(
        "file-duplicate-metric", [FILE, "duplicate key 'macs'", "(line 5)"], file=entry("macs: 1", "macs: 2")
    ),
    Case(
        "file-future-version",
        [FILE, "has version 3, but this pytest-modelbudget understands up to 2; upgrade pytest-modelbudget"],
        file=b"version: 3\nentries: {}\n",
    ),
    Case(
        "file-version-string",
        [FILE, "'version' must be an integer, got '1'"],
        file=b"version: '1'\nentries: {}\n",
    ),
    Case("file-no-version", [FILE, "has no 'version'; add 'version: 2' at the top"], file=b"entries: {}\n"),
    Case(
        "file-unknown-top-key",
        [FILE, "unknown top-level key(s) ['budgets']; expected 'version' and 'entries'"],
        file=b"version: 1\nbudgets: {}\n",
    ),
    Case(
        "file-entries-not-mapping",
        [FILE, "'entries' must be a mapping, not a int"],
        file=b"version: 1\nentries: 5\n",
    ),
    Case(
        "file-entries-list",
        [FILE, "'entries' must be a mapping, not a list"],
        file=b"version: 1\nentries: []\n",
    ),
    Case(
        "file-entry-not-mapping",
        [FILE, "entry 'test_model.py::test_bad': must be a mapping"],
        file=b"version: 1\nentries:\n  test_model.py::test_bad: 1329000\n",
    ),
    Case(
        "file-string-for-number",
        [FILE, "entry 'test_model.py::test_bad': macs must be a number, got '1.33M'"],
        file=entry("macs: 1.33M"),
    ),
    Case("file-yes-for-number", [FILE, "params must be a number, got True"], file=entry("params: yes")),
    Case("file-nan", [FILE, "macs must be a finite number >= 0, got nan"], file=entry("macs: .nan")),
    Case("file-inf", [FILE, "size must be a finite number >= 0, got inf"], file=entry("size: .inf")),
    Case("file-negative", [FILE, "params must be a finite number >= 0, got -3"], file=entry("params: -3")),
    Case("file-fraction", [FILE, "macs must be a whole number, got 1.5"], file=entry("macs: 1.5")),
    Case(
        "file-unknown-metric",
        [
            FILE,
            "entry 'test_model.py::test_bad': unknown key(s) ['latency']; an entry may hold ['convention', 'macs'",
        ],
        file=entry("latency: 3"),
    ),
    Case(
        "file-bad-module-stats",
        [FILE, "modules.fc1 must be a mapping with 'macs', 'params', 'backward_macs'"],
        file=entry("modules:", "  fc1:", "    flops: 2"),
    ),
    Case("file-modules-list", [FILE, "'modules' must be a mapping"], file=entry("modules: []")),
    Case(
        "file-limits-typo",
        [FILE, "limits: unknown keyword 'max_mac' (did you mean 'max_macs'?); accepted keywords: max_macs"],
        file=entry("limits:", "  max_mac: 2G"),
    ),
    Case(
        "file-limits-list",
        [FILE, "'limits' must be a mapping of marker keywords"],
        file=entry("limits: [max_macs]"),
    ),
    Case(
        "file-limits-bad-unit",
        [FILE, "limits: max_size='12 parsec'", "'300 MiB'"],
        file=entry("limits:", "  max_size: 12 parsec"),
    ),
    Case(
        "file-alias-bomb", [FILE, "macs must be a number, got [[", "...]"], file=entry(f"macs: {ALIAS_BOMB}")
    ),
    Case(
        "file-alias-bomb-in-limits",
        [FILE, "limits: max_macs=[["],
        file=entry("limits:", f"  max_macs: {ALIAS_BOMB}"),
    ),
    Case("file-bad-with-model-budget", [FILE, "is empty"], file=b"", args=("--model-budget",)),
    # -- the marker ----------------------------------------------------------------------
    *(
        Case(
            f"marker-{name}",
            [
                "pytest-modelbudget: invalid budget marker",
                "test_model.py::test_bad: @pytest.mark.model_budget: ",
                *expect,
            ],
            test=marked(marker),
        )
        for name, marker, expect in [
            (
                "positional",
                '"2G"',
                ["keyword arguments only, got positional ['2G']; accepted keywords: max_macs"],
            ),
            ("unknown-keyword", 'max_mac="2G"', ["unknown keyword 'max_mac' (did you mean 'max_macs'?)"]),
            (
                "unknown-keyword-no-suggestion",
                "xyz=3",
                ["unknown keyword 'xyz'; accepted keywords: max_macs"],
            ),
            ("keyword-without-max", 'size="1 MB"', ["unknown keyword 'size' (did you mean 'max_size'?)"]),
            ("negative-limit", "max_macs=-3", ["max_macs=-3: a limit must be greater than zero"]),
            ("zero-limit", "max_params=0", ["max_params=0: a limit must be greater than zero"]),
            (
                "malformed-unit",
                'max_size="1.5 parsec"',
                ["max_size='1.5 parsec'", "e.g. '1.5 GB', '300 MiB'"],
            ),
            ("milli-suffix", 'max_macs="25m"', ["max_macs='25m'", "an SI suffix, e.g. 1329000, '4.1G'"]),
            (
                "bytes-for-count",
                'max_macs="2GB"',
                ["max_macs='2GB'", "(this limit is a count, not a size in bytes)"],
            ),
            ("bool-limit", "max_params=True", ["max_params=True: True is not a number"]),
            ("nan-limit", 'max_macs=float("nan")', ["max_macs=nan: nan is not finite"]),
            (
                "negative-tolerance",
                "tolerance=-0.1",
                ["tolerance=-0.1", "a non-negative number (0.05) or a percentage"],
            ),
            ("malformed-tolerance", 'tolerance="five%"', ["tolerance='five%'", "a percentage string ('5%')"]),
            (
                "negative-float-macs",
                "max_float_macs=-1",
                ["max_float_macs=-1: a limit must be zero or more"],
            ),
            (
                "autocast-dtype",
                'autocast="int8"',
                ["autocast='int8': 'int8' is not True, False, 'bfloat16' or 'float16'"],
            ),
        ]
    ),
    Case(
        "marker-bad-under-update-budgets",
        ["invalid budget marker", "max_macs=-3"],
        test=marked("max_macs=-3"),
        args=("--update-budgets",),
    ),
    # -- the fixture ---------------------------------------------------------------------
    Case(
        "fixture-compile-limit-without-compile",
        [
            "model_budget: max_graph_breaks limit(s) a compiled call: add compile=True to the marker, "
            "run with --budget-compile, or pass a model compiled with torch.compile",
            "(while measuring test_model.py::test_bad)",
        ],
        test=marked("max_graph_breaks=0"),
        ret=FAILED,
    ),
    Case(
        "fixture-string-model",
        ["model_budget expects a torch.nn.Module as first argument, got str"],
        test=calling('model_budget("resnet18", x)'),
        ret=FAILED,
    ),
    Case(
        "fixture-plain-function",
        ["model_budget: expected a torch.nn.Module, got function; pass the model as the first argument"],
        test=calling("model_budget(lambda t: t * 2, x)"),
        ret=FAILED,
    ),
    Case(
        "fixture-no-inputs",
        ["model_budget needs the forward's inputs: model_budget(model, torch.randn(1, 3, 224, 224))"],
        test=calling("model_budget(SimpleModel())"),
        ret=FAILED,
    ),
    Case(
        "fixture-twice",
        ["called twice for the same budget entry in test_model.py::test_bad: give each call its own name="],
        test=calling("model_budget(SimpleModel(), x)", "model_budget(SimpleModel(), x)"),
        args=("--model-budget",),
        ret=FAILED,
    ),
    Case(
        "fixture-twice-same-name",
        ["called twice for the same budget entry in test_model.py::test_bad: name='b1' is already used"],
        test=calling(
            'model_budget(SimpleModel(), x, name="b1")', 'model_budget(SimpleModel(), x, name="b1")'
        ),
        args=("--model-budget",),
        ret=FAILED,
    ),
    Case(
        "fixture-bad-name",
        ["model_budget name='a#b': a name is a non-empty string without '#'"],
        test=calling('model_budget(SimpleModel(), x, name="a#b")'),
        ret=FAILED,
    ),
    *(
        Case(
            f"forward-raises-{how}",
            [
                "model_budget: the model's forward raised ValueError: expected 5 features, got 4",
                "broken.py:14 in forward",
                "(while measuring test_model.py::test_bad; the model was left as it was)",
            ],
            test=FORWARD_RAISES.replace("REAL", str(real)),
            files={"broken": BROKEN},
            ret=FAILED,
        )
        for how, real in [("on-meta", False), ("on-real-tensors", True)]
    ),
    # -- training steps ----------------------------------------------------------------------
    Case(
        "train-loss-not-scalar",
        [
            "model_budget: the loss returned a float32 tensor of shape (1, 10), not a floating-point scalar; reduce it",
            "(while measuring test_model.py::test_bad)",
        ],
        test=calling("model_budget.train_step(SimpleModel(), x, loss=lambda out: out * 2)"),
        ret=FAILED,
    ),
    Case(
        "train-nothing-trainable",
        [
            "model_budget: the model has no parameter with requires_grad=True",
            "(while measuring test_model.py::test_bad)",
        ],
        test=calling("model_budget.train_step(SimpleModel().requires_grad_(False), x)"),
        ret=FAILED,
    ),
    Case(
        "train-unknown-optimizer",
        ["model_budget: optimizer='adamm' is not a known name; use one of sgd, sgd-momentum, adam, adamw"],
        test=calling('model_budget.train_step(SimpleModel(), x, optimizer="adamm")'),
        ret=FAILED,
    ),
    Case(
        "train-optimizer-cannot-be-built",
        [
            "model_budget: the optimizer",
            "could not be built over the model's parameters (ValueError: Invalid learning rate",
        ],
        test=calling(
            "model_budget.train_step(SimpleModel(), x, optimizer=lambda p: torch.optim.SGD(p, lr=-1))"
        ),
        ret=FAILED,
    ),
    Case(
        "train-output-not-reducible",
        [
            "model_budget: the output (Tensor) has no floating-point tensor that depends on the parameters",
            "pass loss=",
        ],
        test=calling(
            "model_budget.train_step(SimpleModel(), x, loss=None, optimizer=None, name=None)"
        ).replace("SimpleModel()", "Argmax()")
        + "\n\nclass Argmax(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
        "        self.m = SimpleModel()\n\n    def forward(self, x):\n        return self.m(x).argmax(-1)\n",
        ret=FAILED,
    ),
    Case(
        "train-loss-raises",
        ["model_budget: the model's training step raised RuntimeError: size mismatch", "test_model.py:"],
        test=calling(
            "model_budget.train_step(SimpleModel(), x, target=torch.zeros(3), "
            "loss=lambda out, y: (_ for _ in ()).throw(RuntimeError('size mismatch')))"
        ),
        ret=FAILED,
    ),
    Case(
        "train-keyword-on-a-forward",
        ["model_budget: max_train_memory limit(s) a training step: measure it with model_budget.train_step("],
        test=marked('max_train_memory="1 GB"'),
        ret=FAILED,
    ),
    Case(
        "forward-keyword-on-a-training-step",
        ["model_budget: max_latency_ms limit(s) a forward pass, not a training step: use max_train_step_ms"],
        test=calling("model_budget.train_step(SimpleModel(), x)").replace(
            "@pytest.mark.model_budget\n", "@pytest.mark.model_budget(max_latency_ms=100)\n"
        ),
        ret=FAILED,
    ),
    # -- --budgets-file --------------------------------------------------------------------
    Case(
        "budgets-file-is-directory",
        ["adir: is a directory; point --budgets-file at a file"],
        args=("--update-budgets", "--budgets-file", "adir"),
        setup=make_dir("adir"),
        check=dir_untouched("adir"),
    ),
    Case(
        "budgets-file-in-missing-directory",
        ["nowhere/budgets.yaml: its directory ", "nowhere' does not exist"],
        args=("--update-budgets", "--budgets-file", "nowhere/budgets.yaml"),
        check=not_created("nowhere"),
    ),
    Case(
        "budgets-file-read-only",
        [FILE, "is read-only; make it writable to update baselines"],
        setup=read_only,
        test=MEASURED.replace("test_bad", "test_new"),  # a new entry to write
    ),
]


def test_catalogue_is_complete() -> None:
    assert len(CASES) >= 25
    assert len({case.id for case in CASES}) == len(CASES)


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            case, id=case.id, marks=[pytest.mark.xfail(reason=case.xfail, strict=True)] if case.xfail else []
        )
        for case in CASES
    ],
)
def test_bad_input_gives_one_clear_message(project: pytest.Pytester, case: Case) -> None:
    write_test(project, case.test)
    for name, source in case.files.items():
        project.makepyfile(**{name: source})
    path = project.path / "budgets.yaml"
    if case.file is not None:
        path.write_bytes(case.file)
    if case.setup is not None:
        case.setup(project)

    result = project.runpytest(*case.args)
    out, err = result.stdout.str(), result.stderr.str()
    everything = out + err

    assert result.ret == case.ret, everything
    position = 0
    for fragment in case.expect:
        found = everything.find(fragment, position)
        assert found >= 0, f"{fragment!r} not in order in:\n{everything}"
        position = found + len(fragment)
    assert "Traceback" not in everything
    assert "pytest_modelbudget/" not in everything  # no frame of the plugin's own code
    assert "INTERNALERROR" not in everything
    if case.ret == USAGE:
        # One message, on stderr, and no test ran.
        assert len(err) < 2000, f"{len(err)} characters: {err[:2000]}"
        assert err.count("ERROR: ") == 1, err
        assert err.lstrip().startswith("ERROR: pytest-modelbudget: "), err
        assert case.expect[0] in err
    else:
        result.assert_outcomes(failed=1)
        # The failure section holds the message once (the short summary may repeat its first line).
        section = out[out.index("= FAILURES =") : out.index("short test summary info")]
        assert section.count(case.expect[0]) == 1, section
        assert len(section) < 2000, section

    assert (path.read_bytes() if path.exists() else None) == case.file
    assert not list(project.path.rglob(".budgets.yaml.*.tmp"))
    if case.check is not None:
        case.check(project)
