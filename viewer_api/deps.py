"""Request-scoped dependencies: the services and who is asking.

They are ``async``: they only read the request, and FastAPI runs a plain ``def`` dependency
on a worker thread, a hand-over (and back) that cost each request ~0.1 ms per dependency.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from pacs.context import Caller
from pacs.dicom.uids import is_valid_uid
from pacs.errors import InvalidInput
from pacs.services import Services


async def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


async def get_caller(request: Request) -> Caller:
    client = request.client
    address = f"{client.host}:{client.port}" if client else ""
    return Caller("http", "anonymous", address)


async def base_url(request: Request) -> str:
    """The DICOMweb root as the client sees it (for RetrieveURL / BulkDataURI)."""
    root = str(request.base_url).rstrip("/")
    return f"{root}{request.app.state.dicomweb_prefix}"


ServicesDep = Annotated[Services, Depends(get_services)]
CallerDep = Annotated[Caller, Depends(get_caller)]
BaseDep = Annotated[str, Depends(base_url)]


def check_uids(*uids: str | None) -> None:
    """400 for a path segment that is not a UID (never reaches the index as a pattern)."""
    for uid in uids:
        if uid is not None and not is_valid_uid(uid):
            raise InvalidInput(f"invalid UID in path: {uid[:80]!r}")
