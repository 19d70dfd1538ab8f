"""``python -m pytest_modelbudget``: the command line: ``profile``, ``merge``
(:mod:`.merge`) and ``compare`` (:mod:`.compare`).

Only argument parsing and output live here; the work is in :mod:`.profile`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import compare, merge

PROG = "python -m pytest_modelbudget"

PROFILE_DESCRIPTION = """\
Build a model from MODULE:FACTORY (a callable taking no arguments, or a class), run one
forward pass on random inputs in eval mode (counted on the meta device where it can be: no arithmetic),
and print a per-module table, the totals, the ops the counter has no formula for, and a
@pytest.mark.model_budget(...) line with headroom, ready to paste into a test. With --compile,
also compile the model with torch.compile (in a clean dynamo state; the counts stay the eager
model's) and print its graphs, graph breaks (dynamo's reason and your file:line), recompiles
(the guard that failed), kernels (inductor only) and compile time. With --train, count one
training step instead (train mode, backward MACs per module, optimizer step) and its estimated
peak memory by kind, and suggest a budget for a model_budget.train_step(...) test.
"""

PROFILE_EPILOG = """\
examples:
  python -m pytest_modelbudget profile torchvision.models:resnet50 --input 1x3x224x224
  python -m pytest_modelbudget profile mypkg.models:build_model --input 1x128:int64 --depth 2
  python -m pytest_modelbudget profile mypkg.models:HugeModel --input 1x4096:int64 --device meta
  python -m pytest_modelbudget profile mypkg.models:build_model --input 8x128 --compile-backend eager
  python -m pytest_modelbudget profile torchvision.models:resnet50 --input 32x3x224x224 --train
"""


def build_parser() -> argparse.ArgumentParser:
    from ..core.compiling import DEFAULT_BACKEND
    from .profile import DEFAULT_DEPTH, DEFAULT_HEADROOM

    parser = argparse.ArgumentParser(
        prog=PROG, description="pytest-modelbudget tools that work without writing a test."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    profile = commands.add_parser(
        "profile",
        help="count a model's MACs, params, size and memory traffic per module, and suggest a budget",
        description=PROFILE_DESCRIPTION,
        epilog=PROFILE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    profile.add_argument("target", metavar="MODULE:FACTORY", help="e.g. torchvision.models:resnet50")
    profile.add_argument(
        "--input",
        dest="inputs",
        action="append",
        default=[],
        metavar="SHAPE[:DTYPE]",
        help="shape of one positional input, e.g. 1x3x224x224 (float32, random) or 1x128:int64 "
        "(zeros); repeat for several inputs",
    )
    profile.add_argument(
        "--depth", type=int, default=DEFAULT_DEPTH, help=f"levels of modules in the table ({DEFAULT_DEPTH})"
    )
    profile.add_argument(
        "--device",
        default="cpu",
        metavar="{cpu,meta,cuda}",
        help="where the model is built: meta builds it without allocating weights (default cpu)",
    )
    profile.add_argument(
        "--headroom",
        default=DEFAULT_HEADROOM,
        help=f"room above the measured values in the suggested budget ({DEFAULT_HEADROOM})".replace(
            "%", "%%"
        ),
    )
    profile.add_argument(
        "--hardware",
        default=None,
        metavar="{h100,a100}",
        help="add a roofline latency estimate per module on this hardware, and the memory-bound ops",
    )
    profile.add_argument(
        "--compile",
        action="store_true",
        help="also compile the model with torch.compile and print its graphs, graph breaks, recompiles, "
        "kernels and compile time",
    )
    profile.add_argument(
        "--compile-backend",
        default=None,
        metavar="NAME",
        help=f"torch.compile backend for --compile (implies it): {DEFAULT_BACKEND} (default), eager, "
        "aot_eager, ...",
    )
    profile.add_argument(
        "--train",
        action="store_true",
        help="count one training step instead of an eval forward: forward in train mode, backward "
        "(MACs per module) and optimizer step, with the estimated peak memory by kind; the loss is the "
        "sum of the output's float tensors",
    )
    profile.add_argument(
        "--optimizer",
        default=None,
        metavar="NAME",
        help="the optimizer of --train (implies it): adamw (default), adam, sgd, sgd-momentum, rmsprop, "
        "adagrad, ... or none for forward and backward only",
    )
    profile.add_argument(
        "--generate",
        type=int,
        default=None,
        metavar="N",
        help="count a greedy generation of N new tokens after the --input prompt (token ids, e.g. "
        "1x128:int64) instead of one forward: prefill and decode MACs, the last step, the KV cache",
    )
    profile.add_argument("--json", action="store_true", help="print a JSON object instead of the table")
    merge.add_parser(commands)
    compare.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "merge":
        return merge.main(args)
    if args.command == "compare":
        return compare.main(args)
    return _profile(args)


def _profile(args: argparse.Namespace) -> int:
    from ..core.compiling import DEFAULT_BACKEND
    from .profile import ProfileError, run

    try:
        lines = run(
            args.target,
            args.inputs,
            depth=args.depth,
            device=args.device,
            headroom=args.headroom,
            as_json=args.json,
            hardware=args.hardware,
            compile_backend=(
                args.compile_backend
                if args.compile_backend is not None
                else (DEFAULT_BACKEND if args.compile else None)
            ),
            optimizer=args.optimizer if args.optimizer is not None else ("adamw" if args.train else None),
            new_tokens=args.generate,
        )
    except ProfileError as error:
        print(f"{PROG} profile: error: {error}", file=sys.stderr)
        return 2
    try:
        print("\n".join(lines))
        sys.stdout.flush()
    except BrokenPipeError:
        # Piped into `head`: the reader has gone; stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return 0
