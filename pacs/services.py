"""The composition root: everything the adapters need, built once from :class:`Settings`."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.engine import make_url

import storage
from pacs.config import Settings
from pacs.index.db import ensure_schema, make_engine
from pacs.ingest import IngestService
from pacs.query import QueryService
from pacs.retrieve import RetrieveService
from pacs.wado import WadoService
from storage.spooled import Doorbell, SpooledStore

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    engine: Engine
    store: storage.ObjectStore
    ingest: IngestService
    query: QueryService
    retrieve: RetrieveService
    wado: WadoService

    def close(self) -> None:
        self.wado.stop_precompute()
        self.ingest.close()
        self.store.close()
        self.engine.dispose()


def settle_heap() -> None:
    """Put what a server process built at startup (pydicom's data dictionary, pynetdicom's
    SOP classes, the web app: ~135,000 tracked objects) out of the cyclic garbage
    collector's reach, after collecting what is already garbage (``gc.freeze``). Every full
    collection would otherwise walk them all again, and a large answer (a QIDO-RS of 9,000
    studies builds ~100,000 objects) triggers several: that QIDO 650-760 -> 350-390 ms
    in-process (docs/performance.md). Objects made later are collected as usual."""
    gc.collect()
    gc.freeze()


def uses_spool(settings: Settings) -> bool:
    """Whether ``settings``' objects go to S3 through the local spool."""
    return settings.storage_url.startswith("s3://") and settings.s3_spool


def open_storage(settings: Settings, *, spool: bool | None = None,
                 doorbell: Doorbell | None = None) -> storage.ObjectStore:
    """The object store of ``settings``: a folder, or S3 behind a durable local spool
    (uploaded by this process, or with a ``doorbell`` by the one that runs
    :func:`storage.spooled.run_uploads`)."""
    if not settings.storage_url.startswith("s3://"):
        return storage.open_store(settings.storage_url)
    s3 = storage.S3Options(
        endpoint=settings.s3_endpoint, access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key, region=settings.s3_region or None,
        secure=settings.s3_secure)
    remote = storage.open_store(settings.storage_url, s3)
    if not (settings.s3_spool if spool is None else spool):
        return remote
    spool_dir = settings.data_dir / "spool"
    return SpooledStore(storage.FolderStore(spool_dir), remote, settings.s3_upload_workers,
                        doorbell=doorbell)


def build_services(settings: Settings, *, auto_upgrade: bool | None = None,
                   doorbell: Doorbell | None = None) -> Services:
    """Engine, storage and services for ``settings``; the schema is created or checked.
    With a ``doorbell`` another process uploads what the S3 spool takes (``pacs serve``)."""
    engine = make_engine(settings.database_url)
    if auto_upgrade is None:
        auto_upgrade = make_url(settings.database_url).get_backend_name() == "sqlite"
    ensure_schema(engine, auto_upgrade=auto_upgrade)
    store = open_storage(settings, doorbell=doorbell)
    store.check()
    retrieve = RetrieveService(engine, store)
    ingest = IngestService(engine, store, settings.duplicate_policy, settings.max_object_size)
    wado = WadoService(engine, retrieve)
    if settings.precompute_metadata:
        wado.start_precompute()
        ingest.listeners.append(wado.on_stored)
    return Services(
        settings=settings,
        engine=engine,
        store=store,
        ingest=ingest,
        query=QueryService(engine),
        retrieve=retrieve,
        wado=wado,
    )
