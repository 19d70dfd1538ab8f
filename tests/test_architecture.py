"""The package's shape, checked: folders are layers, imports go only downwards, no circles,
pytest only in the pytest layer, small files.

docs/architecture.md draws the same map; this test keeps it true. Imports are read from the
source with ``ast``, those inside functions included. Each rule is also run on a small
package written for the occasion with one deliberate violation, so that a rule that could
never fail would show.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pytest_modelbudget"

# Top to bottom: a module may import its own layer and the layers below it. A layer is a
# list of folders and files of the package (a folder holds everything beneath it).
LAYERS: dict[str, tuple[str, ...]] = {
    # The entry points: the pytest plugin, the command line, the package's lazy API.
    "pytest and command line": ("plugin/", "cli/", "__init__.py", "__main__.py", "benchmark_timer.py"),
    "report": ("report/",),
    "budgets": ("budgets/",),
    "kinds of call": ("calls/",),
    "units": ("units.py",),
    "measuring core": ("core/",),
    "ground": ("errors.py", "_version.py"),
}
PYTEST_LAYER = ("plugin/",)  # the only place that imports pytest
MAX_LINES = 500


def module_name(path: Path, root: Path) -> str:
    """``plugin/fixture.py`` -> ``plugin.fixture``; ``report/__init__.py`` -> ``report``; the root -> ``""``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def layer_of(name: str, path: Path, root: Path, layers: Mapping[str, tuple[str, ...]]) -> int:
    relative = path.relative_to(root).as_posix()
    for depth, places in enumerate(layers.values()):
        for place in places:
            if relative == place or (place.endswith("/") and relative.startswith(place)):
                return depth
    raise AssertionError(f"{relative} has no layer: add it to LAYERS and to docs/architecture.md")


def imports(name: str, path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(modules of the package this one imports, other top-level names it imports).

    ``from .x import y`` counts as an import of ``x.y`` where that is a module, else of ``x``.
    """
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    package = [part for part in package if part]
    inside: set[str] = set()
    outside: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            for alias in node.names:
                child = f"{target}.{alias.name}" if target else alias.name
                inside.add(child if child in known else target)
        elif isinstance(node, ast.ImportFrom) and node.module:
            outside.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            outside.update(alias.name.split(".")[0] for alias in node.names)
    return inside - {name}, outside


class House:
    """A package read from its source: modules, layers, and imports between them."""

    def __init__(self, root: Path, layers: Mapping[str, tuple[str, ...]] = LAYERS) -> None:
        self.root = root
        self.paths = modules(root)
        known = set(self.paths)
        self.layer = {name: layer_of(name, path, root, layers) for name, path in self.paths.items()}
        read = {name: imports(name, path, known) for name, path in self.paths.items()}
        self.arrows = {name: inside for name, (inside, _) in read.items()}
        self.external = {name: outside for name, (_, outside) in read.items()}
        self.layer_names = list(layers)

    def upward(self) -> list[str]:
        """``a -> b`` for each import of a module from a layer above the importer's."""
        return sorted(
            f"{a} -> {b}"
            for a, targets in self.arrows.items()
            for b in targets
            if self.layer[b] < self.layer[a]
        )

    def pytest_outside(self, allowed: tuple[str, ...] = PYTEST_LAYER) -> list[str]:
        return sorted(
            name
            for name, outside in self.external.items()
            if outside & {"pytest", "_pytest", "pluggy"}
            and not self.paths[name].relative_to(self.root).as_posix().startswith(allowed)
        )

    def circles(self) -> list[list[str]]:
        """The strongly connected groups of more than one module (Tarjan's algorithm)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        found: list[list[str]] = []

        def visit(node: str) -> None:
            index[node] = low[node] = len(index)
            stack.append(node)
            for target in sorted(self.arrows[node]):
                if target not in index:
                    visit(target)
                    low[node] = min(low[node], low[target])
                elif target in stack:
                    low[node] = min(low[node], index[target])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))

        for name in sorted(self.arrows):
            if name not in index:
                visit(name)
        return found

    def imports_of_layer(self, importer_below: str, imported: str) -> list[str]:
        """Imports from modules below layer ``importer_below`` into layer ``imported``."""
        floor = self.layer_names.index(importer_below)
        target = self.layer_names.index(imported)
        return sorted(
            f"{a} -> {b}"
            for a, targets in self.arrows.items()
            if self.layer[a] > floor
            for b in targets
            if self.layer[b] == target
        )

    def too_long(self, limit: int = MAX_LINES) -> list[str]:
        return sorted(
            f"{name or '__init__'}: {lines} lines"
            for name, path in self.paths.items()
            if (lines := len(path.read_text().splitlines())) > limit
        )


HOUSE = House(PACKAGE)


def test_every_folder_and_file_has_a_layer() -> None:
    assert HOUSE.layer  # layer_of raised for any file outside LAYERS


def test_layers_import_only_downwards() -> None:
    assert HOUSE.upward() == []


def test_no_import_circles_function_level_imports_included() -> None:
    assert HOUSE.circles() == []


def test_only_the_pytest_layer_imports_pytest() -> None:
    assert HOUSE.pytest_outside() == []


def test_the_measuring_and_budget_layers_never_word_results() -> None:
    assert HOUSE.imports_of_layer("report", "report") == []
    assert HOUSE.imports_of_layer("report", "pytest and command line") == []


def test_no_module_outgrows_its_room() -> None:
    assert HOUSE.too_long() == [], "split it by responsibility"


def test_the_package_folders_are_the_layers() -> None:
    # `ls pytest_modelbudget/` reads like the map: one folder per layer, and the few files
    # that are entry points or the ground.
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == ["budgets", "calls", "cli", "core", "plugin", "report"]


# -- each rule fails on a deliberate violation ---------------------------------------------

SMALL_LAYERS = {
    "top": ("plugin/", "__init__.py"),
    "report": ("report/",),
    "core": ("core/",),
    "ground": ("errors.py",),
}


def small_house(tmp_path: Path, files: Mapping[str, str]) -> House:
    base = {
        "__init__.py": "",
        "errors.py": "",
        "plugin/__init__.py": "import pytest\nfrom ..report import words\n",
        "report/__init__.py": "",
        "report/words.py": "from ..core import count\n",
        "core/__init__.py": "",
        "core/count.py": "from ..errors import *\n",
    }
    for name, text in {**base, **files}.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return House(tmp_path / "pkg", SMALL_LAYERS)


def test_the_rules_hold_for_a_sound_small_package(tmp_path: Path) -> None:
    house = small_house(tmp_path, {})
    assert (house.upward(), house.circles(), house.pytest_outside(("plugin/",)), house.too_long()) == (
        [],
        [],
        [],
        [],
    )


def test_an_upward_import_fails(tmp_path: Path) -> None:
    house = small_house(tmp_path, {"core/count.py": "def f():\n    from ..report.words import x\n"})
    assert house.upward() == ["core.count -> report.words"]


def test_a_circle_through_a_function_level_import_fails(tmp_path: Path) -> None:
    house = small_house(
        tmp_path,
        {
            "core/count.py": "from .devices import lock\n",
            "core/devices.py": "def f():\n    from . import count\n",
        },
    )
    assert house.circles() == [["core.count", "core.devices"]]


def test_pytest_outside_the_pytest_layer_fails(tmp_path: Path) -> None:
    house = small_house(tmp_path, {"core/count.py": "def f():\n    import pytest\n"})
    assert house.pytest_outside(("plugin/",)) == ["core.count"]


def test_the_core_importing_the_report_layer_fails(tmp_path: Path) -> None:
    house = small_house(tmp_path, {"core/count.py": "from ..report import words\n"})
    assert house.imports_of_layer("report", "report") == ["core.count -> report.words"]


def test_a_module_over_500_lines_fails(tmp_path: Path) -> None:
    house = small_house(tmp_path, {"core/count.py": "x = 1\n" * 501})
    assert house.too_long() == ["core.count: 501 lines"]


def test_a_file_without_a_layer_fails(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=r"stray\.py has no layer"):
        small_house(tmp_path, {"stray.py": ""})


# -- docstrings name modules and names that exist ------------------------------------------

_REFERENCE = re.compile(r":(?:mod|func|class|attr|meth|data|exc):`~?([^`]+)`")


def _top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names.update(
                    f"{node.name}.{item.name}" for item in node.body if isinstance(item, ast.FunctionDef)
                )
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def unresolved_references(house: House) -> list[str]:
    """Sphinx-style references in the package's source (``:func:`~..core.devices.placement```,
    relative to the module's package, or ``pytest_modelbudget.``-absolute) that name no
    module or no top-level name of one."""
    names = {name: _top_level_names(path) for name, path in house.paths.items()}
    found = []
    for name, path in sorted(house.paths.items()):
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        package = [part for part in package if part]
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for target in _REFERENCE.findall(line):
                if target.startswith("."):
                    level = len(target) - len(target.lstrip("."))
                    parts = package[: len(package) - level + 1] + [
                        p for p in target.lstrip(".").split(".") if p
                    ]
                elif target.startswith("pytest_modelbudget"):
                    parts = target.split(".")[1:]
                else:
                    continue  # torch's, the standard library's
                for cut in range(len(parts), -1, -1):
                    module = ".".join(parts[:cut])
                    if module in names:
                        rest = parts[cut:]
                        if rest and ".".join(rest[:2]) not in names[module] and rest[0] not in names[module]:
                            found.append(f"{path.relative_to(house.root)}:{number}: {target}")
                        break
                else:
                    found.append(f"{path.relative_to(house.root)}:{number}: {target}")
    return found


def test_docstring_references_name_what_exists() -> None:
    assert unresolved_references(HOUSE) == []


def test_a_reference_to_a_moved_module_fails(tmp_path: Path) -> None:
    house = small_house(tmp_path, {"core/count.py": '"""Words come from :mod:`..report.gone`."""\n'})
    assert unresolved_references(house) == ["core/count.py:1: ..report.gone"]
