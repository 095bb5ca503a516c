"""Normalised DA/TM text (PS3.5 6.2) so that range matching is a string comparison.

Dates become ``YYYYMMDD`` (the ACR-NEMA ``YYYY.MM.DD`` form is accepted); times become
``HHMMSS.ffffff`` with missing components filled (with zeros for a lower bound and a stored
value, with the largest value for an upper bound, so ``-1300`` includes 13:00:59).
"""

from __future__ import annotations

import re

_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?$")


def normalise_date(value: str) -> str:
    """``YYYYMMDD`` or the empty string for an absent or unreadable date."""
    text = value.strip().replace(".", "") if value else ""
    return text if _DATE.match(text) else ""


def normalise_time(value: str, *, upper: bool = False) -> str:
    """``HHMMSS.ffffff`` (or empty). ``upper`` fills missing parts with their maximum."""
    text = value.strip().replace(":", "") if value else ""
    m = _TIME.match(text)
    if not m:
        return ""
    hh, mm, ss, frac = m.groups()
    fill = "59" if upper else "00"
    mm = mm or fill
    ss = ss or fill
    if frac is None:
        frac = "999999" if upper else "000000"
    else:
        frac = frac.ljust(6, "0")
    return f"{hh}{mm}{ss}.{frac}"


def is_date(value: str) -> bool:
    return bool(_DATE.match(value))
