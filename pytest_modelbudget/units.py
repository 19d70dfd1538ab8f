"""Parse and format the human values users write in markers, options and budgets.yaml.

Counts (MACs, FLOPs, params) take SI suffixes: ``"4.1G"``, ``"25M"``, ``"300k"``.
Sizes in bytes take SI or binary units: ``"1.5 GB"``, ``"300 MiB"``, ``"512"``.
Every parser raises :class:`UnitError` whose message names the accepted format, so
the plugin can show it to the user unchanged.
"""

from __future__ import annotations

import math
import re

from .errors import UnitError, shown

# SI multipliers for counts. Lower-case "m" is deliberately absent: it would read as
# "milli" to half of our users and "mega" to the other half.
_COUNT_SUFFIXES: dict[str, float] = {
    "": 1.0,
    "k": 1e3,
    "K": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
}

_BYTE_UNITS: dict[str, float] = {
    "": 1.0,
    "B": 1.0,
    "K": 1e3,
    "KB": 1e3,
    "M": 1e6,
    "MB": 1e6,
    "G": 1e9,
    "GB": 1e9,
    "T": 1e12,
    "TB": 1e12,
    "KIB": 2.0**10,
    "MIB": 2.0**20,
    "GIB": 2.0**30,
    "TIB": 2.0**40,
}

_NUMBER_WITH_UNIT = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*$")

_DURATION_UNITS: dict[str, float] = {"": 1.0, "MS": 1.0, "S": 1e3, "US": 1e-3, "NS": 1e-6}

# Seconds, for compile times: a bare number is seconds here.
_SECOND_UNITS: dict[str, float] = {unit: factor / 1e3 for unit, factor in _DURATION_UNITS.items()} | {"": 1.0}

COUNT_FORMAT = "a number or a string with an SI suffix, e.g. 1329000, '4.1G', '25M', '300k'"
DURATION_FORMAT = "milliseconds as a number, or a string with a unit, e.g. 12, '12ms', '1.5s', '300us'"
SECONDS_FORMAT = "seconds as a number, or a string with a unit, e.g. 30, '30s', '1500ms'"
RATE_FORMAT = "items per second as a number or a string, e.g. 250, '1.2k', '1.2k/s'"
BYTES_FORMAT = "a number of bytes or a string with a unit, e.g. '1.5 GB', '300 MiB', '512 KB'"
FRACTION_FORMAT = "a non-negative number (0.05) or a percentage string ('5%')"


def _split(value: str) -> tuple[float, str] | None:
    match = _NUMBER_WITH_UNIT.match(value)
    if match is None:
        return None
    return float(match.group(1)), match.group(2)


def _check_number(value: object, accepted: str) -> float:
    # bool is an int subclass; `max_macs=True` is always a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UnitError(f"{shown(value)} is not {accepted}")
    number = float(value)
    if not math.isfinite(number):
        raise UnitError(f"{shown(value)} is not finite; expected {accepted}")
    return number


def parse_count(value: object) -> float:
    """A count: ``1329000``, ``"1.33M"``, ``"4.1G"``, ``"7B"``."""
    if isinstance(value, str):
        parts = _split(value)
        if parts is None or parts[1] not in _COUNT_SUFFIXES:
            hint = ""
            if parts is not None and parts[1].upper().endswith("B"):
                hint = " (this limit is a count, not a size in bytes)"
            raise UnitError(f"{shown(value)} is not {COUNT_FORMAT}{hint}")
        return _check_number(parts[0] * _COUNT_SUFFIXES[parts[1]], COUNT_FORMAT)
    return _check_number(value, COUNT_FORMAT)


def _parse_with_unit(value: object, units: dict[str, float], accepted: str) -> float:
    """A number, or a string of a number and a unit from ``units`` (case-insensitive)."""
    if isinstance(value, str):
        parts = _split(value.replace("µ", "u"))
        unit = parts[1].upper() if parts is not None else ""
        if parts is None or unit not in units:
            raise UnitError(f"{shown(value)} is not {accepted}")
        return _check_number(parts[0] * units[unit], accepted)
    return _check_number(value, accepted)


def parse_bytes(value: object) -> float:
    """A size in bytes: ``4030360``, ``"1.5 GB"``, ``"300 MiB"``."""
    return _parse_with_unit(value, _BYTE_UNITS, BYTES_FORMAT)


def parse_duration_ms(value: object) -> float:
    """A duration in milliseconds: ``12``, ``"12ms"``, ``"1.5 s"``, ``"300us"``."""
    return _parse_with_unit(value, _DURATION_UNITS, DURATION_FORMAT)


def parse_duration_s(value: object) -> float:
    """A duration in seconds: ``30``, ``"30s"``, ``"1500ms"``."""
    return _parse_with_unit(value, _SECOND_UNITS, SECONDS_FORMAT)


def parse_rate(value: object) -> float:
    """Items per second: ``250``, ``"1.2k"``, ``"1.2k/s"``."""
    if isinstance(value, str):
        text = value.strip()
        text = text[: -len("/s")] if text.endswith("/s") else text
        try:
            return parse_count(text)
        except UnitError:
            raise UnitError(f"{shown(value)} is not {RATE_FORMAT}") from None
    try:
        return parse_count(value)
    except UnitError:
        raise UnitError(f"{shown(value)} is not {RATE_FORMAT}") from None


def parse_fraction(value: object) -> float:
    """A relative tolerance: ``0.05`` or ``"5%"``; must be >= 0."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            try:
                number = float(text[:-1]) / 100.0
            except ValueError:
                raise UnitError(f"{shown(value)} is not {FRACTION_FORMAT}") from None
        else:
            try:
                number = float(text)
            except ValueError:
                raise UnitError(f"{shown(value)} is not {FRACTION_FORMAT}") from None
    else:
        number = _check_number(value, FRACTION_FORMAT)
    if not math.isfinite(number) or number < 0:
        raise UnitError(f"{shown(value)} is not {FRACTION_FORMAT}")
    return number


def parse_positive_int(value: object) -> int:
    """A whole number >= 1, written as a number (a marker keyword)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UnitError(f"{shown(value)} is not a whole number >= 1")
    return value


def parse_count_option(value: object, what: str) -> int:
    """A whole number >= 1 from the command line or an ini file (``"4"``)."""
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if number < 1:
        raise UnitError(f"{what}={value!r}: expected a whole number >= 1")
    return number


def parse_seconds(value: object, what: str) -> float:
    """A positive, finite number of seconds, from the command line or an ini file."""
    try:
        number = float(str(value))
    except ValueError:
        number = 0.0
    if not number > 0 or number == float("inf"):
        raise UnitError(f"{what}={value!r}: expected a number of seconds > 0")
    return number


def parse_device(value: object) -> str:
    """A torch device name: ``"cpu"``, ``"cuda"``, ``"cuda:1"``."""
    if not isinstance(value, str) or value.split(":")[0] not in ("cpu", "cuda", "mps", "xpu"):
        raise UnitError(f"{shown(value)} is not a device name such as 'cpu', 'cuda' or 'cuda:1'")
    return value


LATENCY_STATS = ("median", "p90")


def parse_stat(value: object) -> str:
    """The latency statistic judged: ``"median"`` or ``"p90"``."""
    if value not in LATENCY_STATS:
        raise UnitError(f"{shown(value)} is not 'median' or 'p90'")
    return str(value)


def format_count(value: float) -> str:
    """``1329000`` -> ``"1.33 M"``; small numbers stay exact."""
    magnitude = abs(value)
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if magnitude >= scale:
            return f"{value / scale:.3g} {suffix}"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.3g}"


def format_bytes(value: float) -> str:
    """``4030360`` -> ``"3.84 MiB"`` (binary units, as tools that show memory use)."""
    magnitude = abs(value)
    for suffix, scale in (("TiB", 2.0**40), ("GiB", 2.0**30), ("MiB", 2.0**20), ("KiB", 2.0**10)):
        if magnitude >= scale:
            return f"{value / scale:.3g} {suffix}"
    return f"{value:.0f} B"


def format_duration(ms: float) -> str:
    """``0.4412`` -> ``"441 us"``; ``102.3`` -> ``"102 ms"``; ``2500`` -> ``"2.5 s"``."""
    if ms >= 1e3:
        return f"{ms / 1e3:.3g} s"
    if ms >= 1:
        return f"{ms:.3g} ms"
    return f"{ms * 1e3:.3g} us"


def format_seconds(seconds: float) -> str:
    """``2.5`` -> ``"2.5 s"``."""
    return format_duration(seconds * 1e3)


def format_rate(per_second: float) -> str:
    return f"{format_count(per_second)}/s"


def format_change(measured: float, reference: float) -> str:
    """Relative change as ``"+9.9%"``; ``"new"`` when there is nothing to compare to."""
    if reference == 0:
        return "+0%" if measured == 0 else "+inf%"
    change = (measured - reference) / reference * 100.0
    if change == 0:
        return "+0%"
    # Keep tiny but real changes visible instead of rounding them to 0.0%.
    digits = 1 if abs(change) >= 0.1 else 3
    return f"{change:+.{digits}f}%"
