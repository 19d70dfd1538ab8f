"""Start-up cost of the plugin: ``pytest --co`` with and without it, in an empty folder.

pytest imports every installed plugin on every run, so importing and configuring this
plugin is paid by any ``pytest`` call in any folder, even one with no model tests. This
script times that cost from outside, as whole processes:

- A: ``python -m pytest --co -q -p no:cacheprovider``  (plugin loaded)
- B: the same plus ``-p no:modelbudget``                (plugin blocked)

Both run in a fresh, empty temporary folder holding only an empty ``pytest.ini``, so that
folder is pytest's rootdir and inifile (and its conftest cut-off): no configuration or
``conftest.py`` of a parent folder is picked up. ``PYTEST_ADDOPTS``, ``PYTEST_PLUGINS``
and ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` are removed from the children's environment.

Each command is a fresh subprocess of the same interpreter, timed with
``time.perf_counter`` around ``subprocess.run``. After a warm-up, A and B run interleaved,
A B A B ..., and the ratio A/B is taken pair by pair: a drift of the machine's speed
(other jobs, frequency scaling) then moves both halves of a pair alike, where timing all
A runs and then all B runs would fold the drift into the ratio. The figure to quote is
the median of the per-pair ratios.

Bytecode: by default the children write and read ``.pyc`` files under a cache folder
inside the temporary folder (``PYTHONPYCACHEPREFIX``; ``PYTHONDONTWRITEBYTECODE`` is
removed), so nothing is written into the source tree and the timed runs see compiled
bytecode for every module, as an ordinary installation does. ``--no-bytecode`` instead
sets ``PYTHONDONTWRITEBYTECODE=1`` and no prefix: modules without an existing ``.pyc``
(an editable checkout's) are then compiled from source on every run.

``--imports`` runs A and B once each under ``python -X importtime`` and prints the
modules imported while importing the plugin (``pytest_modelbudget.*`` and whatever was
first imported beneath them: yaml, statistics, ...) with their cumulative import time,
and the modules that only A imports outside that tree (e.g. imported in a hook). pluggy
imports the entry point with ``importlib.import_module``, which ``-X importtime`` does not
log, so the times of ``pytest_modelbudget`` and ``pytest_modelbudget.plugin`` themselves
come from a separate ``python -X importtime -c 'import pytest, pytest_modelbudget.plugin'``.

Run from the repository root::

    .venv/bin/python benchmarks/startup.py                 # 20 pairs
    .venv/bin/python benchmarks/startup.py --pairs 40 --json startup.json
    .venv/bin/python benchmarks/startup.py --imports
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PLUGIN_NAME = "modelbudget"  # the pytest11 entry point's name, as -p no:NAME takes it
PACKAGE = "pytest_modelbudget"
PYTEST_ARGS = ["-m", "pytest", "--co", "-q", "-p", "no:cacheprovider"]
BLOCK_PLUGIN = ["-p", f"no:{PLUGIN_NAME}"]
OK_EXIT_CODES = (0, 5)  # 5: no tests collected, as expected in an empty folder
CLEARED_ENV = ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD")


def _child_env(folder: Path, *, bytecode: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    env.pop("PYTHONPYCACHEPREFIX", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if bytecode:
        env["PYTHONPYCACHEPREFIX"] = str(folder / "pycache")
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _make_folder(parent: str) -> Path:
    """An empty project: only an empty pytest.ini, which makes it rootdir and inifile."""
    folder = Path(parent) / "project"
    folder.mkdir()
    (folder / "pytest.ini").write_text("")
    return folder


def _run(cmd: list[str], folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, check=False)
    if proc.returncode not in OK_EXIT_CODES:
        stderr = "".join(line for line in proc.stderr.splitlines(True) if not line.startswith("import time:"))
        sys.exit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}{stderr}")
    return proc


def _timed(cmd: list[str], folder: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    _run(cmd, folder, env)
    return time.perf_counter() - start


def _check_plugin_installed(python: str) -> None:
    code = (
        "import importlib.metadata as m, sys; "
        f"sys.exit(not any(e.name == {PLUGIN_NAME!r} for e in m.entry_points(group='pytest11')))"
    )
    if subprocess.run([python, "-c", code], check=False).returncode != 0:
        sys.exit(f"{python}: no pytest11 entry point named {PLUGIN_NAME!r}; is the plugin installed?")


# --- timing -----------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


@dataclass
class Timing:
    """Every run's wall seconds, pair by pair: ``a[i]`` ran just before ``b[i]``."""

    python: str
    bytecode: bool
    warmup: int
    a: list[float]
    b: list[float]

    @property
    def ratios(self) -> list[float]:
        return [x / y for x, y in zip(self.a, self.b, strict=True)]

    def summary(self) -> dict[str, object]:
        return {
            "python": self.python,
            "command_a": " ".join(PYTEST_ARGS),
            "command_b": " ".join(PYTEST_ARGS + BLOCK_PLUGIN),
            "bytecode_cached": self.bytecode,
            "pairs": len(self.a),
            "warmup_pairs": self.warmup,
            "a": _stats(self.a),
            "b": _stats(self.b),
            "ratio": _stats(self.ratios),
            "a_seconds": self.a,
            "b_seconds": self.b,
            "ratios": self.ratios,
        }


def time_pairs(python: str, pairs: int, warmup: int, *, bytecode: bool) -> Timing:
    cmd_a = [python, *PYTEST_ARGS]
    cmd_b = [*cmd_a, *BLOCK_PLUGIN]
    timing = Timing(python, bytecode, warmup, [], [])
    with tempfile.TemporaryDirectory(prefix="modelbudget-startup-") as tmp:
        folder = _make_folder(tmp)
        env = _child_env(folder, bytecode=bytecode)
        for _ in range(warmup):
            _timed(cmd_a, folder, env)
            _timed(cmd_b, folder, env)
        for _ in range(pairs):
            timing.a.append(_timed(cmd_a, folder, env))
            timing.b.append(_timed(cmd_b, folder, env))
    return timing


def print_timing(timing: Timing) -> None:
    print(f"A: python {' '.join(PYTEST_ARGS)}")
    print(f"B: python {' '.join(PYTEST_ARGS + BLOCK_PLUGIN)}")
    print(f"bytecode cached: {'yes' if timing.bytecode else 'no'}, pairs: {len(timing.a)}\n")
    print(f"{'':<24}{'median':>9}{'min':>9}{'max':>9}")
    rows = [("A plugin loaded [s]", timing.a), ("B plugin blocked [s]", timing.b)]
    for label, values in [*rows, ("A/B per pair", timing.ratios)]:
        s = _stats(values)
        print(f"{label:<24}{s['median']:>9.3f}{s['min']:>9.3f}{s['max']:>9.3f}")
    ratio = statistics.median(timing.ratios)
    print(f"\nmedian A/B ratio over {len(timing.a)} interleaved pairs: {ratio:.3f}x")


# --- imports ----------------------------------------------------------------------------


@dataclass
class Imported:
    """One ``-X importtime`` line; ``children`` are the imports made while it ran."""

    name: str
    self_us: int
    cumulative_us: int
    level: int
    children: list[Imported] = field(default_factory=list)

    def walk(self) -> list[Imported]:
        return [self, *(m for child in self.children for m in child.walk())]


def parse_importtime(stderr: str) -> list[Imported]:
    """The import tree: a module's line comes after its children's, one indent level out."""
    stack: list[Imported] = []
    for line in stderr.splitlines():
        if not line.startswith("import time:"):
            continue
        self_us, cumulative_us, name = line[len("import time:") :].split("|", 2)
        if not self_us.strip().isdigit():
            continue  # the header
        bare = name.lstrip()
        module = Imported(bare.strip(), int(self_us), int(cumulative_us), (len(name) - len(bare)) // 2)
        while stack and stack[-1].level > module.level:
            module.children.insert(0, stack.pop())
        stack.append(module)
    return stack


def _plugin_roots(modules: list[Imported]) -> list[Imported]:
    """The outermost ``pytest_modelbudget`` imports: the plugin's import trees."""
    roots: list[Imported] = []
    for module in modules:
        if module.name == PACKAGE or module.name.startswith(PACKAGE + "."):
            roots.append(module)
        else:
            roots.extend(_plugin_roots(module.children))
    return roots


def list_imports(python: str, top: int, *, bytecode: bool) -> None:
    cmd_a = [python, "-X", "importtime", *PYTEST_ARGS]
    cmd_b = [*cmd_a, *BLOCK_PLUGIN]
    with tempfile.TemporaryDirectory(prefix="modelbudget-startup-") as tmp:
        folder = _make_folder(tmp)
        env = _child_env(folder, bytecode=bytecode)
        _run(cmd_a, folder, env)  # warm-up: fill the bytecode cache
        _run(cmd_b, folder, env)
        tree_a = parse_importtime(_run(cmd_a, folder, env).stderr)
        tree_b = parse_importtime(_run(cmd_b, folder, env).stderr)
        # pluggy loads entry points with importlib.import_module, which -X importtime does not
        # log: the package and plugin.py show only in a plain import statement.
        cmd_own = [python, "-X", "importtime", "-c", f"import pytest, {PACKAGE}.plugin"]
        tree_own = parse_importtime(_run(cmd_own, folder, env).stderr)

    roots = _plugin_roots(tree_a)
    under_plugin = [m for root in roots for m in root.walk()]
    total_us = sum(root.cumulative_us for root in roots)
    print(f"imported by the plugin: {len(under_plugin)} modules, {total_us / 1e3:.1f} ms cumulative")
    print("(one run; cumulative includes a module's own imports, so nested rows overlap)\n")
    print(f"{'cumulative [ms]':>15}  {'self [ms]':>9}  module")
    for m in sorted(under_plugin, key=lambda m: m.cumulative_us, reverse=True)[:top]:
        print(f"{m.cumulative_us / 1e3:>15.1f}  {m.self_us / 1e3:>9.1f}  {m.name}")

    own = [m for root in tree_own for m in root.walk() if m.name in (PACKAGE, PACKAGE + ".plugin")]
    print(f"\nnot logged in the pytest run (from `python -c 'import pytest, {PACKAGE}.plugin'`):")
    for m in own:
        print(f"{m.cumulative_us / 1e3:>15.1f}  {m.self_us / 1e3:>9.1f}  {m.name}")

    all_a = [m for root in tree_a for m in root.walk()]
    names_b = {m.name for root in tree_b for m in root.walk()}
    names_plugin = {m.name for m in under_plugin}
    elsewhere = [m for m in all_a if m.name not in names_b and m.name not in names_plugin]
    print(f"\nimported only with the plugin, outside its import tree: {len(elsewhere)} modules")
    for m in sorted(elsewhere, key=lambda m: m.cumulative_us, reverse=True)[:top]:
        print(f"{m.cumulative_us / 1e3:>15.1f}  {m.self_us / 1e3:>9.1f}  {m.name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=20, help="interleaved A/B pairs (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed pairs first (default 2)")
    parser.add_argument("--python", default=sys.executable, help="interpreter (default: this one)")
    parser.add_argument("--json", type=Path, help="also write the figures and every run's time here")
    parser.add_argument("--no-bytecode", action="store_true", help="no .pyc cache: compile every run")
    parser.add_argument("--imports", action="store_true", help="list the plugin's start-up imports")
    parser.add_argument("--top", type=int, default=20, help="rows in --imports lists (default 20)")
    args = parser.parse_args()
    if args.pairs < 1 or args.warmup < 0:
        parser.error("--pairs must be at least 1 and --warmup at least 0")

    _check_plugin_installed(args.python)
    if args.imports:
        list_imports(args.python, args.top, bytecode=not args.no_bytecode)
        return
    timing = time_pairs(args.python, args.pairs, args.warmup, bytecode=not args.no_bytecode)
    print_timing(timing)
    if args.json:
        args.json.write_text(json.dumps(timing.summary(), indent=2) + "\n")


if __name__ == "__main__":
    main()
