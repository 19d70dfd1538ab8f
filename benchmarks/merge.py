"""What merging CI shards and comparing two runs cost: 50 shards of 100 calls, and 5,000 calls compared.

Writes synthetic ``--budget-json`` reports (each call with a 20-module breakdown, as a real
report of a zoo of models carries) into a temporary folder, then times, as whole processes
(the command a CI job runs, its Python start-up included), and prints a table:

- ``merge``: ``python -m pytest_modelbudget merge shard-*.json``, summary only;
- ``merge --update-budgets``: the same, writing the 5,000 entries to a new budgets.yaml;
- ``compare``: ``python -m pytest_modelbudget compare`` of two 5,000-call reports
  (every call grew), with the Markdown comment and the JSON written;

and, in this process, reading and writing the resulting budgets.yaml of 5,000 entries with
libyaml (what the plugin uses where PyYAML has it) and with PyYAML's pure-Python classes.

Run from the repository root::

    .venv/bin/python benchmarks/merge.py
    .venv/bin/python benchmarks/merge.py --shards 50 --calls 100 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pytest_modelbudget._version import __version__
from pytest_modelbudget.budgets.checks import Verdict
from pytest_modelbudget.budgets.results import CallResult
from pytest_modelbudget.budgets.shards import RunRecord
from pytest_modelbudget.report.exports import json_report

MODULES = 20


def results(keys: list[str], scale: int) -> list[CallResult]:
    modules = {
        f"blocks.{i}": {"macs": scale * 1000 * (i + 1), "params": 100 * (i + 1)} for i in range(MODULES)
    }
    total = sum(m["macs"] for m in modules.values())
    return [
        CallResult(
            nodeid=key,
            name=None,
            metrics={"macs": total, "flops": 2 * total, "params": 21000, "size": 84000},
            modules=modules,
            uncounted={},
            convention="synthetic",
            executed_on="meta",
            verdict=Verdict.OK,
            has_baseline=True,
        )
        for key in keys
    ]


def write_report(path: Path, calls: list[CallResult], run: RunRecord) -> None:
    env = {"plugin": __version__, "torch": "-", "python": "-", "platform": "-", "cpu": "-"}
    document = json_report(calls, budgets_file="budgets.yaml", env=env, run=run)
    path.write_text(json.dumps(document))


def timed(command: list[str], repeat: int) -> tuple[float, float, int]:
    times = []
    status = 0
    for _ in range(repeat):
        start = time.perf_counter()
        status = subprocess.run(command, capture_output=True).returncode
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=50)
    parser.add_argument("--calls", type=int, default=100, help="calls per shard")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    total = args.shards * args.calls
    keys = [f"tests/test_zoo_{i // 100:03d}.py::test_model[{i:05d}]" for i in range(total)]
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        collected = frozenset(keys)
        for shard in range(args.shards):
            part = keys[shard * args.calls : (shard + 1) * args.calls]
            run = RunRecord(collected=collected, selected=frozenset(part), scope=("",))
            write_report(root / f"shard-{shard:03d}.json", results(part, 1), run)
        run = RunRecord(collected=collected, selected=collected, scope=("",))
        write_report(root / "base.json", results(keys, 1), run)
        write_report(root / "head.json", results(keys, 2), run)
        shards = sorted(str(p) for p in root.glob("shard-*.json"))
        size = sum(Path(p).stat().st_size for p in shards)
        cli = [sys.executable, "-m", "pytest_modelbudget"]
        rows = [
            ("merge", [*cli, "merge", *shards, "--budgets-file", str(root / "budgets.yaml")]),
            (
                "merge --update-budgets",
                [*cli, "merge", *shards, "--update-budgets", "--budgets-file", str(root / "new.yaml")],
            ),
            (
                "compare",
                [
                    *cli,
                    "compare",
                    str(root / "base.json"),
                    str(root / "head.json"),
                    "--markdown",
                    str(root / "comment.md"),
                    "--json",
                    str(root / "diff.json"),
                ],
            ),
        ]
        print(
            f"{args.shards} shards x {args.calls} calls ({total} calls, {MODULES} modules each); "
            f"shard reports {size / 1e6:.1f} MB in all; {args.repeat} runs each, whole processes\n"
        )
        print(f"{'command':<26} {'median s':>9} {'min s':>7}  exit")
        for name, command in rows:
            if name == "merge --update-budgets":
                (root / "new.yaml").unlink(missing_ok=True)
            median, fastest, status = timed(command, args.repeat)
            print(f"{name:<26} {median:>9.2f} {fastest:>7.2f}  {status}")
        comment = (root / "comment.md").read_text()
        print(f"\ncomment: {len(comment):,} characters (GitHub's limit 65,536)")
        yaml_costs(root / "new.yaml")


def yaml_costs(path: Path) -> None:
    """Parse and render a large budgets.yaml with libyaml and with pure-Python PyYAML."""
    import yaml

    from pytest_modelbudget.budgets import baselines, entries

    raw = path.read_bytes()
    print(f"\nbudgets.yaml of {raw.count(b'convention:')} entries, {len(raw) / 1e6:.1f} MB")
    print(f"{'':<12} {'parse s':>8} {'render s':>9}")
    fast_loader, fast_dumper = entries._FastStrictLoader, baselines._DUMPER
    variants = [
        ("libyaml", fast_loader, fast_dumper),
        ("pure Python", entries._StrictSafeLoader, yaml.SafeDumper),
    ]
    for name, loader, dumper in variants:
        if name == "libyaml" and loader is entries._StrictSafeLoader:
            continue  # PyYAML built without libyaml
        entries._FastStrictLoader, baselines._DUMPER = loader, dumper
        start = time.perf_counter()
        parsed = baselines.parse(raw, str(path))
        parse_s = time.perf_counter() - start
        start = time.perf_counter()
        text = baselines.render(parsed)
        render_s = time.perf_counter() - start
        assert text.encode() == raw, "the same bytes from either emitter"
        print(f"{name:<12} {parse_s:>8.2f} {render_s:>9.2f}")
    entries._FastStrictLoader, baselines._DUMPER = fast_loader, fast_dumper


if __name__ == "__main__":
    main()
