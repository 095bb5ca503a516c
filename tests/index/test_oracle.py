"""The oracle itself, on examples read off PS3.4 C.2.2.2 (a wrong oracle proves nothing)."""

from __future__ import annotations

import pytest

from tests.index.oracle import InvalidKey, matches, time_interval, wildcard_match


@pytest.mark.parametrize(("pattern", "text", "expected"), [
    ("*", "", True),
    ("*", "anything", True),
    ("a*", "abc", True),
    ("*c", "abc", True),
    ("a?c", "abc", True),
    ("a?c", "ac", False),
    ("a?c", "abbc", False),
    ("*a*", "bab", True),
    ("a**b", "ab", True),
    ("?", "", False),
    ("?", "ễ", True),  # one character, not one byte
    ("??", "ễ", False),
    ("%", "%", True),
    ("%", "x", False),
    ("_", "x", False),
    ("a*b*c", "aXbYbZc", True),
    ("a*b*c", "aXbYbZ", False),
    ("", "", True),
    ("", "a", False),
])
def test_wildcard_match(pattern: str, text: str, expected: bool) -> None:
    assert wildcard_match(pattern, text) is expected


@pytest.mark.parametrize(("vr", "key", "stored", "expected"), [
    # universal (C.2.2.2.3), also for an empty stored value
    ("SH", "", "", True), ("SH", "*", "x", True), ("LO", "  *  ", "", True),
    ("DA", "", "", True), ("TM", "*", "", True), ("UI", "", "1.2", True),
    # single value (C.2.2.2.1): exact and case-sensitive, outer spaces ignored
    ("CS", "CT", "CT", True), ("CS", "CT", "ct", False), ("SH", " A1 ", "A1", True),
    ("LO", "a  b", "a b", False), ("SH", "**", "", True), ("SH", "?*", "", False),
    # multiple values (C.2.2.2.8, read as "any")
    ("CS", "CT\\MR", "MR", True), ("CS", "CT\\MR", "US", False), ("CS", "CT\\", "CT", True),
    ("CS", "CT\\", "", False), ("CS", "\\", "US", True), ("CS", "US\\*", "MR", True),
    ("CS", " CT \\ MR ", "MR", True), ("LO", "a?\\b", "ax", True),
    # PN: folded on both sides
    ("PN", "nguyen^van an", "Nguyễn^Văn An", True), ("PN", "NGUYỄN*", "nguyen^x", True),
    ("PN", "Tr?n*", "Trần^Thị", True), ("PN", "dang", "Đặng", True),
    ("PN", "nguyen", "Nguyễn^Văn An", False), ("PN", "a\\b", "a\\b", True),
    # list of UIDs (C.2.2.2.2)
    ("UI", "1.2\\1.3", "1.3", True), ("UI", "1.2\\1.3", "1.4", False),
    ("UI", "1.2.3\x00", "1.2.3", True), ("UI", "1.2.3", "1.2.30", False),
    # dates (C.2.2.2.5.1)
    ("DA", "20240115", "20240115", True), ("DA", "2024.01.15", "20240115", True),
    ("DA", "20240101-20240131", "20240131", True), ("DA", "20240101-20240131", "20240201", False),
    ("DA", "20240101 - 20240131", "20240101", True), ("DA", "20240101-", "20991231", True),
    ("DA", "-20240101", "19000101", True), ("DA", "-20240101", "", False),
    ("DA", "20240201-20240101", "20240115", False), ("DA", "20240115", "", False),
    # times (C.2.2.2.5.2, at the key's precision)
    ("TM", "13", "1359", True), ("TM", "13", "14", False), ("TM", "1300", "130059", True),
    ("TM", "1300", "130100", False), ("TM", "-1300", "130059.999999", True),
    ("TM", "1300-", "125959.999999", False), ("TM", "130000.5", "130000.59", True),
    ("TM", "130000.5", "130000.6", False), ("TM", "130000.5", "130000.4999", False),
    ("TM", "13:00", "1300", True), ("TM", "13-", "12", False), ("TM", "0000-2359", "", False),
    ("TM", "12-11", "1130", False),
])
def test_matches(vr: str, key: str, stored: str, expected: bool) -> None:
    assert matches(vr, key, stored) is expected


@pytest.mark.parametrize(("vr", "key"), [
    ("UI", "1.2.*"), ("UI", "1.2\\1.?"), ("UI", "*\\1.2"),
    ("DA", "20240230"), ("DA", "20241301"), ("DA", "2024"), ("DA", "-"), ("DA", "1-2-3"),
    ("DA", "2024-13-45x"), ("DA", "２０２４０１０１"), ("DA", "20240101\\20240102"),
    ("TM", "2400"), ("TM", "1360"), ("TM", "126161"), ("TM", "13.5"), ("TM", "1300.5"),
    ("TM", "130000."), ("TM", "130000.1234567"), ("TM", "1"), ("TM", "-"), ("TM", "１３"),
    ("SH", "a\x00b"), ("PN", "\x00*\x00x"),
])
def test_invalid_keys(vr: str, key: str) -> None:
    with pytest.raises(InvalidKey):
        matches(vr, key, "")


def test_time_interval_is_the_precision_of_the_value() -> None:
    hour = 3600 * 1_000_000
    assert time_interval("13") == (13 * hour, 14 * hour - 1)
    assert time_interval("130000.25") == (13 * hour + 250_000, 13 * hour + 259_999)
    assert time_interval("235960") == (86_400_000_000, 86_400_999_999)  # a leap second
