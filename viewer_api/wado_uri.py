"""WADO-URI (PS3.18 9): ``/wado?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…`` for
the stable image links EMR systems keep."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from pacs import render
from pacs.errors import InvalidInput
from viewer_api.deps import CallerDep, ServicesDep, check_uids

router = APIRouter(tags=["WADO-URI"])


@router.get("/wado", summary="WADO-URI object or rendered image")
def wado_uri(
    services: ServicesDep,
    caller: CallerDep,
    requestType: str = Query(...),  # noqa: N803 - names from PS3.18 9.1
    studyUID: str = Query(...),  # noqa: N803
    seriesUID: str = Query(...),  # noqa: N803
    objectUID: str = Query(...),  # noqa: N803
    contentType: str = Query("image/jpeg"),  # noqa: N803
    transferSyntax: str | None = Query(None),  # noqa: N803
    windowCenter: float | None = Query(None),  # noqa: N803
    windowWidth: float | None = Query(None),  # noqa: N803
    rows: int | None = Query(None, gt=0),
    columns: int | None = Query(None, gt=0),
    frameNumber: int | None = Query(None, gt=0),  # noqa: N803
    imageQuality: int | None = Query(None, ge=1, le=100),  # noqa: N803
) -> Response:
    if requestType != "WADO":
        raise InvalidInput("requestType must be WADO")
    check_uids(studyUID, seriesUID, objectUID)
    inst = services.wado.instances(caller, studyUID, seriesUID, objectUID)[0]
    media = contentType.split(",")[0].strip()
    if media == "application/dicom":
        chunks, length = services.wado.stream(inst, transferSyntax)  # as stored: streamed
        return StreamingResponse(chunks, media_type="application/dicom", headers={
            "Content-Disposition": f'attachment; filename="{objectUID}.dcm"',
            "Content-Length": str(length)})
    if media not in ("image/jpeg", "image/png"):
        raise InvalidInput(f"contentType {media!r}: use application/dicom, image/jpeg or image/png")
    if (windowCenter is None) != (windowWidth is None):
        raise InvalidInput("windowCenter and windowWidth go together")
    window = f"{windowCenter},{windowWidth}" if windowCenter is not None else None
    viewport = None
    if rows or columns:
        viewport = f"{columns or rows},{rows or columns}"
    options = render.RenderOptions.parse(window=window, viewport=viewport,
                                         quality=str(imageQuality) if imageQuality else None,
                                         media_type=media)
    data = services.wado.rendered(inst, frameNumber, options)
    return Response(data, media_type=media,
                    headers={"Cache-Control": "private, max-age=31536000, immutable"})
