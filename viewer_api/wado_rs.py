"""WADO-RS (PS3.18 10.4): instances, metadata, frames, bulk data, rendered and thumbnails."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from pydicom.uid import ExplicitVRLittleEndian

from pacs import render
from pacs.errors import InvalidInput
from pacs.retrieve import ReadAhead, StoredInstance, close_stream
from pacs.services import Services
from viewer_api.deps import BaseDep, CallerDep, ServicesDep, check_uids
from viewer_api.errors import NotAcceptable
from viewer_api.multipart import (
    body_length,
    new_boundary,
    parse_content_type,
    related_content_type,
    write_parts,
)

router = APIRouter(tags=["WADO-RS"])
IMMUTABLE = "private, max-age=31536000, immutable"
DEFAULT_TS = str(ExplicitVRLittleEndian)
# media types of compressed frames (PS3.18 Table 8.7.3-2)
FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


def _accepts(request: Request) -> list[tuple[str, dict[str, str]]]:
    header = request.headers.get("accept", "*/*")
    return [parse_content_type(item) for item in header.split(",") if item.strip()]


def _dicom_syntax(request: Request) -> str | None:
    """The transfer syntax asked for instances (None: as stored)."""
    for media, params in _accepts(request):
        part = params.get("type", "application/dicom") if media == "multipart/related" else media
        if media in ("*/*", "multipart/related", "application/dicom") and part in (
                "application/dicom", "*/*"):
            ts = params.get("transfer-syntax")
            return None if ts == "*" else (ts or DEFAULT_TS)
    raise NotAcceptable("instances are served as multipart/related; type=\"application/dicom\"")


def _part_headers(inst: StoredInstance, ts: str | None, length: int) -> dict[str, str]:
    return {"Content-Type": f"application/dicom;transfer-syntax={ts or inst.transfer_syntax_uid}",
            "Content-Length": str(length)}


def _multipart_instances(services: Services, found: list[StoredInstance],
                         ts: str | None) -> StreamingResponse:
    boundary = new_boundary()
    as_stored = all(ts in (None, "*", inst.transfer_syntax_uid) for inst in found)

    def parts() -> Iterator[tuple[Iterator[bytes], dict[str, str]]]:
        # each object streamed from storage when no transcoding is needed, the next ones
        # opened meanwhile (from S3: a GET each; only their first chunks held). Transcoded
        # objects are whole in memory: one at a time.
        loader = ReadAhead(lambda inst: services.wado.stream(inst, ts), found,
                           depth=services.retrieve.read_ahead if as_stored else 0,
                           close=lambda pair: close_stream(pair[0]))
        try:
            for inst in found:
                chunks, length = loader(inst)
                yield chunks, _part_headers(inst, ts, length)
        finally:
            loader.close()

    headers: dict[str, str] = {}
    if ts is not None:
        for inst in found:  # refuse before streaming starts
            services.wado.check_syntax(inst, ts)
    if as_stored:
        # every object as stored, its length known: the whole answer's length too (a client
        # can show progress, and the server sends the body as is, not in chunks)
        headers["Content-Length"] = str(body_length(boundary, (
            (inst.size, _part_headers(inst, ts, inst.size)) for inst in found)))
    return StreamingResponse(write_parts(parts(), boundary), headers=headers,
                             media_type=related_content_type("application/dicom", boundary))


@router.get("/studies/{study}", summary="Retrieve a study")
def retrieve_study(study: str, request: Request, services: ServicesDep,
                   caller: CallerDep) -> StreamingResponse:
    check_uids(study)
    return _multipart_instances(services, services.wado.instances(caller, study),
                                _dicom_syntax(request))


@router.get("/studies/{study}/series/{series}", summary="Retrieve a series")
def retrieve_series(study: str, series: str, request: Request, services: ServicesDep,
                    caller: CallerDep) -> StreamingResponse:
    check_uids(study, series)
    return _multipart_instances(services, services.wado.instances(caller, study, series),
                                _dicom_syntax(request))


@router.get("/studies/{study}/series/{series}/instances/{instance}", summary="Retrieve an instance")
def retrieve_instance(study: str, series: str, instance: str, request: Request,
                      services: ServicesDep, caller: CallerDep) -> StreamingResponse:
    check_uids(study, series, instance)
    return _multipart_instances(services, services.wado.instances(caller, study, series, instance),
                                _dicom_syntax(request))


def _metadata(services: Services, caller: object, base: str, study: str, series: str | None = None,
              instance: str | None = None) -> Response:
    check_uids(study, series, instance)
    text = services.wado.metadata(caller, base, study, series, instance)  # type: ignore[arg-type]
    return Response(text.encode("utf-8"), media_type="application/dicom+json",
                    headers={"Cache-Control": "private, no-cache"})


@router.get("/studies/{study}/metadata", summary="Study metadata (DICOM JSON)")
def study_metadata(study: str, services: ServicesDep, caller: CallerDep, base: BaseDep) -> Response:
    return _metadata(services, caller, base, study)


@router.get("/studies/{study}/series/{series}/metadata", summary="Series metadata (DICOM JSON)")
def series_metadata(study: str, series: str, services: ServicesDep, caller: CallerDep,
                    base: BaseDep) -> Response:
    return _metadata(services, caller, base, study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata",
            summary="Instance metadata (DICOM JSON)")
def instance_metadata(study: str, series: str, instance: str, services: ServicesDep,
                      caller: CallerDep, base: BaseDep) -> Response:
    return _metadata(services, caller, base, study, series, instance)


def _frame_mode(request: Request, inst: StoredInstance) -> tuple[bool, str]:
    """(stored?, part media type) for frames from the Accept header (PS3.18 8.7.3.5)."""
    stored_media = FRAME_MEDIA.get(inst.transfer_syntax_uid, "application/octet-stream")
    for media, params in _accepts(request):
        part = params.get("type", "application/octet-stream") if media == "multipart/related" else media
        ts = params.get("transfer-syntax")
        if part in ("application/octet-stream", "*/*"):
            if ts == "*" or (ts and ts == inst.transfer_syntax_uid):
                return True, stored_media
            if ts in (None, DEFAULT_TS):
                return False, "application/octet-stream"
        elif part == stored_media and ts in (None, "*", inst.transfer_syntax_uid):
            return True, stored_media
    raise NotAcceptable(f"frames of this instance are available as application/octet-stream "
                        f"(uncompressed) or {stored_media} (stored)")


def _frame_numbers(text: str) -> list[int]:
    try:
        numbers = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise InvalidInput(f"frame list must be comma-separated numbers, got {text!r}") from None
    if not numbers:
        raise InvalidInput("empty frame list")
    return numbers


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
            summary="Retrieve frames")
def retrieve_frames(study: str, series: str, instance: str, frames: str, request: Request,
                    services: ServicesDep, caller: CallerDep) -> Response:
    check_uids(study, series, instance)
    inst = services.wado.instances(caller, study, series, instance)[0]
    stored, media = _frame_mode(request, inst)
    data = services.wado.frames(inst, _frame_numbers(frames), stored)
    boundary = new_boundary()
    ts = inst.transfer_syntax_uid if stored else DEFAULT_TS
    parts = [(d, {"Content-Type": f"{media};transfer-syntax={ts}"}) for d in data]
    body = b"".join(write_parts(parts, boundary))
    return Response(body, media_type=related_content_type(media, boundary),
                    headers={"Cache-Control": IMMUTABLE})


@router.get("/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag}",
            summary="Retrieve bulk data")
def retrieve_bulkdata(study: str, series: str, instance: str, tag: str, request: Request,
                      services: ServicesDep, caller: CallerDep) -> Response:
    check_uids(study, series, instance)
    inst = services.wado.instances(caller, study, series, instance)[0]
    value = services.wado.bulkdata(inst, tag)
    boundary = new_boundary()
    body = b"".join(write_parts([(value, {"Content-Type": "application/octet-stream"})], boundary))
    return Response(body, media_type=related_content_type("application/octet-stream", boundary),
                    headers={"Cache-Control": IMMUTABLE})


def _image(services: Services, inst: StoredInstance, frame: int | None, request: Request,
           thumbnail: bool) -> Response:
    params = request.query_params
    accept = request.headers.get("accept", "image/jpeg")
    media = "image/png" if "image/png" in accept and "image/jpeg" not in accept else "image/jpeg"
    options = render.RenderOptions.parse(window=params.get("window"), viewport=params.get("viewport"),
                                         quality=params.get("quality"), media_type=media)
    etag = '"' + hashlib.sha1(repr((inst.sop_instance_uid, frame, options, thumbnail)).encode()
                              ).hexdigest() + '"'
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    data = services.wado.rendered(inst, frame, options, thumbnail=thumbnail)
    return Response(data, media_type=options.media_type,
                    headers={"ETag": etag, "Cache-Control": IMMUTABLE})


def _representative(services: Services, caller: object, study: str, series: str | None) -> StoredInstance:
    found = services.wado.instances(caller, study, series)  # type: ignore[arg-type]
    first_series = [i for i in found if i.series_uid == found[0].series_uid]
    return first_series[len(first_series) // 2]


@router.get("/studies/{study}/series/{series}/instances/{instance}/rendered",
            summary="Rendered instance (JPEG/PNG)")
def rendered_instance(study: str, series: str, instance: str, request: Request,
                      services: ServicesDep, caller: CallerDep) -> Response:
    check_uids(study, series, instance)
    inst = services.wado.instances(caller, study, series, instance)[0]
    return _image(services, inst, None, request, False)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered",
            summary="Rendered frame (JPEG/PNG)")
def rendered_frame(study: str, series: str, instance: str, frames: str, request: Request,
                   services: ServicesDep, caller: CallerDep) -> Response:
    check_uids(study, series, instance)
    inst = services.wado.instances(caller, study, series, instance)[0]
    return _image(services, inst, _frame_numbers(frames)[0], request, False)


@router.get("/studies/{study}/rendered", summary="Rendered study (its representative image)")
def rendered_study(study: str, request: Request, services: ServicesDep, caller: CallerDep) -> Response:
    check_uids(study)
    return _image(services, _representative(services, caller, study, None), None, request, False)


@router.get("/studies/{study}/series/{series}/rendered", summary="Rendered series (middle image)")
def rendered_series(study: str, series: str, request: Request, services: ServicesDep,
                    caller: CallerDep) -> Response:
    check_uids(study, series)
    return _image(services, _representative(services, caller, study, series), None, request, False)


@router.get("/studies/{study}/thumbnail", summary="Study thumbnail")
def study_thumbnail(study: str, request: Request, services: ServicesDep, caller: CallerDep) -> Response:
    check_uids(study)
    return _image(services, _representative(services, caller, study, None), None, request, True)


@router.get("/studies/{study}/series/{series}/thumbnail", summary="Series thumbnail")
def series_thumbnail(study: str, series: str, request: Request, services: ServicesDep,
                     caller: CallerDep) -> Response:
    check_uids(study, series)
    return _image(services, _representative(services, caller, study, series), None, request, True)


@router.get("/studies/{study}/series/{series}/instances/{instance}/thumbnail",
            summary="Instance thumbnail")
def instance_thumbnail(study: str, series: str, instance: str, request: Request,
                       services: ServicesDep, caller: CallerDep) -> Response:
    check_uids(study, series, instance)
    inst = services.wado.instances(caller, study, series, instance)[0]
    return _image(services, inst, None, request, True)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail",
            summary="Frame thumbnail")
def frame_thumbnail(study: str, series: str, instance: str, frames: str, request: Request,
                    services: ServicesDep, caller: CallerDep) -> Response:
    check_uids(study, series, instance)
    inst = services.wado.instances(caller, study, series, instance)[0]
    return _image(services, inst, _frame_numbers(frames)[0], request, True)


