"""STOW-RS (PS3.18 10.5): store instances through the same ingest path as C-STORE.

Each part is spooled while the body is parsed (in memory when small; when big, written to
the store as it arrives if the store can, the folder store, else to ``<data dir>/tmp``) and
ingested from there, never whole in memory; a part over ``PACS_MAX_OBJECT_SIZE`` is
discarded as it arrives and reported failed (0xC000 class).
"""

from __future__ import annotations

from typing import IO, Any

import orjson
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from dicom_scp.status import STORE_CANNOT_UNDERSTAND, STORE_STATUS, status_for
from pacs.context import Caller
from pacs.dicom.header import parse_header_file
from pacs.errors import InvalidInput, PacsError, StorageUnavailable
from pacs.errors import StorageFull as PacsStorageFull
from pacs.services import Services
from storage import StorageError, StorageFull
from viewer_api.deps import BaseDep, CallerDep, ServicesDep, check_uids
from viewer_api.multipart import Body, StagedPart, TooLarge, parse_content_type, read_parts

router = APIRouter(tags=["STOW-RS"])


def _sop_item(sop_class: str, sop_instance: str) -> dict[str, Any]:
    return {"00081150": {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"},
            "00081155": {"vr": "UI", "Value": [sop_instance]} if sop_instance else {"vr": "UI"}}


def _failed_uids(body: IO[bytes] | StagedPart) -> tuple[str, str]:
    """For the failure report: the SOP Class and Instance UIDs of a part, if readable."""
    try:
        if isinstance(body, StagedPart):
            body = body.open()
        body.seek(0)
        header, _ = parse_header_file(body, body.seek(0, 2))  # type: ignore[arg-type]
        return header.sop_class_uid, header.sop_instance_uid
    except (InvalidInput, OSError, StorageError):
        return "", ""


def _store_part(services: Services, caller: Caller, base: str, study: str | None,
                headers: dict[str, str], body: Body) -> tuple[bool, dict[str, Any]]:
    """Ingest one part from its spool file or staged object: (stored?, its
    ReferencedSOPSequence or FailedSOPSequence item)."""
    media, _ = parse_content_type(headers.get("content-type", "application/dicom"))
    try:
        if isinstance(body, TooLarge):
            raise InvalidInput(f"object of more than {services.ingest.max_object_size} bytes "
                               "exceeds the limit")
        if media != "application/dicom":
            raise InvalidInput(f"part of type {media!r}: only application/dicom is accepted")
        if isinstance(body, StagedPart):
            outcome = services.ingest.store_instance(caller, _staged_stream(body),
                                                     expected_study_uid=study,
                                                     staging=body.staging)
        else:
            outcome = services.ingest.store_instance(caller, body, expected_study_uid=study)
    except PacsError as exc:
        sop_class, sop_instance = ("", "") if isinstance(body, TooLarge) else _failed_uids(body)
        item = _sop_item(sop_class, sop_instance)
        item["00081197"] = {"vr": "US", "Value": [
            status_for(STORE_STATUS, exc, STORE_CANNOT_UNDERSTAND)]}
        return False, item
    item = _sop_item(outcome.sop_class_uid, outcome.sop_instance_uid)
    item["00081190"] = {"vr": "UR", "Value": [
        f"{base}/studies/{outcome.study_uid}/series/{outcome.series_uid}"
        f"/instances/{outcome.sop_instance_uid}"]}
    return True, item


def _staged_stream(part: StagedPart) -> IO[bytes]:
    """The staged part read back; the store's failure while it arrived as the archive's."""
    try:
        return part.open()
    except StorageFull as exc:
        raise PacsStorageFull(f"storage full: {exc}") from exc
    except StorageError as exc:
        raise StorageUnavailable(f"storage unavailable: {exc}") from exc


async def _store(request: Request, services: Services, caller: Caller, base: str,
                 study: str | None) -> Response:
    parts = await read_parts(request.headers.get("content-type", ""), request.stream(),
                             services.settings.data_dir / "tmp", services.ingest.max_object_size,
                             services.ingest.begin_staging)
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    try:
        for headers, body in parts:
            stored, item = await run_in_threadpool(_store_part, services, caller, base, study,
                                                   headers, body)
            (referenced if stored else failed).append(item)
    finally:
        for _, body in parts:
            if not isinstance(body, TooLarge):
                body.close()
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
