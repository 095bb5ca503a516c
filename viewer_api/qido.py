"""QIDO-RS (PS3.18 10.6): search studies, series and instances with the archive's one query
engine (the same matching as C-FIND)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from pacs.dicomjson import _pn, element, keyword_of, tag_hex
from pacs.errors import InvalidInput
from pacs.index.attributes import ATTRIBUTES, Level
from pacs.query import QueryRequest
from viewer_api.deps import BaseDep, CallerDep, ServicesDep, check_uids

router = APIRouter(tags=["QIDO-RS"])
RESERVED = {"includefield", "limit", "offset", "fuzzymatching", "orderby", "charset"}
DICOM_JSON = "application/dicom+json"
MAX_RESULTS = 10_000


def _parse(request: Request, level: Level, fixed: dict[str, str]) -> tuple[QueryRequest, list[str], bool]:
    filters: dict[str, str] = dict(fixed)
    include: list[str] = []
    ignored: list[str] = []
    limit: int | None = None
    offset = 0
    fuzzy = False
    for key, value in request.query_params.multi_items():
        name = key.lower()
        if name == "includefield":
            for item in filter(None, (v.strip() for v in value.split(","))):
                if item.lower() == "all":
                    include += [a.keyword for a in ATTRIBUTES.values() if a.level <= level]
                    continue
                kw = keyword_of(item)
                if kw is None:
                    raise InvalidInput(f"includefield: unknown attribute {item!r}")
                include.append(kw)
        elif name == "limit":
            limit = _int(key, value)
        elif name == "offset":
            offset = _int(key, value)
        elif name == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise InvalidInput("fuzzymatching must be true or false")
            fuzzy = value.lower() == "true"
        elif name in RESERVED:
            continue
        else:
            kw = keyword_of(key.split(".")[0])
            if kw is None:
                raise InvalidInput(f"unknown attribute {key!r} (use a DICOM keyword or tag)")
            if kw not in ATTRIBUTES:
                ignored.append(kw)
                continue
            filters[kw] = value
    if fuzzy:  # PS3.18 8.3.4.1: fuzzy person names: each typed name may start a component
        for kw, value in filters.items():
            if ATTRIBUTES[kw].vr == "PN" and value and not value.endswith("*"):
                filters[kw] = value + "*"
    # past the cap, one match more is asked for: it tells whether there are more (Warning)
    limit = MAX_RESULTS + 1 if limit is None or limit > MAX_RESULTS else limit
    return QueryRequest(level, filters, include, limit, offset), ignored, fuzzy


def _int(key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise InvalidInput(f"{key} must be a non-negative integer, got {value!r}") from None
    if number < 0:
        raise InvalidInput(f"{key} must be a non-negative integer, got {value!r}")
    return number


def _url(base: str, match: dict[str, Any], level: Level) -> str:
    url = f"{base}/studies/{match['StudyInstanceUID']}"
    if level >= Level.SERIES:
        url += f"/series/{match['SeriesInstanceUID']}"
    if level >= Level.IMAGE:
        url += f"/instances/{match['SOPInstanceUID']}"
    return url


_INTEGER_VRS = frozenset(("IS", "SL", "SS", "UL", "US", "UV", "SV"))
_DECIMAL_VRS = frozenset(("DS", "FL", "FD"))
_CHARSET = {"vr": "CS", "Value": ["ISO_IR 192"]}
Converter = Callable[[Any], dict[str, Any]]


@cache
def _attribute(keyword: str) -> tuple[str, Converter] | None:
    """Tag and value converter of a keyword, looked up once per process instead of once per
    value: the same DICOM JSON as ``pacs.dicomjson.element`` (PS3.18 F.2)."""
    try:
        tag, vr = tag_hex(keyword), element(keyword, None)["vr"]
    except KeyError:
        return None
    empty = {"vr": vr}
    cast: Callable[[Any], Any] = (int if vr in _INTEGER_VRS else float if vr in _DECIMAL_VRS
                                  else (lambda v: _pn(str(v))) if vr == "PN" else str)

    def convert_plain(value: Any) -> dict[str, Any]:
        if value is None or value == "" or value == []:
            return empty
        if isinstance(value, list):
            return {"vr": vr, "Value": [cast(v) for v in value]}
        return {"vr": vr, "Value": [cast(value)]}
    return tag, convert_plain


def _results(matches: Iterable[dict[str, Any]], base: str, level: Level) -> list[dict[str, Any]]:
    """QIDO-RS result objects, attributes sorted by tag (PS3.18 F.2.1); one plan per request."""
    out: list[dict[str, Any]] = []
    plan: list[tuple[str, str, Converter | None]] | None = None
    for match in matches:
        if plan is None:
            keys = {kw: _attribute(kw) for kw in [*match, "RetrieveURL"]}
            known = [(a[0], kw, a[1]) for kw, a in keys.items() if a is not None]
            known.append(("00080005", "", None))  # SpecificCharacterSet: always UTF-8
            plan = sorted({tag: (tag, kw, conv) for tag, kw, conv in known}.values())
        url = _url(base, match, level)
        out.append({tag: (_CHARSET if convert is None else
                          convert(url if kw == "RetrieveURL" else match[kw]))
                    for tag, kw, convert in plan})
    return out


def _search(services: Any, caller: Any, base: str, request: Request, level: Level,
            fixed: dict[str, str]) -> Response:
    check_uids(*fixed.values())
    query, ignored, _ = _parse(request, level, fixed)
    matches = list(services.query.search(caller, query))
    warnings = []
    if len(matches) > MAX_RESULTS:  # PS3.18 8.3.4.4: the first matches, and a warning
        del matches[MAX_RESULTS:]
        warnings.append(f'299 MINIPACS "There are more than {MAX_RESULTS} matches: the first '
                        f'{MAX_RESULTS} are returned; narrow the query or page with offset"')
    body = _results(matches, base, level)
    if ignored:
        warnings.append(f'299 MINIPACS "The following attributes were ignored: {",".join(ignored)}"')
    headers = {"Warning": ", ".join(warnings)} if warnings else {}
    return Response(orjson.dumps(body), media_type=DICOM_JSON, headers=headers)


@router.get("/studies", summary="Search for studies")
def search_studies(request: Request, services: ServicesDep, caller: CallerDep, base: BaseDep) -> Response:
    return _search(services, caller, base, request, Level.STUDY, {})


@router.get("/series", summary="Search for series")
def search_series(request: Request, services: ServicesDep, caller: CallerDep, base: BaseDep) -> Response:
    return _search(services, caller, base, request, Level.SERIES, {})


@router.get("/instances", summary="Search for instances")
def search_instances(request: Request, services: ServicesDep, caller: CallerDep, base: BaseDep) -> Response:
    return _search(services, caller, base, request, Level.IMAGE, {})


@router.get("/studies/{study}/series", summary="Search for series of a study")
def search_study_series(study: str, request: Request, services: ServicesDep, caller: CallerDep,
                        base: BaseDep) -> Response:
    return _search(services, caller, base, request, Level.SERIES, {"StudyInstanceUID": study})


@router.get("/studies/{study}/instances", summary="Search for instances of a study")
def search_study_instances(study: str, request: Request, services: ServicesDep, caller: CallerDep,
                           base: BaseDep) -> Response:
    return _search(services, caller, base, request, Level.IMAGE, {"StudyInstanceUID": study})


@router.get("/studies/{study}/series/{series}/instances", summary="Search for instances of a series")
def search_series_instances(study: str, series: str, request: Request, services: ServicesDep,
                            caller: CallerDep, base: BaseDep) -> Response:
    return _search(services, caller, base, request, Level.IMAGE,
                   {"StudyInstanceUID": study, "SeriesInstanceUID": series})
