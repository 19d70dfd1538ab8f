"""budgets.yaml: load, validate, merge and write the baseline file.

The file is the product's memory, so it is handled defensively:

* loaded with a safe loader that also rejects duplicate keys;
* validated, with errors that name the file, the entry and the problem;
* rendered deterministically (same data, same bytes) so reviews see real changes only;
* updated under a lock on its directory (read, merge, write), so two processes
  updating different tests both keep their entries;
* written atomically (temporary file in the same directory, fsync, rename), so a
  killed run leaves the old file or the new one, never half of one;
* left untouched on disk when an update changes nothing.
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import BaselineFileError, BudgetSpecError, shown
from .budget import KEYWORDS, Budget, parse_budget
from .metrics import COMPILED, METRICS, RATCHETED
from .timing_verdicts import STORED_KEYS

FORMAT_VERSION = 1
# What `modules:` keeps per module path: the metric rows' module figures (forward MACs,
# params, a training step's backward MACs).
MODULE_KEYS = tuple(dict.fromkeys(m.module_figure for m in METRICS if m.module_figure))
ROOT_MODULE = "(root)"  # how the model's own ops and params appear in `modules:`

HEADER = """\
# Model budget baselines, written by pytest-modelbudget.
# Regenerate with: pytest --model-budget --update-budgets
# Review the diff like any snapshot before committing it. Entries are keyed by test id
# (plus '#name' for named calls). Hand-written `limits:` are never changed by updates.
"""

_ENTRY_KEYS = ("convention", *RATCHETED, "macs_by_dtype", "modules", "timing", "limits")
# Per device fingerprint under `timing:` (LatencyBaseline's fields); all but `probes` are numbers.
TIMING_KEYS = STORED_KEYS
NAME_SEPARATOR = "#"


def entry_key(nodeid: str, name: str | None) -> str:
    """budgets.yaml key of a call: the test id, plus ``#name`` for named calls."""
    return nodeid if name is None else f"{nodeid}{NAME_SEPARATOR}{name}"


def belongs_to(key: str, nodeids: Iterable[str]) -> bool:
    """Whether a budgets.yaml key is an entry of one of ``nodeids``."""
    nodeids = nodeids if isinstance(nodeids, (set, frozenset)) else set(nodeids)
    return key in nodeids or key.rpartition(NAME_SEPARATOR)[0] in nodeids


@dataclass(frozen=True)
class Entry:
    """The stored baseline of one measured call, plus any hand-written limits."""

    metrics: Mapping[str, int] = field(default_factory=dict)
    modules: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    convention: str | None = None
    limits: Mapping[str, Any] = field(default_factory=dict)  # as written, for round-trips
    timing: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # fingerprint -> stored stats
    # The hand-written limits, parsed once, when the entry is made (None without limits).
    budget: Budget | None = field(default=None, compare=False, repr=False)
    # MACs by the dtype they ran in; kept only where not all of them ran in float32.
    macs_by_dtype: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.limits and self.budget is None:  # raises BudgetSpecError for bad limits
            object.__setattr__(self, "budget", parse_budget(self.limits))


# -- which entries are stale ----------------------------------------------------------


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


class _StrictSafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of keeping the last."""


def _construct_mapping(loader: _StrictSafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_StrictSafeLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


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


def parse(raw: bytes, where: str) -> dict[str, Entry]:
    """Bytes of a budgets.yaml -> validated entries."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BaselineFileError(where, f"is not UTF-8 text (byte {error.start})") from None
    try:
        data = yaml.load(text, Loader=_StrictSafeLoader)
    except yaml.constructor.ConstructorError as error:
        problem = error.problem or str(error)
        if "could not determine a constructor" in problem:
            problem = (
                "contains a tag that a safe loader refuses (" + problem.split("for the tag")[-1].strip() + ")"
            )
        line = f" (line {error.problem_mark.line + 1})" if error.problem_mark else ""
        raise BaselineFileError(where, f"{problem}{line}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise BaselineFileError(where, f"is not valid YAML: {problem}{line}") from None
    return _validate(data, where)


def _validate(data: Any, where: str) -> dict[str, Entry]:
    if data is None:
        raise BaselineFileError(
            where, "is empty; delete it or run pytest --model-budget --update-budgets to create it"
        )
    if not isinstance(data, dict):
        raise BaselineFileError(
            where, f"must be a mapping with 'version' and 'entries', not a {type(data).__name__}"
        )
    unknown = sorted(set(map(str, data)) - {"version", "entries"})
    if unknown:
        raise BaselineFileError(
            where, f"unknown top-level key(s) {unknown}; expected 'version' and 'entries'"
        )
    version = data.get("version")
    if "version" not in data:
        raise BaselineFileError(where, f"has no 'version'; add 'version: {FORMAT_VERSION}' at the top")
    if isinstance(version, bool) or not isinstance(version, int):
        raise BaselineFileError(where, f"'version' must be an integer, got {shown(version)}")
    if version > FORMAT_VERSION:
        raise BaselineFileError(
            where,
            f"has version {version}, but this pytest-modelbudget understands up to "
            f"{FORMAT_VERSION}; upgrade pytest-modelbudget",
        )
    if version < 1:
        raise BaselineFileError(where, f"'version' must be 1 or more, got {version}")
    entries = {} if data.get("entries") is None else data["entries"]  # `entries: []` is an error
    if not isinstance(entries, dict):
        raise BaselineFileError(where, f"'entries' must be a mapping, not a {type(entries).__name__}")
    return {str(key): _validate_entry(value, where, str(key)) for key, value in entries.items()}


def _count(value: Any, where: str, entry: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BaselineFileError(where, f"{what} must be a number, got {shown(value)}", entry)
    if not math.isfinite(value) or value < 0:
        raise BaselineFileError(where, f"{what} must be a finite number >= 0, got {value!r}", entry)
    if value != int(value):
        raise BaselineFileError(where, f"{what} must be a whole number, got {value!r}", entry)
    return int(value)


def _validate_entry(value: Any, where: str, key: str) -> Entry:
    if not isinstance(value, dict):
        raise BaselineFileError(where, f"must be a mapping, not {shown(value)}", key)
    unknown = sorted(set(map(str, value)) - set(_ENTRY_KEYS))
    if unknown:
        raise BaselineFileError(
            where, f"unknown key(s) {unknown}; an entry may hold {list(_ENTRY_KEYS)}", key
        )
    metrics = {m: _count(value[m], where, key, m) for m in RATCHETED if m in value}
    modules_raw = {} if value.get("modules") is None else value["modules"]
    if not isinstance(modules_raw, dict):
        raise BaselineFileError(where, "'modules' must be a mapping of module path to counts", key)
    modules: dict[str, dict[str, int]] = {}
    for path, stats in modules_raw.items():
        if not isinstance(stats, dict) or not set(stats) <= set(MODULE_KEYS):
            raise BaselineFileError(
                where, f"modules.{path} must be a mapping with {', '.join(map(repr, MODULE_KEYS))}", key
            )
        modules[str(path)] = {k: _count(v, where, key, f"modules.{path}.{k}") for k, v in stats.items()}
    convention = value.get("convention")
    if convention is not None and not isinstance(convention, str):
        raise BaselineFileError(where, f"'convention' must be a string, got {shown(convention)}", key)
    limits = {} if value.get("limits") is None else value["limits"]
    if not isinstance(limits, dict):
        raise BaselineFileError(
            where, f"'limits' must be a mapping of marker keywords ({', '.join(KEYWORDS)})", key
        )
    timing = _validate_timing({} if value.get("timing") is None else value["timing"], where, key)
    try:
        return Entry(  # parses the limits once
            metrics,
            modules,
            convention,
            dict(limits),
            timing,
            macs_by_dtype=_macs_by_dtype(value, where, key),
        )
    except BudgetSpecError as error:
        raise BaselineFileError(where, f"limits: {error}", key) from None


def _macs_by_dtype(value: Mapping[str, Any], where: str, key: str) -> dict[str, int]:
    by_dtype = {} if value.get("macs_by_dtype") is None else value["macs_by_dtype"]
    if not isinstance(by_dtype, dict):
        raise BaselineFileError(where, "'macs_by_dtype' must be a mapping of dtype name to MACs", key)
    return {str(dtype): _count(n, where, key, f"macs_by_dtype.{dtype}") for dtype, n in by_dtype.items()}


def _number(value: Any, where: str, entry: str, what: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise BaselineFileError(where, f"{what} must be a finite number >= 0, got {shown(value)}", entry)
    return value


def _validate_timing(timing: Any, where: str, key: str) -> dict[str, dict[str, Any]]:
    if not isinstance(timing, dict):
        raise BaselineFileError(where, "'timing' must be a mapping of device fingerprint to statistics", key)
    validated: dict[str, dict[str, Any]] = {}
    for device, stats in timing.items():
        if not isinstance(stats, dict) or not set(stats) <= set(TIMING_KEYS):
            raise BaselineFileError(
                where, f"timing[{device!r}] must be a mapping with keys from {list(TIMING_KEYS)}", key
            )
        clean: dict[str, Any] = {}
        for name, number in stats.items():
            if name == "probes":
                if not isinstance(number, dict):
                    raise BaselineFileError(where, f"timing[{device!r}].probes must be a mapping", key)
                clean[name] = {str(p): _number(v, where, key, f"timing probe {p}") for p, v in number.items()}
            else:
                clean[name] = _number(number, where, key, f"timing[{device!r}].{name}")
        validated[str(device)] = clean
    return validated


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
    text = yaml.safe_dump(document, sort_keys=False, default_flow_style=False, allow_unicode=True, width=1000)
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
