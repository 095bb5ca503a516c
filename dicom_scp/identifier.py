"""Query response identifiers encoded from a plan made once per request.

Every response to one C-FIND carries the same keys, so their tags, VRs and element headers are
worked out once (:class:`IdentifierEncoder`) and each match costs only its values. The bytes
are those pydicom writes for a :class:`~pydicom.dataset.Dataset` holding the same values
(a test checks it): elements in tag order (PS3.5 7.1), values padded to an even length with a
space, UI with NUL (PS3.5 6.2), numbers in the transfer syntax's byte order, the VRs that take
the Specific Character Set (SH, LO, ST, LT, UC, UT, PN; PS3.5 6.1.2.3) in UTF-8 (ISO_IR 192),
the others in ISO 8859-1 as pydicom does.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"
SYNTAXES = (IMPLICIT_LITTLE, EXPLICIT_LITTLE, EXPLICIT_BIG)
UTF8 = "ISO_IR 192"

_CHARSET_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"})
# explicit VR with a 4-byte length (PS3.5 7.1.2)
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT",
                       "UV"})

Value = Any  # str, int, a list of them, or None (empty)


class Unsupported(ValueError):
    """A key the plan cannot encode (no keyword, ambiguous VR, sequence)."""


def _text(value: Value) -> str:
    if isinstance(value, (list, tuple)):
        return "\\".join(_text(v) for v in value)
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    if type(value).__name__ == "PersonName":
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as text")


def _text_encoder(vr: str) -> Callable[[Value], bytes]:
    codec = "utf-8" if vr in _CHARSET_VRS else "latin-1"
    pad = b"\x00" if vr == "UI" else b" "

    def encode(value: Value) -> bytes:
        data = _text(value).encode(codec)
        return data + pad if len(data) % 2 else data
    return encode


def _number_encoder(fmt: str) -> Callable[[Value], bytes]:
    pack = struct.Struct(fmt).pack

    def encode(value: Value) -> bytes:
        if isinstance(value, (list, tuple)):
            return b"".join(pack(int(v)) for v in value)
        return pack(int(value))
    return encode


def _no_value(value: Value) -> bytes:
    raise TypeError("only an empty value is written for this VR")


class IdentifierEncoder:
    """Encodes identifiers with the keys ``keys`` (in any order; a keyword of ``constants``
    named again in a match takes the match's value) in ``transfer_syntax``.

    ``constants`` are the same in every identifier (e.g. SpecificCharacterSet,
    QueryRetrieveLevel, RetrieveAETitle) and are encoded once. ``vrs`` gives the VR of a
    keyword where the data dictionary's would not do. Raises :class:`Unsupported` for a key it
    cannot plan; :meth:`encode` raises (TypeError, ValueError, struct.error) for a value it
    cannot write, where pydicom would fail or differ.
    """

    def __init__(self, keys: Sequence[str], constants: Mapping[str, Value],
                 transfer_syntax: str, vrs: Mapping[str, str] | None = None) -> None:
        if transfer_syntax not in SYNTAXES:
            raise Unsupported(f"transfer syntax {transfer_syntax}")
        if constants.get("SpecificCharacterSet", UTF8) != UTF8:
            raise Unsupported("only ISO_IR 192 (UTF-8) is written")
        self.transfer_syntax = transfer_syntax
        self._implicit = transfer_syntax == IMPLICIT_LITTLE
        self._order = "<" if transfer_syntax != EXPLICIT_BIG else ">"
        vrs = vrs or {}
        variable = list(dict.fromkeys(keys))
        fixed = {k: v for k, v in constants.items() if k not in variable}
        plan = []
        for keyword in [*fixed, *variable]:
            tag = tag_for_keyword(keyword)
            if tag is None:
                raise Unsupported(f"unknown keyword {keyword!r}")
            vr = vrs.get(keyword) or dictionary_VR(tag)
            if " or " in vr or vr == "SQ":
                raise Unsupported(f"{keyword} has VR {vr}")
            plan.append((tag, keyword, vr))
        # constants become whole elements; the other keys keep their header parts
        self._steps: list[tuple[str | None, bytes, Callable[[int], bytes],
                                Callable[[Value], bytes]]] = []
        for tag, keyword, vr in sorted(plan):
            prefix, length = self._header(tag, vr)
            encode = self._value_encoder(vr)
            if keyword in fixed:
                value = fixed[keyword]
                data = b"" if value is None or value == "" else encode(value)
                self._steps.append((None, prefix + length(len(data)) + data, length, encode))
            else:
                self._steps.append((keyword, prefix, length, encode))

    def _header(self, tag: int, vr: str) -> tuple[bytes, Callable[[int], bytes]]:
        """The bytes of an element header before its length, and how to write the length."""
        o = self._order
        group_element = struct.pack(f"{o}HH", tag >> 16, tag & 0xFFFF)
        if self._implicit:
            return group_element, struct.Struct(f"{o}I").pack
        if vr in _LONG_VRS:
            return group_element + vr.encode() + b"\x00\x00", struct.Struct(f"{o}I").pack
        pack16 = struct.Struct(f"{o}H").pack
        return group_element + vr.encode(), pack16  # a length over 0xFFFF raises

    def _value_encoder(self, vr: str) -> Callable[[Value], bytes]:
        if vr in _CHARSET_VRS or vr in _STRING_VRS:
            return _text_encoder(vr)
        if vr == "US":
            return _number_encoder(f"{self._order}H")
        if vr == "UL":
            return _number_encoder(f"{self._order}L")
        if vr == "SS":
            return _number_encoder(f"{self._order}h")
        if vr == "SL":
            return _number_encoder(f"{self._order}l")
        return _no_value

    def encode(self, match: Mapping[str, Value]) -> bytes:
        """The identifier of one match (keyword -> value; None or "" is an empty value)."""
        parts = []
        for keyword, prefix, length, encode in self._steps:
            if keyword is None:
                parts.append(prefix)
                continue
            value = match.get(keyword)
            if value is None or value == "" or value == []:
                parts.append(prefix + length(0))
            else:
                data = encode(value)
                parts.append(prefix + length(len(data)) + data)
        return b"".join(parts)
