from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pytest_modelbudget.budgets import baselines
from pytest_modelbudget.budgets.baselines import Entry
from pytest_modelbudget.errors import BaselineFileError

ENTRY = Entry(
    metrics={"macs": 1329000, "params": 1007590, "size": 4030360},
    modules={"fc1": {"macs": 1000000, "params": 1000500}, "conv1": {"macs": 144000, "params": 260}},
    convention="aten-macs/1",
)


def test_render_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    entries = {"t.py::b": ENTRY, "t.py::a": Entry(limits={"max_macs": "2G"})}
    text = baselines.render(entries)
    assert text == baselines.render(dict(reversed(list(entries.items()))))
    assert text.startswith("# Model budget baselines")
    assert "pytest --model-budget --update-budgets" in text
    assert text.index("t.py::a") < text.index("t.py::b")
    assert "{" not in text  # block style only
    assert baselines.parse(text.encode(), "x") == entries


def test_modules_sorted_naturally() -> None:
    modules = {f"features.{i}": {"macs": i} for i in (10, 2, 1)}
    text = baselines.render({"t": Entry(metrics={"macs": 1}, modules=modules)})
    assert text.index("features.1:") < text.index("features.2:") < text.index("features.10:")


def test_missing_file_is_empty(tmp_path: Path) -> None:
    loaded = baselines.load(tmp_path / "budgets.yaml")
    assert loaded.entries == {} and not loaded.exists


def test_update_merges_keeps_limits_and_skips_unchanged_write(tmp_path: Path) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(baselines.render({"t::keep": ENTRY, "t::mine": Entry(limits={"max_macs": "2M"})}))
    new = Entry(metrics={"macs": 5, "params": 6, "size": 7}, convention="aten-macs/1")
    assert baselines.update(path, {"t::mine": new})
    entries = baselines.load(path).entries
    assert entries["t::keep"] == ENTRY
    assert entries["t::mine"].metrics == {"macs": 5, "params": 6, "size": 7}
    assert entries["t::mine"].limits == {"max_macs": "2M"}
    before = path.stat().st_mtime_ns
    os.utime(path, ns=(before - 10**9, before - 10**9))
    assert not baselines.update(path, {"t::mine": new})
    assert path.stat().st_mtime_ns == before - 10**9  # not rewritten


def test_update_removes_stale_but_keeps_their_hand_written_limits(tmp_path: Path) -> None:
    path = tmp_path / "budgets.yaml"
    limited = Entry(metrics={"macs": 1}, limits={"max_params": 10})
    path.write_text(baselines.render({"t::gone": ENTRY, "t::limited": limited}))
    baselines.update(path, {}, remove=frozenset({"t::gone", "t::limited"}))
    assert baselines.load(path).entries == {"t::limited": Entry(limits={"max_params": 10})}


def test_update_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "budgets.yaml"
    baselines.update(path, {"t": ENTRY})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["budgets.yaml"]


def test_update_keeps_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(baselines.render({}))
    path.chmod(0o640)
    baselines.update(path, {"t": ENTRY})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_read_only_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text(baselines.render({}))
    path.chmod(0o444)
    with pytest.raises(BaselineFileError, match="read-only"):
        baselines.update(path, {"t": ENTRY})


BAD_FILES = [
    (b"", "is empty"),
    (b"- a\n- b\n", "must be a mapping"),
    (b"version: 1\nentries: [\n", "not valid YAML"),
    (b"\xff\xfe\x00bad", "not UTF-8"),
    (b"!!python/object/apply:os.system ['echo hi']\n", "safe loader refuses"),
    (b"version: 1\nversion: 1\nentries: {}\n", "duplicate key 'version'"),
    (b"version: 99\nentries: {}\n", "upgrade pytest-modelbudget"),
    (b"version: one\nentries: {}\n", "'version' must be an integer"),
    (b"version: 1\nentries:\n  t:\n    macs: lots\n", "macs must be a number"),
    (b"version: 1\nentries:\n  t:\n    macs: .nan\n", "finite number"),
    (b"version: 1\nentries:\n  t:\n    macs: .inf\n", "finite number"),
    (b"version: 1\nentries:\n  t:\n    params: -3\n", "finite number >= 0"),
    (b"version: 1\nentries:\n  t:\n    latency: 3\n", "unknown key(s) ['latency']"),
    (b"version: 1\nentries:\n  t:\n    limits:\n      max_mac: 3\n", "did you mean 'max_macs'"),
    (b"version: 1\nentries:\n  t:\n    limits:\n      max_macs: 4.1X\n", "SI suffix"),
    (b"version: 1\nentries:\n  t: 5\n", "must be a mapping"),
    (b"version: 1\nentries: 5\n", "'entries' must be a mapping"),
    (b"version: 1\nentries: {}\nextra: 1\n", "unknown top-level key"),
]


@pytest.mark.parametrize(("content", "fragment"), BAD_FILES)
def test_bad_files_give_one_clear_error(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_bytes(content)
    with pytest.raises(BaselineFileError) as info:
        baselines.load(path)
    message = str(info.value)
    assert fragment in message
    assert message.startswith(str(path))
    assert path.read_bytes() == content


def test_python_tag_is_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "budgets.yaml"
    path.write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(BaselineFileError):
        baselines.load(path)
    assert not marker.exists()


def test_entry_errors_name_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "budgets.yaml"
    path.write_text("version: 1\nentries:\n  tests/t.py::test_x:\n    macs: -1\n")
    with pytest.raises(BaselineFileError, match=r"entry 'tests/t.py::test_x'"):
        baselines.load(path)


def test_directory_and_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BaselineFileError, match="is a directory"):
        baselines.load(tmp_path)
    with pytest.raises(BaselineFileError, match="does not exist"):
        baselines.load(tmp_path / "nope" / "budgets.yaml")


# Written by 85e7fab (before timing baselines became typed values), plus a hand-written
# CUDA fingerprint and limits so that every stored key appears.
EARLIER_FILE = """\
# Model budget baselines, written by pytest-modelbudget.
# Regenerate with: pytest --model-budget --update-budgets
# Review the diff like any snapshot before committing it. Entries are keyed by test id
# (plus '#name' for named calls). Hand-written `limits:` are never changed by updates.
version: 1
entries:
  test_m.py::test_named#big:
    convention: aten-macs/1
    macs: 256
    params: 136
    size: 544
    modules:
      (root):
        macs: 256
        params: 136
  test_m.py::test_named#small:
    convention: aten-macs/1
    macs: 128
    params: 72
    size: 288
    modules:
      (root):
        macs: 128
        params: 72
  test_m.py::test_timed:
    convention: aten-macs/1
    macs: 18432
    params: 4680
    size: 18720
    modules:
      '0':
        macs: 16384
        params: 4160
      '2':
        macs: 2048
        params: 520
    timing:
      cpu | AMD EPYC | 1 thread | float32 | eager:
        median_ms: 0.0112
        p90_ms: 0.01128
        min_ms: 0.01107
        relative: 0.07799
        relative_spread: 0.03949
        spread: 0.0102
        samples: 30
        probes:
          matmul: 0.1422
      cuda | NVIDIA H100 80GB HBM3 | float32 | eager:
        median_ms: 0.0451
        p90_ms: 0.0472
        min_ms: 0.0449
        spread: 0.012
        samples: 200
        peak_memory: 1048576
        probes:
          copy: 0.3121
          matmul: 0.1422
          python: 0.8913
    limits:
      max_macs: 20k
      max_latency_ms: 5
"""


def test_a_file_written_by_the_earlier_version_is_rewritten_byte_for_byte(tmp_path: Path) -> None:
    entries = baselines.parse(EARLIER_FILE.encode(), "budgets.yaml")
    # Version 2 only adds keys (timing's relative_settled): a version 1 file's entries are
    # rewritten as they were, under the new version number.
    assert baselines.render(entries) == EARLIER_FILE.replace("version: 1\n", "version: 2\n")
    stored = entries["test_m.py::test_timed"].timing["cuda | NVIDIA H100 80GB HBM3 | float32 | eager"]
    assert stored["peak_memory"] == 1048576
    # An update that changes another entry leaves this one's bytes as they were.
    path = tmp_path / "budgets.yaml"
    path.write_text(EARLIER_FILE)
    grown = Entry(metrics={"macs": 300, "params": 150, "size": 600}, convention="aten-macs/1")
    assert baselines.update(path, {"test_m.py::test_named#big": grown})
    timed_block = EARLIER_FILE[EARLIER_FILE.index("  test_m.py::test_timed:") :]
    assert path.read_text().endswith(timed_block)


def test_an_eager_update_keeps_the_figures_of_a_compiled_run(tmp_path: Path) -> None:
    path = tmp_path / "budgets.yaml"
    compiled = Entry(metrics={"macs": 10, "params": 5, "size": 20, "graph_breaks": 1, "graphs": 2})
    baselines.update(path, {"t.py::t": compiled})
    # A run without --budget-compile measures the call eagerly: its compile figures stay.
    eager = Entry(metrics={"macs": 12, "params": 5, "size": 20})
    baselines.update(path, {"t.py::t": eager})
    assert baselines.load(path).entries["t.py::t"].metrics == {
        "macs": 12,
        "params": 5,
        "size": 20,
        "graph_breaks": 1,
        "graphs": 2,
    }
    # A compiled run replaces them all (a break fixed: graph_breaks 0, one graph).
    fixed = Entry(metrics={"macs": 12, "params": 5, "size": 20, "graph_breaks": 0, "graphs": 1})
    baselines.update(path, {"t.py::t": fixed})
    assert baselines.load(path).entries["t.py::t"].metrics == fixed.metrics
