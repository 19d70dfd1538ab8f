"""What a valid budgets.yaml holds: its entries, and the checks that read one safely.

Loaded with a safe loader that also rejects duplicate keys (libyaml's where PyYAML has it);
validated, with errors that name the file, the entry and the problem. Writing the file --
rendering, merging, the lock, the atomic write -- is :mod:`.baselines`'.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..errors import BaselineFileError, BudgetSpecError, shown
from .budget import KEYWORDS, Budget, parse_budget
from .metrics import METRICS, RATCHETED
from .timing_verdicts import STORED_KEYS

FORMAT_VERSION = 2  # 2: timing entries may hold relative_settled (version 1 files load as they are)
# What `modules:` keeps per module path: the metric rows' module figures (forward MACs,
# params, a training step's backward MACs).
MODULE_KEYS = tuple(dict.fromkeys(m.module_figure for m in METRICS if m.module_figure))
ROOT_MODULE = "(root)"  # how the model's own ops and params appear in `modules:`


_ENTRY_KEYS = ("convention", *RATCHETED, "macs_by_dtype", "modules", "timing", "limits")
# Per device fingerprint under `timing:` (LatencyBaseline's fields); all but `probes` are numbers.
TIMING_KEYS = STORED_KEYS


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


class _StrictSafeLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys instead of keeping the last."""


# libyaml's parser, where PyYAML has it, reads a large file several times faster (a 6 MB
# budgets.yaml of 5,000 calls: docs/benchmarks.md); the pure-Python one words the errors.
_FastStrictLoader: type[yaml.SafeLoader] = _StrictSafeLoader
if getattr(yaml, "__with_libyaml__", False):

    class _FastStrictLoader(yaml.CSafeLoader):  # type: ignore[no-redef]
        """CSafeLoader that refuses duplicate mapping keys instead of keeping the last."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


for _loader in (_StrictSafeLoader, _FastStrictLoader):
    _loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse(raw: bytes, where: str) -> dict[str, Entry]:
    """Bytes of a budgets.yaml -> validated entries."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BaselineFileError(where, f"is not UTF-8 text (byte {error.start})") from None
    try:
        try:
            data = yaml.load(text, Loader=_FastStrictLoader)
        except yaml.YAMLError:  # say what is wrong as the pure-Python parser says it
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
