"""STOW-RS (PS3.18 10.5): store instances through the same ingest path as C-STORE."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response

from dicom_scp.status import STORE_CANNOT_UNDERSTAND, STORE_STATUS, status_for
from pacs.context import Caller
from pacs.dicom.header import parse_header
from pacs.errors import InvalidInput, PacsError
from pacs.services import Services
from viewer_api.deps import BaseDep, CallerDep, ServicesDep, check_uids
from viewer_api.multipart import parse_content_type, read_parts

router = APIRouter(tags=["STOW-RS"])


def _sop_item(sop_class: str, sop_instance: str) -> dict[str, Any]:
    return {"00081150": {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"},
            "00081155": {"vr": "UI", "Value": [sop_instance]} if sop_instance else {"vr": "UI"}}


async def _store(request: Request, services: Services, caller: Caller, base: str,
                 study: str | None) -> Response:
    parts = await read_parts(request.headers.get("content-type", ""), request.stream())
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for headers, body in parts:
        media, _ = parse_content_type(headers.get("content-type", "application/dicom"))
        data = body.read()
        body.close()
        sop_class = sop_instance = ""
        try:
            if media != "application/dicom":
                raise InvalidInput(f"part of type {media!r}: only application/dicom is accepted")
            try:  # for the failure report: which instance was it?
                header, _ = parse_header(data)
                sop_class, sop_instance = header.sop_class_uid, header.sop_instance_uid
            except InvalidInput:
                pass
            outcome = services.ingest.store_instance(caller, data, expected_study_uid=study)
            item = _sop_item(outcome.sop_class_uid, outcome.sop_instance_uid)
            item["00081190"] = {"vr": "UR", "Value": [
                f"{base}/studies/{outcome.study_uid}/series/{outcome.series_uid}"
                f"/instances/{outcome.sop_instance_uid}"]}
            referenced.append(item)
        except PacsError as exc:
            item = _sop_item(sop_class, sop_instance)
            item["00081197"] = {"vr": "US", "Value": [
                status_for(STORE_STATUS, exc, STORE_CANNOT_UNDERSTAND)]}
            failed.append(item)
    body_json: dict[str, Any] = {}
    if study:
        body_json["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{study}"]}
    if referenced:
        body_json["00081199"] = {"vr": "SQ", "Value": referenced}
    if failed:
        body_json["00081198"] = {"vr": "SQ", "Value": failed}
    if not parts:
        raise InvalidInput("the request holds no parts")
    status = 200 if not failed else (409 if not referenced else 202)
    return Response(orjson.dumps(body_json), status_code=status, media_type="application/dicom+json")


@router.post("/studies", summary="Store instances")
async def store_instances(request: Request, services: ServicesDep, caller: CallerDep,
                          base: BaseDep) -> Response:
    return await _store(request, services, caller, base, None)


@router.post("/studies/{study}", summary="Store instances into a study")
async def store_study_instances(study: str, request: Request, services: ServicesDep,
                                caller: CallerDep, base: BaseDep) -> Response:
    check_uids(study)
    return await _store(request, services, caller, base, study)
