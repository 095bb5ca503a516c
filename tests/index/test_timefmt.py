"""Normalised DA and TM text (``pacs.index.timefmt``), the basis of range matching."""

from __future__ import annotations

import pytest

from pacs.index.timefmt import is_date, normalise_date, normalise_time


@pytest.mark.parametrize(("value", "lower", "upper"), [
    ("13", "130000.000000", "135959.999999"),
    ("1305", "130500.000000", "130559.999999"),
    ("130507", "130507.000000", "130507.999999"),
    ("130507.5", "130507.500000", "130507.599999"),
    ("130507.123456", "130507.123456", "130507.123456"),
    ("13:05:07", "130507.000000", "130507.999999"),
    (" 0930 ", "093000.000000", "093059.999999"),
    ("235960", "235960.000000", "235960.999999"),  # a leap second (PS3.5 Table 6.2-1)
])
def test_normalise_time(value: str, lower: str, upper: str) -> None:
    assert normalise_time(value) == lower
    assert normalise_time(value, upper=True) == upper


@pytest.mark.parametrize("value", [
    "", "1", "2400", "1360", "126161", "13.5", "1300.5", "130000.", "130000.1234567",
    "１３００", "ab", "13-14", "130000.5x",
])
def test_unreadable_times_are_empty(value: str) -> None:
    assert normalise_time(value) == ""
    assert normalise_time(value, upper=True) == ""


@pytest.mark.parametrize(("value", "expected"), [
    ("20240115", "20240115"), ("2024.01.15", "20240115"), (" 20240115 ", "20240115"),
    ("2024-01-15", ""), ("202401", ""), ("２０２４０１１５", ""), ("", ""),
])
def test_normalise_date(value: str, expected: str) -> None:
    assert normalise_date(value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("20240229", True), ("20230229", False), ("20241301", False), ("20240132", False),
    ("00000101", False), ("2024011", False), ("２０２４０１１５", False), ("", False),
])
def test_is_date_means_a_calendar_day(value: str, expected: bool) -> None:
    assert is_date(value) is expected
