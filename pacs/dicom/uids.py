"""UID validation (PS3.5 9.1): digits and dots, at most 64 characters.

A UID is an identifier, never a path: anything else (``../``, slashes, letters) is refused
before it reaches the index.
"""

from __future__ import annotations

import re

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(value: object) -> bool:
    """True for a syntactically valid UID. Leading zeros in a component are tolerated
    (many real modalities send them) but nothing outside ``[0-9.]`` is."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID_RE.match(value))


def clean_uid(value: object) -> str:
    """The UID as text with the trailing NUL/space padding removed."""
    return str(value).strip().rstrip("\x00").strip() if value is not None else ""
