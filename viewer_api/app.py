"""The FastAPI application: DICOMweb under ``/dicomweb``, WADO-URI at ``/wado``."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from pacs.services import Services
from viewer_api import errors, qido, stow, wado_rs, wado_uri

DICOMWEB_PREFIX = "/dicomweb"


def create_app(services: Services) -> FastAPI:
    """The HTTP app over ``services`` (built once by the caller, kept in ``app.state``)."""
    app = FastAPI(title="mini-PACS", version="0.1.0",
                  description="DICOMweb (QIDO-RS, WADO-RS, STOW-RS) and WADO-URI of the archive.")
    app.state.services = services
    app.state.dicomweb_prefix = DICOMWEB_PREFIX
    origins = services.settings.cors_origins
    if origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(origins), allow_credentials=True,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Accept", "Content-Type", "If-None-Match"],
            expose_headers=["ETag", "Warning", "Content-Type", "Content-Length"])
    errors.install(app)
    for router in (qido.router, wado_rs.router, stow.router):
        app.include_router(router, prefix=DICOMWEB_PREFIX)
    app.include_router(wado_uri.router)

    @app.get("/healthz", tags=["health"], summary="Liveness: index and storage reachable")
    def healthz() -> dict[str, str]:
        services.store.check()
        return {"status": "ok"}

    return app
