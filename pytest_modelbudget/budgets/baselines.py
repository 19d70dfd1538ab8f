"""budgets.yaml: load, merge and write the baseline file; entry keys and stale entries.

The file is the product's memory, so it is handled defensively:

* loaded with a safe loader that also rejects duplicate keys, and validated, with errors
  that name the file, the entry and the problem (:mod:`.entries`);
* rendered deterministically (same data, same bytes) so reviews see real changes only;
* updated under a lock on its directory (read, merge, write), so two processes
  updating different tests both keep their entries;
* written atomically (temporary file in the same directory, fsync, rename), so a
  killed run leaves the old file or the new one, never half of one;
* left untouched on disk when an update changes nothing.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import BaselineFileError
from .entries import FORMAT_VERSION, ROOT_MODULE, TIMING_KEYS, Entry, parse
from .metrics import COMPILED, RATCHETED

__all__ = [
    "FORMAT_VERSION",
    "HEADER",
    "ROOT_MODULE",
    "TIMING_KEYS",
    "Entry",
    "load",
    "parse",
    "render",
    "update",
]

HEADER = """\
# Model budget baselines, written by pytest-modelbudget.
# Regenerate with: pytest --model-budget --update-budgets
# Review the diff like any snapshot before committing it. Entries are keyed by test id
# (plus '#name' for named calls). Hand-written `limits:` are never changed by updates.
"""

# The same bytes from either emitter (the representer is Python in both).
_DUMPER = (
    getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    if getattr(yaml, "__with_libyaml__", False)
    else yaml.SafeDumper
)
NAME_SEPARATOR = "#"


def entry_key(nodeid: str, name: str | None) -> str:
    """budgets.yaml key of a call: the test id, plus ``#name`` for named calls."""
    return nodeid if name is None else f"{nodeid}{NAME_SEPARATOR}{name}"


def belongs_to(key: str, nodeids: Iterable[str]) -> bool:
    """Whether a budgets.yaml key is an entry of one of ``nodeids``."""
    nodeids = nodeids if isinstance(nodeids, (set, frozenset)) else set(nodeids)
    return key in nodeids or key.rpartition(NAME_SEPARATOR)[0] in nodeids


def full_scope(
    args: Sequence[str], invocation_dir: Path, rootpath: Path, *, narrowed: bool
) -> list[str] | None:
    """Path prefixes (rootdir-relative) whose every test a run collected, or None.

    Runs narrowed by -k, -m, --lf, --deselect, node ids or collection errors see only part
    of the suite: they may neither report nor delete stale entries.
    """
    if narrowed:
        return None
    prefixes = []
    for arg in args:
        if "::" in arg:
            return None
        path = Path(invocation_dir, arg).resolve()
        try:
            relative = path.relative_to(rootpath)
        except ValueError:
            return None
        prefixes.append("" if str(relative) == "." else relative.as_posix())
    return prefixes


def _in_scope(key: str, prefixes: Sequence[str]) -> bool:
    path = key.split("::", 1)[0]
    return any(p == "" or path == p or path.startswith(p.rstrip("/") + "/") for p in prefixes)


def stale_keys(entries: Iterable[str], collected: set[str], scope: Sequence[str] | None) -> list[str]:
    """Entries of tests that no longer exist, within the part of the suite a run saw in full."""
    if scope is None:
        return []
    return sorted(key for key in entries if not belongs_to(key, collected) and _in_scope(key, scope))


@dataclass
class BaselineFile:
    path: Path
    entries: dict[str, Entry]
    exists: bool
    text: str = ""  # as read: what xdist workers get, to parse themselves


def load(path: Path) -> BaselineFile:
    """Read and validate ``path``; a missing file is an empty baseline."""
    if path.is_dir():
        raise BaselineFileError(str(path), "is a directory; point --budgets-file at a file")
    if not path.exists():
        if not path.parent.is_dir():
            raise BaselineFileError(str(path), f"its directory {str(path.parent)!r} does not exist")
        return BaselineFile(path, {}, exists=False)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise BaselineFileError(str(path), f"cannot be read ({error.strerror})") from None
    entries = parse(raw, str(path))  # validated: so it is UTF-8 text
    return BaselineFile(path, entries, exists=True, text=raw.decode("utf-8"))


def _significant(value: float, digits: int = 4) -> float | int:
    # Timings keep 4 significant digits: precise enough to judge, short enough to diff.
    if isinstance(value, int) or float(value).is_integer():
        return int(value)
    return float(f"{value:.{digits}g}")


def render(entries: Mapping[str, Entry]) -> str:
    """Entries -> file text. Deterministic: sorted keys, fixed field order, block style."""
    document: dict[str, Any] = {"version": FORMAT_VERSION, "entries": {}}
    for key in sorted(entries):
        entry = entries[key]
        body: dict[str, Any] = {}
        if entry.convention:
            body["convention"] = entry.convention
        for metric in RATCHETED:
            if metric in entry.metrics:
                body[metric] = int(entry.metrics[metric])
        if entry.macs_by_dtype:
            body["macs_by_dtype"] = {dtype: int(n) for dtype, n in sorted(entry.macs_by_dtype.items())}
        if entry.modules:
            body["modules"] = {
                path: {k: int(v) for k, v in sorted(stats.items())}
                for path, stats in sorted(entry.modules.items(), key=lambda item: _natural(item[0]))
            }
        if entry.timing:
            body["timing"] = {
                device: {
                    name: (
                        {p: _significant(v) for p, v in sorted(stats[name].items())}
                        if name == "probes"
                        else _significant(stats[name])
                    )
                    for name in TIMING_KEYS
                    if name in stats
                }
                for device, stats in sorted(entry.timing.items())
            }
        if entry.limits:
            body["limits"] = dict(entry.limits)
        document["entries"][key] = body
    if not document["entries"]:
        document["entries"] = {}
    text = yaml.dump(
        document, Dumper=_DUMPER, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1000
    )
    return HEADER + text


def _natural(path: str) -> list[tuple[int, int | str]]:
    # "features.2" before "features.10", as the model's layers are numbered.
    return [(0, int(part)) if part.isdigit() else (1, part) for part in path.split(".")]


@contextmanager
def _locked(directory: Path) -> Iterator[bool]:
    """An exclusive lock on the file's directory, shared by every process updating it.

    The lock file lives in the temporary directory (keyed by the directory's real path),
    so it never lands in the user's repository and a read-only checkout can still lock.
    """
    from filelock import FileLock  # imported only when the file is written

    digest = hashlib.sha256(os.path.realpath(directory).encode()).hexdigest()[:16]
    uid = os.getuid() if hasattr(os, "getuid") else 0
    with FileLock(Path(tempfile.gettempdir()) / f"pytest-modelbudget-{uid}-{digest}.lock"):
        yield True


def _remove_orphans(path: Path) -> None:
    """Delete temporary files of updates that were killed mid-write.

    Call only under the lock: every writer holds it while its temporary file exists, so
    any left then are orphans, which would otherwise pile up (and get committed).
    """
    prefix = f".{path.name}."
    for name in os.listdir(path.parent):
        if name.startswith(prefix) and name.endswith(".tmp"):
            with suppress(OSError):
                os.unlink(path.parent / name)


def _write_atomically(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    with suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _kept_compile_metrics(old: Mapping[str, int], new: Mapping[str, int]) -> dict[str, int]:
    """The new metrics, plus the old compile metrics when this run did not compile the call.

    Like timings of other devices, the figures of a compiled run (``--budget-compile`` in
    another CI job, say) outlive an update run that measured the call eagerly.
    """
    if any(name in new for name in COMPILED):
        return dict(new)
    return {**new, **{name: value for name, value in old.items() if name in COMPILED}}


def update(path: Path, measured: Mapping[str, Entry], remove: frozenset[str] = frozenset()) -> bool:
    """Merge measured entries into the file (and drop ``remove``); True if it changed.

    Runs read-merge-write under the directory lock so concurrent updaters of different
    tests both keep their entries. Hand-written limits already in the file win over the
    (empty) limits of a fresh measurement.
    """
    # Also honour a cleared write bit when running as root, who may write anyway: a
    # read-only budgets file is a deliberate "do not touch".
    if path.exists() and (not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222):
        raise BaselineFileError(str(path), "is read-only; make it writable to update baselines")
    if not path.parent.is_dir():
        raise BaselineFileError(str(path), f"its directory {str(path.parent)!r} does not exist")
    path = Path(os.path.realpath(path))  # a symlink stays a link: update the file it points to
    with _locked(path.parent) as locked:
        if locked:
            _remove_orphans(path)
        current = load(path)
        merged = dict(current.entries)
        for key in remove:
            entry = merged.pop(key, None)
            if entry is not None and entry.limits:
                # Hand-written limits outlive the measurement: keep them.
                merged[key] = Entry(limits=entry.limits, budget=entry.budget)
        for key, entry in measured.items():
            old = merged.get(key) or Entry()
            merged[key] = Entry(
                _kept_compile_metrics(old.metrics, entry.metrics),
                entry.modules,
                entry.convention,
                old.limits or entry.limits,
                # Timings of other devices are kept: each machine updates its own.
                {**old.timing, **entry.timing},
                old.budget or entry.budget,
                entry.macs_by_dtype,
            )
        text = render(merged)
        # Same data: leave the file alone (a hand-edited one keeps its comments), and
        # create none when there is nothing to record.
        if merged == current.entries or (current.exists and path.read_bytes() == text.encode("utf-8")):
            return False
        try:
            _write_atomically(path, text)
        except OSError as error:
            raise BaselineFileError(str(path), f"cannot be written ({error.strerror})") from None
    return True
