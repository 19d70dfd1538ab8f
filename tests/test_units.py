from __future__ import annotations

import math

import pytest

from pytest_modelbudget.errors import UnitError
from pytest_modelbudget.units import (
    format_bytes,
    format_change,
    format_count,
    parse_bytes,
    parse_count,
    parse_fraction,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (1329000, 1329000),
        (2.5, 2.5),
        ("4.1G", 4.1e9),
        ("4.1 G", 4.1e9),
        ("25M", 25e6),
        ("300k", 300e3),
        ("300K", 300e3),
        ("1.5T", 1.5e12),
        ("1e6", 1e6),
        ("  12  ", 12),
    ],
)
def test_parse_count_accepts(text: object, expected: float) -> None:
    assert math.isclose(parse_count(text), expected)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("4.1X", "SI suffix"),
        ("25 MB", "not a size in bytes"),
        ("4.1m", "SI suffix"),  # milli or mega? refused
        ("", "SI suffix"),
        ("G", "SI suffix"),
        (True, "not a number"),
        (None, "not a number"),
        (float("nan"), "not finite"),
        (float("inf"), "not finite"),
        ([1], "not a number"),
    ],
)
def test_parse_count_rejects(text: object, fragment: str) -> None:
    with pytest.raises(UnitError) as info:
        parse_count(text)
    message = str(info.value)
    assert fragment in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (512, 512),
        ("512", 512),
        ("1.5 GB", 1.5e9),
        ("1.5GB", 1.5e9),
        ("300 MiB", 300 * 2**20),
        ("300 mib", 300 * 2**20),
        ("4 KiB", 4096),
        ("2 kb", 2000),
        ("7B", 7),
        ("1G", 1e9),
    ],
)
def test_parse_bytes_accepts(text: object, expected: float) -> None:
    assert math.isclose(parse_bytes(text), expected)


@pytest.mark.parametrize("text", ["1.5 GX", "MB", "12 bits", True, "ten MB"])
def test_parse_bytes_rejects(text: object) -> None:
    with pytest.raises(UnitError, match="MiB"):
        parse_bytes(text)


@pytest.mark.parametrize(
    ("text", "expected"), [(0, 0.0), (0.05, 0.05), ("5%", 0.05), ("0.1", 0.1), ("0%", 0.0)]
)
def test_parse_fraction_accepts(text: object, expected: float) -> None:
    assert math.isclose(parse_fraction(text), expected)


@pytest.mark.parametrize("text", [-0.1, "-5%", "five%", "abc", float("nan"), True])
def test_parse_fraction_rejects(text: object) -> None:
    with pytest.raises(UnitError, match="percentage"):
        parse_fraction(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1329000, "1.33 M"), (999, "999"), (4.089e9, "4.09 G"), (12_000, "12 k"), (0, "0")],
)
def test_format_count(value: float, expected: str) -> None:
    assert format_count(value) == expected


@pytest.mark.parametrize(("value", "expected"), [(4030360, "3.84 MiB"), (100, "100 B"), (2**30, "1 GiB")])
def test_format_bytes(value: float, expected: str) -> None:
    assert format_bytes(value) == expected


@pytest.mark.parametrize(
    ("measured", "reference", "expected"),
    [
        (110, 100, "+10.0%"),
        (90, 100, "-10.0%"),
        (100, 100, "+0%"),
        (100001, 100000, "+0.001%"),
        (5, 0, "+inf%"),
    ],
)
def test_format_change(measured: float, reference: float, expected: str) -> None:
    assert format_change(measured, reference) == expected
