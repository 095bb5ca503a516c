"""C-FIND cancel (PS3.7 9.3.2.3): a C-CANCEL stops the pending responses, final 0xFE00."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from pacs.context import Caller
from pacs.demo import generate_bulk
from tests.conftest import RunningArchive

MATCHES = 1500


# The cancel logic is the adapter's; one backend is enough, and no background work competes
# with the SCU's C-CANCEL (the SCP may legally finish first if the cancel arrives late).
@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
def test_cfind_cancel_stops_the_responses(make_archive: Callable[..., RunningArchive]) -> None:
    archive = make_archive(precompute_metadata=False)
    for ds in generate_bulk(5, 1, MATCHES, rows=16, cols=16):
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        archive.svc.ingest.store_instance(Caller.cli(), buf.getvalue())
    ae = AE("CANCELSCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", archive.port, ae_title="MINIPACS")
    query = pydicom.Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = ""
    query.SeriesInstanceUID = ""
    query.SOPInstanceUID = ""
    statuses = []
    responses = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind, msg_id=7)
    for status, _ in responses:
        statuses.append(status.Status)
        if len(statuses) == 1:
            cx = assoc._get_valid_context(StudyRootQueryRetrieveInformationModelFind, "", "scu")
            assoc.send_c_cancel(7, cx.context_id)
    assoc.release()
    assert statuses[-1] == 0xFE00
    assert len(statuses) < MATCHES + 1
    assert set(statuses[:-1]) == {0xFF00}
