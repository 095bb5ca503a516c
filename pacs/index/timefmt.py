"""Normalised DA/TM text (PS3.5 6.2) so that range matching is a string comparison.

Dates become ``YYYYMMDD`` (the ACR-NEMA ``YYYY.MM.DD`` form is accepted); times become
``HHMMSS.ffffff`` with missing components filled (with zeros for a lower bound and a stored
value, with the largest value for an upper bound, so ``-1300`` includes 13:00:59 and
``-130000.5`` includes 13:00:00.599999). A time is ``HH[MM[SS[.F{1,6}]]]`` with HH 00-23,
MM 00-59 and SS 00-60 (PS3.5 Table 6.2-1; the ACR-NEMA ``HH:MM:SS`` form is accepted).
"""

from __future__ import annotations

import datetime
import re

_DATE = re.compile(r"\d{8}", re.ASCII)
_TIME = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?", re.ASCII)


def normalise_date(value: str) -> str:
    """``YYYYMMDD`` or the empty string for an absent or unreadable date."""
    text = value.strip().replace(".", "") if value else ""
    return text if _DATE.fullmatch(text) else ""


def normalise_time(value: str, *, upper: bool = False) -> str:
    """``HHMMSS.ffffff`` (or empty). ``upper`` fills missing parts with their maximum."""
    text = value.strip().replace(":", "") if value else ""
    m = _TIME.fullmatch(text)
    if not m:
        return ""
    hh, mm, ss, frac = m.groups()
    if int(hh) > 23 or int(mm or 0) > 59 or int(ss or 0) > 60:
        return ""
    fill = "59" if upper else "00"
    mm = mm or fill
    ss = ss or fill
    frac = (frac or "").ljust(6, "9" if upper else "0")
    return f"{hh}{mm}{ss}.{frac}"


def is_date(value: str) -> bool:
    """True for ``YYYYMMDD`` text that names a real calendar day."""
    if not _DATE.fullmatch(value):
        return False
    try:
        datetime.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return False
    return True
