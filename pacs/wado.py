"""Web access to stored objects (PS3.18 WADO-RS, WADO-URI): metadata, frames, renders.

Built on the retrieve path; the HTTP adapter only parses requests and maps outcomes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from typing import TYPE_CHECKING, Any

import pydicom
from sqlalchemy import Engine, bindparam, select, update
from sqlalchemy.exc import SQLAlchemyError

from pacs.context import Caller
from pacs.dicomjson import BASE, instance_metadata, join_metadata
from pacs.errors import InvalidInput, NotFound, StorageUnavailable
from pacs.index.attributes import Level
from pacs.index.db import write_lock, writer
from pacs.index.models import Instance
from pacs.retrieve import RetrieveService, StoredInstance
from pacs.transcode import can_transcode, transcode

if TYPE_CHECKING:
    from pacs import render

log = logging.getLogger(__name__)
NATIVE_LE = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
RANGED_RENDER_BYTES = 4 << 20  # objects rendered from a ranged read of the frame, not read whole
FRAGMENT_TABLES = 4096  # objects whose frame fragments are remembered (see WadoService._fragments)
PRECOMPUTE_BATCH = 200  # instances whose metadata is written in one transaction
PRECOMPUTE_GATHER = 0.2  # seconds to wait for more stored instances before writing a batch
PRECOMPUTE_IDLE = 0.5  # seconds without a store before metadata is precomputed


class NotAcceptableSyntax(InvalidInput):
    """A transfer syntax we cannot produce from the stored object."""


def instance_path(inst: StoredInstance) -> str:
    return (f"/studies/{inst.study_uid}/series/{inst.series_uid}"
            f"/instances/{inst.sop_instance_uid}")


@dataclass
class WadoService:
    engine: Engine
    retrieve: RetrieveService
    render_cache: Any = field(default=None)  # a pacs.render.RenderCache, made on first use
    _queue: queue.Queue[str | None] | None = field(default=None, init=False, repr=False)
    _worker: threading.Thread | None = field(default=None, init=False, repr=False)
    _last_store: float = field(default=0.0, init=False, repr=False)
    _stopping: bool = field(default=False, init=False, repr=False)
    # storage key -> where each frame's fragment lies, for encapsulated objects without an
    # offset table (found when one was read whole; then its frames are read by range)
    _fragments: OrderedDict[str, list[tuple[int, int]]] = field(
        default_factory=OrderedDict, init=False, repr=False)
    _fragments_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def start_precompute(self, max_pending: int = 10_000) -> None:
        """Compute each new instance's metadata in the background, after its store was
        acknowledged, so the first series-metadata request of a study is fast too."""
        self._queue = queue.Queue(max_pending)
        self._worker = threading.Thread(target=self._precompute_loop, name="metadata",
                                        daemon=True)
        self._worker.start()

    def on_stored(self, outcome: Any, header: Any) -> None:
        """Ingest listener: queue the instance (dropped when the queue is full)."""
        self._last_store = time.monotonic()
        if self._queue is not None and outcome.status.value == "stored":
            try:
                self._queue.put_nowait(outcome.sop_instance_uid)
            except queue.Full:
                pass  # computed on first request instead

    def _precompute_loop(self) -> None:
        """Drain the queue in batches once stores pause for :data:`PRECOMPUTE_IDLE` seconds
        (the work costs about as much CPU as a store, and a study is read once it has
        arrived), one index transaction per batch (each write transaction takes the SQLite
        writer lock and an fsync that the C-STOREs in flight need)."""
        assert self._queue is not None
        caller = Caller.system("metadata")
        while True:
            uids = [self._queue.get()]
            while (uids[0] is not None and not self._stopping
                   and time.monotonic() - self._last_store < PRECOMPUTE_IDLE):
                time.sleep(PRECOMPUTE_IDLE / 4)
            while len(uids) < PRECOMPUTE_BATCH and uids[-1] is not None:
                try:
                    uids.append(self._queue.get(timeout=PRECOMPUTE_GATHER))
                except queue.Empty:
                    break
            computed: dict[str, str] = {}
            for uid in uids:
                if uid is None:
                    continue
                try:
                    inst = self.retrieve.instance(caller, uid)
                    computed[uid] = self._compute_metadata(inst)
                except Exception as exc:  # noqa: BLE001 - a cache; the request path recomputes
                    log.debug("metadata precompute of %s failed: %s", uid, exc)
            self._cache_metadata(computed)
            if uids[-1] is None:
                return

    def stop_precompute(self) -> None:
        self._stopping = True
        if self._queue is not None and self._worker is not None:
            try:
                self._queue.put(None, timeout=1)
            except queue.Full:
                pass
            self._worker.join(5)

    def instances(self, caller: Caller, study: str, series: str | None = None,
                  instance: str | None = None) -> list[StoredInstance]:
        keys = {"StudyInstanceUID": study}
        level = Level.STUDY
        if series:
            keys["SeriesInstanceUID"] = series
            level = Level.SERIES
        if instance:
            keys["SOPInstanceUID"] = instance
            level = Level.IMAGE
        found = self.retrieve.find_instances(caller, level, keys)
        if not found:
            raise NotFound(f"no instances under {level.name.lower()} {instance or series or study}")
        return found

    def check_syntax(self, inst: StoredInstance, transfer_syntax: str) -> None:
        if transfer_syntax not in ("*", inst.transfer_syntax_uid) and not can_transcode(
                inst.transfer_syntax_uid, transfer_syntax):
            raise NotAcceptableSyntax(f"cannot provide {transfer_syntax} for an object stored as "
                                      f"{inst.transfer_syntax_uid}")

    def bulkdata(self, inst: StoredInstance, tag: str) -> bytes:
        """The value of a top-level bulk data element (Pixel Data: all frames, as stored
        for native syntaxes, concatenated decoded frames otherwise)."""
        try:
            number = int(tag, 16)
        except ValueError:
            raise InvalidInput(f"invalid tag {tag!r}") from None
        from pacs import frames

        raw = self.retrieve.read(inst)
        ds = pydicom.dcmread(BytesIO(raw))
        if number == 0x7FE00010:
            if "PixelData" not in ds:
                raise NotFound(f"{inst.sop_instance_uid} has no pixel data")
            if not ds.file_meta.TransferSyntaxUID.is_compressed:
                return bytes(ds.PixelData)
            return b"".join(frames.uncompressed_frame(raw, i) for i in range(inst.number_of_frames))
        if number not in ds:
            raise NotFound(f"{inst.sop_instance_uid} has no element {tag}")
        value = ds[number].value
        return value if isinstance(value, bytes) else str(value).encode()

    def stream(self, inst: StoredInstance, transfer_syntax: str | None
               ) -> tuple[Iterator[bytes], int]:
        """Part 10 bytes in chunks and their length: the stored object streamed as is
        (``None``, ``*`` or the stored syntax), or transcoded to ``transfer_syntax`` (decoded
        and encoded in memory)."""
        if transfer_syntax in (None, "*", inst.transfer_syntax_uid):
            return self.retrieve.stream(inst), inst.size
        data = self.read(inst, transfer_syntax)
        return iter((data,)), len(data)

    def read(self, inst: StoredInstance, transfer_syntax: str | None) -> bytes:
        """Part 10 bytes, as stored (``None`` or ``*``) or in ``transfer_syntax``."""
        raw = self.retrieve.read(inst)
        if transfer_syntax in (None, "*", inst.transfer_syntax_uid):
            return raw
        self.check_syntax(inst, transfer_syntax)
        return transcode(raw, transfer_syntax)

    def metadata(self, caller: Caller, base: str, study: str, series: str | None = None,
                 instance: str | None = None) -> str:
        """DICOM JSON array of the instances' metadata (cached in the index)."""
        found = self.instances(caller, study, series, instance)
        uids = [i.sop_instance_uid for i in found]
        try:
            with self.engine.connect() as conn:
                cached = dict(conn.execute(
                    select(Instance.sop_instance_uid, Instance.metadata_json)
                    .where(Instance.sop_instance_uid.in_(uids))).all())
        except SQLAlchemyError as exc:
            raise StorageUnavailable(f"index unavailable: {type(exc).__name__}") from exc
        missing = {inst.sop_instance_uid: self._compute_metadata(inst)
                   for inst in found if cached.get(inst.sop_instance_uid) is None}
        self._cache_metadata(missing)  # one transaction for all of them
        return join_metadata([cached.get(inst.sop_instance_uid) or missing[inst.sop_instance_uid]
                              for inst in found], base)

    def _compute_metadata(self, inst: StoredInstance) -> str:
        if inst.pixel_data_offset is not None:  # the header alone, not a 1 GB object
            raw = self.retrieve.read_range(inst, 0, inst.pixel_data_offset)
        else:  # no pixel data found at ingest (none, or deflated): a small object
            raw = self.retrieve.read(inst)
        ds = pydicom.dcmread(BytesIO(raw), stop_before_pixels=True)
        return instance_metadata(ds, f"{BASE}{instance_path(inst)}/bulkdata",
                                 inst.pixel_data_offset is not None or _has_pixels(raw))

    def _cache_metadata(self, texts: dict[str, str]) -> None:
        """Keep computed metadata in the index, all in one transaction."""
        if not texts:
            return
        stmt = (update(Instance).where(Instance.sop_instance_uid == bindparam("uid"))
                .values(metadata_json=bindparam("text")))
        engine = writer(self.engine)
        try:  # in the writers' queue: a SQLite writer outside it makes the others oversleep
            with write_lock(engine), engine.begin() as conn:
                conn.execute(stmt, [{"uid": uid, "text": text} for uid, text in texts.items()])
        except SQLAlchemyError as exc:  # a cache: failing to keep it is not an error
            log.warning("could not cache metadata of %d instance(s): %s", len(texts), exc)

    def frames(self, inst: StoredInstance, numbers: list[int], stored: bool) -> list[bytes]:
        """Frames (1-based ``numbers``) in the stored syntax or uncompressed."""
        from pacs import frames

        for n in numbers:
            if n < 1 or n > max(inst.number_of_frames, 1):
                raise NotFound(f"frame {n} of {inst.sop_instance_uid} does not exist "
                               f"({inst.number_of_frames} frame(s))")
        ranged = self._ranged_frames(inst, numbers)
        if ranged is not None:
            return ranged
        if inst.pixel_data_length is None:  # encapsulated: through its offset table, if any
            sources = []
            for n in numbers:
                source = self._ranged_frame(inst, n - 1)
                if source is None:
                    break
                sources.append(source)
            else:
                return [frames.source_frame(source, n - 1, stored=stored)
                        for source, n in zip(sources, numbers, strict=True)]
        raw = self.retrieve.read(inst)
        self._learn_fragments(inst, raw)
        out = []
        for n in numbers:
            if stored:
                out.append(frames.stored_frame(raw, n - 1, pixel_data_offset=inst.pixel_data_offset,
                                               pixel_data_length=inst.pixel_data_length))
            else:
                out.append(frames.uncompressed_frame(raw, n - 1))
        return out

    def _ranged_frames(self, inst: StoredInstance, numbers: list[int]) -> list[bytes] | None:
        """Native little-endian frames read by byte range, without fetching the object
        (the stored frame is then also the uncompressed one); None when not applicable."""
        if (inst.transfer_syntax_uid not in NATIVE_LE or inst.pixel_data_offset is None
                or not inst.pixel_data_length or inst.bits_allocated in (None, 1)):
            return None
        size = inst.pixel_data_length // max(inst.number_of_frames, 1)
        if size == 0 or size % ((inst.bits_allocated or 8) // 8 or 1):
            return None
        return [self.retrieve.read_range(inst, inst.pixel_data_offset + (n - 1) * size, size)
                for n in numbers]

    def warm_up(self) -> None:
        """Render and describe a synthetic CT image once (nothing stored, no patient data):
        the first renders and the first metadata of a process otherwise pay 3-6 ms of
        one-time costs (lazy imports and first calls in pydicom, numpy and libjpeg-turbo,
        the allocator's first large buffers)."""
        from pacs import render

        raw = _synthetic_ct()
        render.render_frame(raw, 0)
        render.render_thumbnail(raw)
        instance_metadata(pydicom.dcmread(BytesIO(raw), stop_before_pixels=True), BASE, True)

    def rendered(self, inst: StoredInstance, frame: int | None,
                 options: render.RenderOptions, thumbnail: bool = False) -> bytes:
        """A rendered frame (1-based; None: the first, or the middle one for thumbnails)."""
        from pacs import render

        if self.render_cache is None:
            self.render_cache = render.RenderCache(256 << 20)
        frame_key = render.THUMBNAIL_FRAME if thumbnail else (frame or 1)
        cached = self.render_cache.get(inst.sop_instance_uid, frame_key, options)
        if cached is not None:
            return cached
        index = None if thumbnail else (frame or 1) - 1
        if index is not None and not 0 <= index < max(inst.number_of_frames, 1):
            raise NotFound(f"frame {frame} of {inst.sop_instance_uid} does not exist")
        source = self._ranged_frame(inst, index)
        if source is not None:
            data = render.render_source(
                source, render.thumbnail_options(options) if thumbnail else options)
        else:
            raw = self.retrieve.read(inst)
            self._learn_fragments(inst, raw)
            data = (render.render_thumbnail(raw, options) if index is None
                    else render.render_frame(raw, index, options))
        self.render_cache.put(inst.sop_instance_uid, frame_key, options, data)
        return data

    def _ranged_frame(self, inst: StoredInstance, index: int | None) -> Any:
        """The frame to render read by byte range (the header, then the frame alone) for
        objects of :data:`RANGED_RENDER_BYTES` or more (a frame of a 1 GB cine loop: ~1 MB
        read, not 1 GB); None for smaller objects, read whole in one go, and for those whose
        frames are not found by offset (see :func:`pacs.frames.open_frame`)."""
        from pacs import frames

        if (inst.size < RANGED_RENDER_BYTES or inst.pixel_data_offset is None
                or inst.bits_allocated in (None, 1)):
            return None
        head = inst.pixel_data_offset
        if inst.pixel_data_length is None:  # encapsulated: its Basic Offset Table in the same read
            head = min(inst.size, head + 8 + 4 * max(inst.number_of_frames, 1))
        with self._fragments_lock:
            fragments = self._fragments.get(inst.storage_key)
        return frames.open_frame(self.retrieve.read_range(inst, 0, head), inst.size, index,
                                 lambda offset, length: self.retrieve.read_range(inst, offset, length),
                                 fragments)

    def _learn_fragments(self, inst: StoredInstance, raw: bytes) -> None:
        """After a large encapsulated object was read whole (no offset table): remember
        where its frames lie, so that its next frames (a viewer's cine loop asks for them one
        by one) are read by range. Keyed by storage key: a replaced object has a new one."""
        from pacs import frames

        if (inst.size < RANGED_RENDER_BYTES or inst.pixel_data_length is not None
                or inst.number_of_frames < 2):
            return
        try:
            found = frames.frame_fragments(raw)
        except (InvalidInput, NotFound):
            return
        if found is None:
            return
        with self._fragments_lock:
            self._fragments[inst.storage_key] = found
            while len(self._fragments) > FRAGMENT_TABLES:
                self._fragments.popitem(last=False)


def _has_pixels(raw: bytes) -> bool:
    return b"\xe0\x7f\x10\x00" in raw[-(1 << 20):] or b"\x7f\xe0\x00\x10" in raw


def _synthetic_ct(size: int = 512) -> bytes:
    """A CT-sized 16-bit image as Part 10 bytes (:meth:`WadoService.warm_up`): at the usual
    size, so that the first real render also finds its large buffers ready (a first 512 x 512
    render after a 16 x 16 warm-up still took 2-3x its time)."""
    import numpy as np
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.PixelData = (np.arange(size * size) % 4096 - 1024).astype("<i2").tobytes()
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
