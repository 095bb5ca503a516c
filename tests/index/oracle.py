"""A tiny matcher for one attribute value, written straight from PS3.4 C.2.2.2.

It knows nothing of SQL and shares no code with ``pacs.index.matching`` except the name
folding that the archive documents for PN (``pacs.dicom.names.fold``). :func:`matcher` turns
a key value (as it appears in a C-FIND identifier) into a predicate on one stored value; the
hypothesis tests compare its selections with the query service's.

Interpretation choices, where the standard leaves room or the archive documents its own:

1. Padding. Leading and trailing spaces are not significant in CS, SH, LO, PN, DA, TM and UI
   (PS3.5 6.2): they are removed from the key, from each of its values, and from stored
   values. Spaces inside a value are significant, except in PN (choice 9). NUL (00H) pads
   UI values (PS3.5 6.2) and some senders pad text with it: it is removed like a space from
   the ends of a key and of its values. A NUL anywhere else makes the key invalid (no
   stored value can hold one).
2. Universal matching (C.2.2.2.3). A key that is empty, or a lone ``*``, after trimming
   matches every entity, including those whose value is empty.
3. Single value matching (C.2.2.2.1). CS, SH and LO compare exactly and case-sensitively. A
   key containing ``*`` or ``?`` is always wild card matching: there is no way to ask for a
   literal ``*`` or ``?`` (C.2.2.2.4).
4. Wild card matching (C.2.2.2.4). ``*`` matches any run of characters, the empty run
   included; ``?`` matches exactly one character (one Unicode code point). Every other
   character is literal, in particular ``%``, ``_``, ``'``, ``"`` and spaces. The matcher is
   the hand-written dynamic programme in :func:`wildcard_match`.
5. Multiple values (C.2.2.2.8). The archive negotiates no Multiple Value Matching, so the
   meaning of a key with backslashes is its own: on CS, SH and LO (and ModalitiesInStudy) a
   key ``CT\\MR`` matches when *any* of its values matches (the QIDO-RS reading of a list).
   Each value is trimmed and matched as in choices 2-4; empty values are ignored and a key
   whose values are all empty is universal; a lone ``*`` among the values matches
   everything.
6. List of UID matching (C.2.2.2.2). Values separated by backslashes, trimmed, empty ones
   ignored (all empty: universal); a stored UID matches when it equals one of them. A ``*``
   or ``?`` in a UID key (other than the lone universal ``*``) is an invalid key.
7. Dates (DA; single value C.2.2.2.1, range C.2.2.2.5.1). A date is ``YYYYMMDD``; dots are
   ignored (the ACR-NEMA ``YYYY.MM.DD`` form); it must be a real calendar date, else the key
   is invalid. ``A-B`` matches A <= d <= B (nothing when A > B), ``A-`` d >= A, ``-B``
   d <= B; a key that is only ``-`` or has more than one ``-`` is invalid. Spaces around the
   ``-`` are ignored. A stored empty date matches only universal matching.
8. Times (TM; C.2.2.2.1, C.2.2.2.5.2, precision as ``pacs.index.timefmt`` documents). A
   time is ``HH[MM[SS[.F]]]`` with 1 to 6 fraction digits, HH <= 23, MM <= 59, SS <= 60 (a
   leap second); colons are ignored (the ACR-NEMA ``HH:MM:SS`` form); anything else is an
   invalid key. A key time stands for the whole interval of its precision: ``13`` is
   13:00:00.000000 to 13:59:59.999999, ``1300`` 13:00:00 to 13:00:59.999999, ``130000.5``
   13:00:00.500000 to 13:00:00.599999. A stored time is the instant at the start of its
   precision (``13`` is 13:00:00.000000). A single key time matches the stored times inside
   its interval; ``A-B`` matches start(A) <= t <= end(B), ``A-`` t >= start(A), ``-B``
   t <= end(B); a lone ``-`` or a second ``-`` is invalid. There is no range crossing
   midnight (C.2.2.2.5.2). A stored empty or unreadable time matches only universal matching.
9. PN (C.2.2.2.1 and C.2.2.2.4 leave case, accents and wild cards to the implementation).
   Key and stored name are both folded with ``pacs.dicom.names.fold`` (lower case,
   transliterated to ASCII, runs of white space as one space, trimmed) and then matched by
   choices 2-4 on the folded texts, so ``?`` stands for one character of the folded name.
   A backslash is not a value separator for PN (names cannot contain one, so such a key
   matches nothing); ``^`` and ``=`` are ordinary characters.
10. Empty Value Matching (C.2.2.2.7, a key of two quotation marks) is not supported: ``""``
    is an ordinary value.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable

from pacs.dicom.names import fold

Predicate = Callable[[str], bool]
PADDING = " \x00"
TEXT_VRS = ("CS", "SH", "LO")
_MICROS = 1_000_000


class InvalidKey(ValueError):
    """The key value cannot be matched (a bad date or time, a wild card in a UID)."""


def _everything(stored: str) -> bool:
    return True


# -- wild cards (C.2.2.2.4) ----------------------------------------------------------------


def wildcard_match(pattern: str, text: str) -> bool:
    """True when all of ``text`` matches ``pattern``: ``*`` any run, ``?`` one character.

    ``reach[j]`` says whether the pattern read so far can match ``text[:j]``.
    """
    reach = [True] + [False] * len(text)
    for p in pattern:
        if p == "*":
            seen = False
            new = []
            for r in reach:
                seen = seen or r
                new.append(seen)
            reach = new
        elif p == "?":
            reach = [False] + reach[:-1]
        else:
            reach = [False] + [reach[j] and text[j] == p for j in range(len(text))]
    return reach[-1]


def _single_or_wildcard(value: str) -> Predicate:
    if "*" in value or "?" in value:
        return lambda stored: wildcard_match(value, stored)
    return lambda stored: stored == value


# -- text: CS, SH, LO (choices 1-5) ----------------------------------------------------------


def _text(key: str) -> Predicate:
    values = [v.strip(PADDING) for v in key.split("\\")]
    values = [v for v in values if v]
    if not values or "*" in values:
        return _everything
    tests = [_single_or_wildcard(v) for v in values]
    return lambda stored: any(test(stored.strip(" ")) for test in tests)


def _person_name(key: str) -> Predicate:
    folded_key = fold(key)
    if folded_key in ("", "*"):
        return _everything
    test = _single_or_wildcard(folded_key)
    return lambda stored: test(fold(stored))


def _uid_list(key: str) -> Predicate:
    uids = [u.strip(PADDING) for u in key.split("\\")]
    uids = [u for u in uids if u]
    if not uids:
        return _everything
    if any("*" in u or "?" in u for u in uids):
        raise InvalidKey(f"wild card in a UID list: {key!r}")
    return lambda stored: stored.strip(" ") in uids


# -- dates (choice 7) ------------------------------------------------------------------------


def parse_date(text: str) -> datetime.date:
    """A DA value as a calendar date; raises InvalidKey."""
    digits = text.strip(" ").replace(".", "")
    if len(digits) != 8 or not digits.isascii() or not digits.isdigit():
        raise InvalidKey(f"not a date: {text!r}")
    try:
        return datetime.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        raise InvalidKey(f"not a calendar date: {text!r}") from None


def _stored_date(stored: str) -> datetime.date | None:
    try:
        return parse_date(stored)
    except InvalidKey:
        return None


def _date(key: str) -> Predicate:
    low, high = _split_range(key)
    first = parse_date(low) if low else None
    last = parse_date(high) if high else None

    def test(stored: str) -> bool:
        day = _stored_date(stored)
        if day is None:
            return False
        return (first is None or first <= day) and (last is None or day <= last)

    return test


def _split_range(key: str) -> tuple[str, str]:
    """(low, high) of ``key``: equal for a single value, one empty for an open range."""
    parts = key.split("-")
    if len(parts) == 1:
        return key.strip(" "), key.strip(" ")
    if len(parts) > 2:
        raise InvalidKey(f"more than one '-' in {key!r}")
    low, high = parts[0].strip(" "), parts[1].strip(" ")
    if not low and not high:
        raise InvalidKey(f"a range with no bounds: {key!r}")
    return low, high


# -- times (choice 8) ------------------------------------------------------------------------

_TIME = re.compile(r"(\d\d)(?:(\d\d)(?:(\d\d)(?:\.(\d{1,6}))?)?)?")


def time_interval(text: str) -> tuple[int, int]:
    """First and last microsecond of the day that a TM value of its precision stands for."""
    m = _TIME.fullmatch(text.strip(" ").replace(":", ""))
    if m is None or not text.isascii():
        raise InvalidKey(f"not a time: {text!r}")
    hh, mm, ss, frac = m.groups()
    if int(hh) > 23 or (mm is not None and int(mm) > 59) or (ss is not None and int(ss) > 60):
        raise InvalidKey(f"time out of range: {text!r}")
    start = int(hh) * 3600
    if mm is None:
        return start * _MICROS, (start + 3600) * _MICROS - 1
    start += int(mm) * 60
    if ss is None:
        return start * _MICROS, (start + 60) * _MICROS - 1
    start += int(ss)
    if frac is None:
        return start * _MICROS, (start + 1) * _MICROS - 1
    unit = 10 ** (6 - len(frac))  # microseconds in one step of the last digit given
    first = start * _MICROS + int(frac) * unit
    return first, first + unit - 1


def _stored_time(stored: str) -> int | None:
    try:
        return time_interval(stored)[0]
    except InvalidKey:
        return None


def _time(key: str) -> Predicate:
    low, high = _split_range(key)
    first = time_interval(low)[0] if low else None
    last = time_interval(high)[1] if high else None

    def test(stored: str) -> bool:
        t = _stored_time(stored)
        if t is None:
            return False
        return (first is None or first <= t) and (last is None or t <= last)

    return test


# -- entry points ----------------------------------------------------------------------------


def matcher(vr: str, key: str) -> Predicate:
    """The predicate on stored values of an attribute of ``vr`` for the key value ``key``.

    Raises :class:`InvalidKey` for a key that cannot be matched, whatever is stored.
    """
    trimmed = key.strip(PADDING)
    if "\x00" in trimmed:
        raise InvalidKey(f"NUL inside a key: {key!r}")
    if vr == "PN":
        return _person_name(trimmed)
    if trimmed in ("", "*"):
        return _everything
    if vr == "UI":
        return _uid_list(trimmed)
    if vr == "DA":
        return _date(trimmed)
    if vr == "TM":
        return _time(trimmed)
    if vr in TEXT_VRS:
        return _text(trimmed)
    raise ValueError(f"the oracle does not match VR {vr}")


def matches(vr: str, key: str, stored: str) -> bool:
    """Whether the stored value ``stored`` matches the key value ``key`` (C.2.2.2)."""
    return matcher(vr, key)(stored)
