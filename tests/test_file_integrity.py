"""budgets.yaml under stress: SIGKILL mid-update, concurrent updaters, deterministic bytes.

The contract (DESIGN.md section 4): never a half-written file, also when the run is killed;
two processes updating it at once both keep their entries; same data, same bytes; an
update that changes nothing does not touch the file.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path
from typing import IO, Any

import pytest

from pytest_modelbudget.budgets import baselines
from pytest_modelbudget.budgets.baselines import Entry

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and flock are POSIX")

TEMP_FILES = ".budgets.yaml.*.tmp"  # what a killed update may leave behind
KILL_TRIES = 60  # direct updaters killed at random points
REAL_KILL_TRIES = 4  # real `pytest --update-budgets` runs killed while they write
CONCURRENT_ROUNDS = 20
SEED = 20240611


def make_entries(count: int, generation: int, limits_every: int = 0) -> dict[str, Entry]:
    """``count`` entries, a few KB each; ``generation`` changes every number."""
    entries = {}
    for i in range(count):
        modules = {
            f"blocks.{j}.{part}": {"macs": 1000 * i + 10 * j + generation, "params": 7 * j + i}
            for j in range(8)
            for part in ("conv", "fc")
        }
        limits = {"max_macs": f"{i + 1}G"} if limits_every and i % limits_every == 0 else {}
        entries[f"tests/test_zoo.py::test_model[{i:03d}]"] = Entry(
            metrics={
                "macs": 10**6 * (i + 1) + generation,
                "params": 10**4 * (i + 1) + generation,
                "size": 4 * i,
            },
            modules=modules,
            convention="aten-macs/1",
            limits=limits,
        )
    return entries


def as_json(entries: dict[str, Entry]) -> dict[str, Any]:
    return {
        key: {"metrics": e.metrics, "modules": e.modules, "convention": e.convention, "limits": e.limits}
        for key, e in entries.items()
    }


def rendered(entries: dict[str, Entry]) -> bytes:
    return baselines.render(entries).encode()


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if fnmatch(p.name, TEMP_FILES))


def python(script: str, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", script, *args], **kwargs)


def wait_until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.0002)


def readline(stream: IO[bytes] | None) -> str:
    assert stream is not None
    return stream.readline().decode().strip()


# -- SIGKILL --------------------------------------------------------------------------------

# For each line on stdin, forks an updater (cheaper than starting Python 60 times) that
# prints its pid and then updates the file forever, alternating between the two entry
# sets: every write is a real read-merge-write by baselines.update, and the file is
# always one set or the other.
UPDATERS = """
import json, os, signal, sys
from pathlib import Path
from pytest_modelbudget.budgets import baselines
from pytest_modelbudget.budgets.baselines import Entry

path = Path(sys.argv[1])
sets = [{k: Entry(**v) for k, v in s.items()} for s in json.loads(Path(sys.argv[2]).read_text())]
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the killed updaters
for _ in sys.stdin:
    if os.fork() == 0:
        os.write(1, f"{os.getpid()}\\n".encode())
        generation = 1
        while True:
            baselines.update(path, sets[generation])
            generation = 1 - generation
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigkill_during_update_leaves_the_old_or_the_new_file(tmp_path: Path) -> None:
    old, new = make_entries(3, 0), make_entries(3, 1)
    old_text, new_text = rendered(old), rendered(new)
    assert (baselines.parse(old_text, "old"), baselines.parse(new_text, "new")) == (old, new)
    sets = tmp_path / "sets.json"
    sets.write_text(json.dumps([as_json(old), as_json(new)]))
    work = tmp_path / "repo"
    work.mkdir()
    path = work / "budgets.yaml"
    path.write_bytes(old_text)
    start = time.monotonic()
    baselines.update(path, new)
    baselines.update(path, old)
    period = (time.monotonic() - start) / 2  # one update, as the updater does it

    rng = random.Random(SEED)
    seen: Counter[str] = Counter()
    zygote = python(UPDATERS, str(path), str(sets), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert zygote.stdin is not None and zygote.stdout is not None
    try:
        for attempt in range(KILL_TRIES):
            path.write_bytes(old_text)
            present = set(os.listdir(work))
            zygote.stdin.write(b"go\n")
            zygote.stdin.flush()
            pid = int(readline(zygote.stdout))
            try:
                if attempt % 2:
                    # Wait for the updater's temporary file, then kill it inside the write.
                    wait_until(
                        lambda present=present: set(os.listdir(work)) - present, 30, "a temporary file"
                    )
                    time.sleep(rng.uniform(0, 0.01))
                else:
                    time.sleep(rng.uniform(0, 3 * period))  # anywhere in read, merge, write
            finally:
                os.kill(pid, signal.SIGKILL)
                wait_until(lambda pid=pid: not alive(pid), 30, "the updater to die")

            content = path.read_bytes()
            assert content in (old_text, new_text), f"try {attempt}: half a file"
            seen["new" if content == new_text else "old"] += 1
            left = temp_files(work)
            assert sorted(set(os.listdir(work)) - {"budgets.yaml"}) == left, "unexpected files"
            seen["killed mid-write"] += len(left)
            # The next update works, and removes what the killed one left behind.
            baselines.update(path, new)
            assert path.read_bytes() == new_text
            assert temp_files(work) == []
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=30)
        zygote.stdout.close()

    assert seen["old"] and seen["new"], seen
    print(f"{KILL_TRIES} kills: {dict(seen)}")


REAL_RUN_CONFTEST = """
from pathlib import Path

def pytest_sessionfinish(session):
    # Runs just before the plugin's own (trylast) hook writes budgets.yaml.
    Path(session.config.rootpath, "finishing").touch()
"""


def test_sigkill_of_a_real_update_run(project: pytest.Pytester) -> None:
    # A whole-suite update that removes stale entries (those with hand-written limits keep
    # them): a real plugin write, without the cost of importing torch.
    project.makeconftest(REAL_RUN_CONFTEST)
    project.makepyfile(test_plain="def test_plain():\n    pass\n")
    old = make_entries(6, 0, limits_every=2)
    old_text = rendered(old)
    new_text = rendered({key: Entry(limits=e.limits) for key, e in old.items() if e.limits})
    path, finishing = project.path / "budgets.yaml", project.path / "finishing"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "--update-budgets"]
    files = {*os.listdir(project.path), "budgets.yaml", "finishing", "__pycache__"}
    rng = random.Random(SEED)
    seen: Counter[str] = Counter()
    for attempt in range(REAL_KILL_TRIES):
        path.write_bytes(old_text)
        finishing.unlink(missing_ok=True)
        run = project.popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(finishing.exists, 120, "the run to finish its tests")
            if attempt % 2:  # kill it inside the write (unless it is done first)
                wait_until(
                    lambda run=run: temp_files(project.path) or run.poll() is not None, 60, "the write"
                )
                time.sleep(rng.uniform(0, 0.01))
            else:
                time.sleep(rng.uniform(0, 0.25))  # anywhere around the write
        finally:
            run.kill()
            run.wait()
        content = path.read_bytes()
        assert content in (old_text, new_text), f"try {attempt}: half a file"
        seen["new" if content == new_text else "old"] += 1
        seen["killed mid-write"] += len(temp_files(project.path))
        ours = {name for name in set(os.listdir(project.path)) - files if "budgets.yaml" in name}
        assert ours <= set(temp_files(project.path)), "unexpected files"
    # A run that is not killed finishes the job, and removes what the killed ones left.
    path.write_bytes(old_text)
    result = project.runpytest("-p", "no:cacheprovider", "--update-budgets")
    result.assert_outcomes(passed=1)
    assert path.read_bytes() == new_text
    assert temp_files(project.path) == []
    print(f"{REAL_KILL_TRIES} killed pytest runs: {dict(seen)}")


# -- concurrent updaters ---------------------------------------------------------------------

# Adds its own entry to the file named on each stdin line; answers with start and end times.
PAIR_WORKER = """
import contextlib, os, sys, time
from pathlib import Path
from pytest_modelbudget.budgets import baselines
from pytest_modelbudget.budgets.baselines import Entry

if os.environ.get("NO_LOCK"):
    baselines._locked = lambda directory: contextlib.nullcontext()
key = sys.argv[1]
entry = Entry(metrics={"macs": len(key), "params": 1, "size": 4}, convention="aten-macs/1")
print("ready", flush=True)
for line in sys.stdin:
    start = time.monotonic()
    baselines.update(Path(line.strip()), {key: entry})
    print(start, time.monotonic(), flush=True)
"""

KEYS = ("tests/test_a.py::test_a", "tests/test_b.py::test_bb")


def race(tmp_path: Path, rounds: int, env: dict[str, str] | None = None) -> tuple[int, int]:
    """Two processes add disjoint entries to the same fresh file; (rounds kept both, overlapped)."""
    old = make_entries(5, 0)  # big enough that read-merge-write takes a while
    workers = [
        python(
            PAIR_WORKER, key, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, **(env or {})}
        )
        for key in KEYS
    ]
    both = overlapped = 0
    try:
        for worker in workers:
            assert readline(worker.stdout) == "ready"
        for round_ in range(rounds):
            path = tmp_path / f"round{round_}" / "budgets.yaml"
            path.parent.mkdir()
            path.write_bytes(rendered(old))
            for worker in workers:  # both start together: each is blocked reading its stdin
                assert worker.stdin is not None
                worker.stdin.write(f"{path}\n".encode())
                worker.stdin.flush()
            (start_a, end_a), (start_b, end_b) = (map(float, readline(w.stdout).split()) for w in workers)
            overlapped += start_a < end_b and start_b < end_a
            entries = baselines.load(path).entries
            assert set(entries) >= set(old)
            both += all(key in entries for key in KEYS)
            assert temp_files(path.parent) == []
    finally:
        for worker in workers:
            assert worker.stdin is not None and worker.stdout is not None
            worker.stdin.close()
            worker.wait(timeout=30)
            worker.stdout.close()
    return both, overlapped


def test_two_processes_updating_disjoint_tests_both_keep_their_entries(tmp_path: Path) -> None:
    both, overlapped = race(tmp_path, CONCURRENT_ROUNDS)
    assert both == CONCURRENT_ROUNDS
    assert overlapped >= CONCURRENT_ROUNDS // 2, "the updates hardly ran at the same time"


def test_without_the_lock_the_same_race_loses_an_entry(tmp_path: Path) -> None:
    # Shows that the test above can fail: the race is real, the lock is what wins it.
    both, _ = race(tmp_path, 5, env={"NO_LOCK": "1"})
    assert both < 5


BARRIER_CONFTEST = """
import os, time
from pathlib import Path

def pytest_sessionfinish(session):
    # Both runs wait here, then write budgets.yaml (trylast) at the same moment.
    here = Path(session.config.rootpath)
    (here / f"arrived-{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while len(list(here.glob("arrived-*"))) < 2:
        if time.monotonic() > deadline:
            (here / "barrier-timed-out").touch()
            break
        time.sleep(0.001)
"""

PAIR_TESTS = """
import pytest
import torch

@pytest.mark.model_budget
def test_a(model_budget):
    model_budget(torch.nn.Linear(10, 3), torch.randn(1, 10))

@pytest.mark.model_budget
def test_b(model_budget):
    model_budget(torch.nn.Linear(10, 4), torch.randn(1, 10))
"""


def test_two_real_update_runs_of_disjoint_tests_both_keep_their_entries(project: pytest.Pytester) -> None:
    project.makeconftest(BARRIER_CONFTEST)
    project.makepyfile(test_pair=PAIR_TESTS)
    old = make_entries(6, 0)
    path = project.path / "budgets.yaml"
    path.write_bytes(rendered(old))
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "--update-budgets"]
    runs = [
        project.popen(
            [*command, "-k", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        for name in ("test_a", "test_b")
    ]
    try:
        outputs = [run.communicate(timeout=300)[0].decode() for run in runs]
    finally:
        for run in runs:
            run.kill()
            run.wait()
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output
    assert len(list(project.path.glob("arrived-*"))) == 2
    assert not (project.path / "barrier-timed-out").exists()
    entries = baselines.load(path).entries
    assert {key: entries[key] for key in old} == old
    assert entries["test_pair.py::test_a"].metrics["macs"] == 30
    assert entries["test_pair.py::test_b"].metrics["macs"] == 40
    assert temp_files(project.path) == []


# -- deterministic bytes ---------------------------------------------------------------------


def shuffled(entries: dict[str, Entry], rng: random.Random) -> dict[str, Entry]:
    """The same data, built in another order, with whole floats where ints were."""

    def mix(mapping: Any) -> dict[Any, Any]:
        items = list(mapping.items())
        rng.shuffle(items)
        return dict(items)

    return mix(
        {
            key: Entry(
                metrics=mix({m: float(v) for m, v in e.metrics.items()}),
                modules=mix({path: mix(stats) for path, stats in e.modules.items()}),
                convention=e.convention,
                limits=e.limits,
            )
            for key, e in entries.items()
        }
    )


def test_same_data_built_in_any_order_gives_the_same_bytes(tmp_path: Path) -> None:
    entries = make_entries(3, 0, limits_every=2)
    rng = random.Random(SEED)
    assert {baselines.render(shuffled(entries, rng)) for _ in range(5)} == {baselines.render(entries)}
    # And an update with any of them leaves the file alone.
    path = tmp_path / "budgets.yaml"
    path.write_bytes(rendered(entries))
    stamp = path.stat().st_mtime_ns
    for _ in range(3):
        assert not baselines.update(path, shuffled(entries, rng))
    assert path.stat().st_mtime_ns == stamp


HASH_SEED_UPDATE = """
import sys
from pathlib import Path
from pytest_modelbudget.budgets import baselines
from pytest_modelbudget.budgets.baselines import Entry

path = Path(sys.argv[1])
measured = {f"t.py::test_{c}": Entry(metrics={"macs": ord(c)}, modules={c: {"macs": 1}}) for c in "qwertyuiop"}
baselines.update(path, measured, remove=frozenset(f"t.py::gone_{c}" for c in "asdfghjkl"))
"""


def test_bytes_do_not_depend_on_the_hash_seed(tmp_path: Path) -> None:
    # Sets (the stale keys to remove) iterate in a hash-seed order; the file must not.
    outputs = set()
    for seed in ("1", "12345"):
        path = tmp_path / seed / "budgets.yaml"
        path.parent.mkdir()
        path.write_text(
            baselines.render(
                {f"t.py::gone_{c}": Entry(metrics={"macs": 1}, limits={"max_macs": "1G"}) for c in "asdf"}
            )
        )
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", HASH_SEED_UPDATE, str(path)], check=True, env=env)
        outputs.add(path.read_bytes())
    assert len(outputs) == 1


AWKWARD_KEYS = [
    "t.py::test[yes]",
    "t.py::test[null]",
    "t.py::test[~]",
    "t.py::test[1e3]",
    "t.py::test[a: b]",
    "t.py::test['quoted' \"twice\"]",
    "t.py::test[- dash]",
    "t.py::test[#hash]#call",
    "t.py::test[&anchor *alias !tag]",
    "t.py::test[\\x00\\n]",
    "t.py::Test::test_unicode[é-π]",
    "t.py::test_" + "long_parametrization_" * 10,  # over 128 characters: a complex key in YAML
]


def test_awkward_test_ids_and_module_names_round_trip_byte_for_byte(tmp_path: Path) -> None:
    modules = {name: {"macs": 1, "params": 2} for name in ("0", "1.10", "null", "yes", "a.b-c", "(root)")}
    entries = {key: Entry(metrics={"macs": i}, modules=modules) for i, key in enumerate(AWKWARD_KEYS)}
    text = baselines.render(entries)
    assert baselines.parse(text.encode(), "x") == entries
    assert baselines.render(baselines.parse(text.encode(), "x")) == text
    path = tmp_path / "budgets.yaml"
    path.write_text(text)
    stamp = path.stat().st_mtime_ns
    assert not baselines.update(path, entries)
    assert path.stat().st_mtime_ns == stamp


def test_an_update_that_changes_nothing_writes_nothing_at_all(tmp_path: Path) -> None:
    entries = make_entries(3, 0, limits_every=2)
    path = tmp_path / "budgets.yaml"
    path.write_bytes(rendered(entries))
    before = path.stat()
    directory_before = tmp_path.stat().st_mtime_ns
    time.sleep(0.01)  # a rewrite would get a later time stamp
    # Same data again; removal of entries that are not there; no measurement at all.
    assert not baselines.update(path, entries)
    assert not baselines.update(path, {}, remove=frozenset({"tests/t.py::test_gone"}))
    assert not baselines.update(path, {})
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )
    # Not even a temporary file was created and deleted in the directory.
    assert tmp_path.stat().st_mtime_ns == directory_before
    assert sorted(os.listdir(tmp_path)) == ["budgets.yaml"]


def test_an_update_that_changes_nothing_keeps_a_hand_edited_file(tmp_path: Path) -> None:
    # Comments and formatting of a hand-edited file survive updates that change no value.
    path = tmp_path / "budgets.yaml"
    text = (
        b"version: 1\n"
        b"entries:\n"
        b"  t.py::test_a:  # the model we ship\n"
        b"    macs: 1329000\n"
        b"    params: 1007590\n"
        b"    limits: {max_macs: 2G}  # agreed with the mobile team\n"
    )
    path.write_bytes(text)
    measured = {"t.py::test_a": Entry(metrics={"macs": 1329000, "params": 1007590})}
    assert not baselines.update(path, measured)
    assert path.read_bytes() == text
    # A real change rewrites it in the canonical form, keeping the hand-written limits.
    assert baselines.update(path, {"t.py::test_a": Entry(metrics={"macs": 1, "params": 1007590})})
    assert baselines.load(path).entries["t.py::test_a"].limits == {"max_macs": "2G"}
    assert path.read_text().startswith(baselines.HEADER)


def test_an_update_with_nothing_to_record_creates_no_file(tmp_path: Path) -> None:
    path = tmp_path / "budgets.yaml"
    assert not baselines.update(path, {}, remove=frozenset({"t.py::test_gone"}))
    assert not path.exists()


def test_a_symlinked_file_is_updated_where_it_lives(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    target = tmp_path / "shared" / "budgets.yaml"
    target.write_bytes(rendered({}))
    link = tmp_path / "budgets.yaml"
    link.symlink_to(Path("shared") / "budgets.yaml")
    entry = Entry(metrics={"macs": 1})
    assert baselines.update(link, {"t.py::test_a": entry})
    assert link.is_symlink()
    assert baselines.load(target).entries == {"t.py::test_a": entry}
    assert temp_files(tmp_path) == temp_files(tmp_path / "shared") == []
