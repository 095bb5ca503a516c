"""The HTTP service as ``pacs serve`` runs it: a real socket, warmed up before it is ready."""

from __future__ import annotations

import logging
from dataclasses import replace

import httpx
import pydicom
import pytest

from pacs.context import Caller
from pacs.index.attributes import Level
from pacs.query import QueryRequest
from pacs.services import Services
from tests.conftest import testdata
from viewer_api.server import WARM_UP_PATHS, HttpService

CLI = Caller.cli("test")


def test_warm_up_requests_answer_and_touch_no_stored_object(
        services: Services, caplog: pytest.LogCaptureFixture) -> None:
    raw = testdata("CT_small.dcm").read_bytes()
    services.ingest.store_instance(CLI, raw)
    ds = pydicom.dcmread(testdata("CT_small.dcm"))
    services.settings = replace(services.settings, http_host="127.0.0.1", http_port=0)
    http = HttpService(services)
    http.start(warm_up=False)
    try:
        with caplog.at_level(logging.INFO, logger="viewer_api"):
            statuses = http.warm_up()
        assert not caplog.records, "the warm-up's expected misses logged"
        # every path answered: the health check and the (empty) searches 200, the rest 404
        assert statuses == {path: 200 if path == "/healthz" or "?" in path else 404
                            for path in WARM_UP_PATHS}
        # nothing rendered, cached or stored by it; the stored study is still the only one
        assert services.wado.render_cache is None or len(services.wado.render_cache) == 0
        studies = services.query.search(CLI, QueryRequest(Level.STUDY))
        assert [s["StudyInstanceUID"] for s in studies] == [ds.StudyInstanceUID]
        # and the server answers normally afterwards
        base = f"http://127.0.0.1:{http.port}/dicomweb"
        r = httpx.get(f"{base}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                      f"/instances/{ds.SOPInstanceUID}/rendered", headers={"Accept": "image/jpeg"})
        assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"
    finally:
        http.stop()
