"""PS3.4 C.2.2.2 attribute matching, translated to SQL conditions.

- C.2.2.2.1 single value: equality (PN: case- and diacritic-insensitive on the folded column)
- C.2.2.2.2 list of UIDs: ``uid1\\uid2`` -> ``IN``
- C.2.2.2.3 universal: an empty value (or a lone ``*``) matches everything
- C.2.2.2.4 wildcard: ``*`` any run, ``?`` one character; ``%``, ``_`` and ``\\`` are literals
- C.2.2.2.5 range: ``A-B``, ``A-``, ``-B`` on DA and TM (inclusive)
- C.2.2.2.8 multiple values: ``CT\\MR`` matches either, on AE/CS/LO/SH/UC keys (the archive
  negotiates no Multiple Value Matching, so it reads a list as QIDO-RS does); each value is
  trimmed, empty values are ignored and a key with no value left is universal
- leading and trailing spaces of a key are not significant (PS3.5 6.2), nor is NUL padding
  (UI values are padded with NUL, and some senders pad text with it); a NUL inside a key is
  invalid input (no text VR holds one, and PostgreSQL text cannot); PN keys are folded
  (``pacs.dicom.names.fold``) before they are looked at

The same rules are written out in pure Python in ``tests/index/oracle.py`` and checked
against this module with hypothesis.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, and_, false, or_, true
from sqlalchemy.orm import InstrumentedAttribute

from pacs.dicom.names import fold
from pacs.errors import InvalidInput
from pacs.index.timefmt import is_date, normalise_date, normalise_time

WILDCARD_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
MULTI_VALUE_VRS = {"AE", "CS", "LO", "SH", "UC"}  # LT, ST, UT, UR: a backslash is text
INTEGER_VRS = {"IS", "US", "UL", "SS", "SL"}
MAX_VALUES = 10_000  # values in one key: each is a bound parameter (PostgreSQL takes 65535)
ESCAPE = "\\"
PADDING = " \t\r\n\x00"


def like_pattern(value: str) -> str:
    """DICOM wildcard text to a SQL LIKE pattern with ``\\`` as the escape character."""
    out = []
    for ch in value:
        if ch in ("%", "_", ESCAPE):
            out.append(ESCAPE + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def _string_condition(column: InstrumentedAttribute[object], value: str) -> ColumnElement[bool]:
    if "*" in value or "?" in value:
        return column.like(like_pattern(value), escape=ESCAPE)
    return column == value


def _date_condition(column: InstrumentedAttribute[object], value: str,
                    keyword: str) -> ColumnElement[bool]:
    def parse(text: str) -> str:
        date = normalise_date(text)
        if not is_date(date):
            raise InvalidInput(f"{keyword}: invalid date {text!r} (expected YYYYMMDD)")
        return date

    if "-" in value:
        low, _, high = value.partition("-")
        conds = [column != ""]
        if low.strip():
            conds.append(column >= parse(low))
        if high.strip():
            conds.append(column <= parse(high))
        if not low.strip() and not high.strip():
            raise InvalidInput(f"{keyword}: empty date range {value!r}")
        return and_(*conds)
    return column == parse(value)


def _time_condition(column: InstrumentedAttribute[object], value: str,
                    keyword: str) -> ColumnElement[bool]:
    def parse(text: str, upper: bool) -> str:
        t = normalise_time(text, upper=upper)
        if not t:
            raise InvalidInput(f"{keyword}: invalid time {text!r} (expected HHMMSS.FFFFFF)")
        return t

    if "-" in value:
        low, _, high = value.partition("-")
        if not low.strip() and not high.strip():
            raise InvalidInput(f"{keyword}: empty time range {value!r}")
        conds = [column != ""]
        if low.strip():
            conds.append(column >= parse(low, False))
        if high.strip():
            conds.append(column <= parse(high, True))
        return and_(*conds)
    return and_(column >= parse(value, False), column <= parse(value, True))


def _values(value: str, keyword: str) -> list[str]:
    """The trimmed, non-empty values of a key (``\\`` separates values, PS3.5 6.4)."""
    values = [v.strip(PADDING) for v in value.split("\\") if v.strip(PADDING)]
    if len(values) > MAX_VALUES:
        raise InvalidInput(f"{keyword}: more than {MAX_VALUES} values")
    return values


def _uid_condition(column: InstrumentedAttribute[object], value: str,
                   keyword: str) -> ColumnElement[bool] | None:
    uids = _values(value, keyword)
    if any("*" in u or "?" in u for u in uids):
        raise InvalidInput(f"{keyword}: wildcards are not allowed in UIDs")
    if not uids:
        return None
    return column.in_(uids) if len(uids) > 1 else column == uids[0]


def _integer_condition(column: InstrumentedAttribute[object], value: str,
                       keyword: str) -> ColumnElement[bool] | None:
    try:
        numbers = [int(v) for v in _values(value, keyword)]
    except ValueError:
        raise InvalidInput(f"{keyword}: expected an integer, got {value!r}") from None
    if not numbers:
        return None
    return column.in_(numbers) if len(numbers) > 1 else column == numbers[0]


def _text_condition(column: InstrumentedAttribute[object], value: str, vr: str,
                    keyword: str) -> ColumnElement[bool] | None:
    values = _values(value, keyword) if vr in MULTI_VALUE_VRS else [value]
    if not values or "*" in values:
        return None
    conds = [_string_condition(column, v) for v in values]
    return conds[0] if len(conds) == 1 else or_(*conds)


def condition(keyword: str, vr: str, column: InstrumentedAttribute[object],
              value: str, folded: InstrumentedAttribute[object] | None = None
              ) -> ColumnElement[bool] | None:
    """The SQL condition for matching ``keyword`` against ``value``; None when universal."""
    value = value.strip(PADDING)
    if "\x00" in value:
        raise InvalidInput(f"{keyword}: NUL character in the key")
    if vr == "PN":
        key = fold(value)
        if key in ("", "*"):
            return None
        return _string_condition(folded if folded is not None else column, key)
    if value == "" or value == "*":
        return None
    if vr == "UI":
        return _uid_condition(column, value, keyword)
    if vr == "DA":
        return _date_condition(column, value, keyword)
    if vr == "TM":
        return _time_condition(column, value, keyword)
    if vr in INTEGER_VRS:
        return _integer_condition(column, value, keyword)
    if vr in WILDCARD_VRS:
        return _text_condition(column, value, vr, keyword)
    return column == value


def always(matches: bool) -> ColumnElement[bool]:
    return true() if matches else false()
