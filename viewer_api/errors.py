"""Domain outcome -> HTTP status: the one table of the HTTP adapter."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from pacs.errors import (
    DuplicateConflict,
    InvalidInput,
    NotAuthorised,
    NotFound,
    PacsError,
    StorageFull,
    StorageUnavailable,
)
from pacs.wado import NotAcceptableSyntax

log = logging.getLogger(__name__)

HTTP_STATUS: dict[type[PacsError], int] = {
    InvalidInput: 400,
    NotAuthorised: 403,
    NotFound: 404,
    DuplicateConflict: 409,
    StorageUnavailable: 503,
    StorageFull: 507,
}


class NotAcceptable(InvalidInput):
    """The Accept header asks for a representation we cannot produce (406)."""


class UnsupportedMediaType(InvalidInput):
    """The request body's media type is not one we take (415)."""


HTTP_STATUS_SPECIFIC: dict[type[PacsError], int] = {
    NotAcceptable: 406, NotAcceptableSyntax: 406, UnsupportedMediaType: 415}


def http_status(exc: PacsError) -> int:
    for kind in type(exc).__mro__:
        if kind in HTTP_STATUS_SPECIFIC:
            return HTTP_STATUS_SPECIFIC[kind]  # type: ignore[index]
        if kind in HTTP_STATUS:
            return HTTP_STATUS[kind]  # type: ignore[index]
    return 500


def install(app: FastAPI) -> None:
    @app.exception_handler(PacsError)
    async def _pacs_error(request: Request, exc: PacsError) -> JSONResponse:
        status = http_status(exc)
        log.log(logging.WARNING if status < 500 else logging.ERROR, "%s %s -> %d: %s",
                request.method, request.url.path, status, exc)
        headers = {"Retry-After": "30"} if status == 503 else None
        return JSONResponse({"error": type(exc).__name__, "message": str(exc)},
                            status_code=status, headers=headers)
