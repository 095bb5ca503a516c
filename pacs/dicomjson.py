"""DICOM JSON (PS3.18 F.2) for query results and instance metadata.

Query matches (keyword -> value) become JSON objects directly, without building pydicom
datasets. Instance metadata is made once per instance with pydicom's ``to_json_dict`` (bulk
data replaced by BulkDataURIs, PS3.18 F.2.6) and cached as text in the index with a
``{base}`` placeholder for the URL prefix, so a series' metadata is one query and a string
join.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.tag import Tag

BASE = "{base}"
BULK_THRESHOLD = 1024


def tag_hex(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return f"{tag:08X}"


def keyword_of(key: str) -> str | None:
    """A DICOM keyword for a QIDO key given as keyword or 8-hex-digit tag, else None."""
    if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
        kw = keyword_for_tag(Tag(int(key, 16)))
        return kw or None
    return key if tag_for_keyword(key) is not None else None


def _pn(value: str) -> dict[str, str]:
    groups = value.split("=")
    out = {"Alphabetic": groups[0]}
    if len(groups) > 1 and groups[1]:
        out["Ideographic"] = groups[1]
    if len(groups) > 2 and groups[2]:
        out["Phonetic"] = groups[2]
    return out


def element(keyword: str, value: Any) -> dict[str, Any]:
    """One DICOM JSON attribute object for ``keyword`` = ``value`` (None: empty)."""
    vr = dictionary_VR(keyword)
    if vr == "US or SS":
        vr = "US"
    if value is None or value == "" or value == []:
        return {"vr": vr}
    values = value if isinstance(value, list) else [value]
    if vr == "PN":
        return {"vr": vr, "Value": [_pn(str(v)) for v in values]}
    if vr in ("IS", "SL", "SS", "UL", "US", "UV", "SV"):
        return {"vr": vr, "Value": [int(v) for v in values]}
    if vr in ("DS", "FL", "FD"):
        return {"vr": vr, "Value": [float(v) for v in values]}
    return {"vr": vr, "Value": [str(v) for v in values]}


def match_json(match: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A QIDO-RS result object (attributes sorted by tag, as PS3.18 F.2.1 shows them)."""
    out: dict[str, Any] = {}
    items = list(match.items()) + list((extra or {}).items())
    for keyword, value in items:
        try:
            out[tag_hex(keyword)] = element(keyword, value)
        except KeyError:
            continue
    out["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}
    return dict(sorted(out.items()))


def instance_metadata(ds: Dataset, bulk_prefix: str, has_pixels: bool) -> str:
    """DICOM JSON text of one instance; bulk data (pixel data and values longer than
    ``BULK_THRESHOLD``) as BulkDataURIs under ``bulk_prefix`` (``{base}/studies/…/bulkdata``)."""

    def bulk(elem: Any) -> str:
        return f"{bulk_prefix}/{elem.tag:08X}"

    data = ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD,
                           bulk_data_element_handler=bulk)
    if has_pixels:
        data["7FE00010"] = {"vr": "OB" if ds.file_meta.TransferSyntaxUID.is_compressed else "OW",
                            "BulkDataURI": f"{bulk_prefix}/7FE00010"}
    data.setdefault("00020010", {"vr": "UI", "Value": [str(ds.file_meta.TransferSyntaxUID)]})
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def join_metadata(texts: Iterable[str], base: str) -> str:
    """A JSON array of cached metadata texts with ``{base}`` replaced by the URL prefix."""
    return ("[" + ",".join(texts) + "]").replace(BASE, base)
