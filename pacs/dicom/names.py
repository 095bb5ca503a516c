"""Folding of text for case- and diacritic-insensitive matching of names.

Hospitals type names without accents: "nguyen van an" must find "Nguyễn^Văn An". NFKD alone
leaves the Vietnamese "đ/Đ" untouched, so we transliterate with ``anyascii`` and lower-case.
The folded form keeps the DICOM PN separators (``^`` and ``=``) and the wildcards ``*``/``?``.
"""

from __future__ import annotations

import re

from anyascii import anyascii

_SPACES = re.compile(r"\s+")


def fold(text: str) -> str:
    """Lower-case ASCII form of ``text`` for matching (keeps ``^ = * ?`` and digits)."""
    if text.isascii():
        return _SPACES.sub(" ", text).strip().lower()
    return _SPACES.sub(" ", anyascii(text)).strip().lower()
