"""Large multi-frame objects for memory tests and ``bench/memory.py``: written to disk without
ever being built in memory, an archive subprocess whose memory is watched, streaming hashes.

The object is a Multi-frame Grayscale Word Secondary Capture (explicit VR little endian): the
header written by pydicom, then the Pixel Data element header and its value streamed in 1 MiB
blocks of seeded pseudo-random bytes.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacs.dicom.header import META_PREFIX, dataset_offset

PACS = str(Path(sys.executable).parent / "pacs")
MF_GRAYSCALE_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
BLOCK = 1 << 20
ROWS = COLUMNS = 512
FRAME = ROWS * COLUMNS * 2


@dataclass(frozen=True)
class LargeObject:
    path: Path
    size: int
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    dataset_sha256: str  # of the data set, after the File Meta Information


def write_multiframe(path: Path, pixel_bytes: int, seed: int = 0) -> LargeObject:
    """Write a multi-frame object with about ``pixel_bytes`` of pixel data (whole frames)."""
    frames = max(1, pixel_bytes // FRAME)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = MF_GRAYSCALE_WORD_SC
    ds.SOPClassUID = MF_GRAYSCALE_WORD_SC
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Large^Object", "LARGE1", "OT"
    ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20260101", 1, 1
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.FrameTime = 33.3
    length = frames * FRAME
    rng = random.Random(seed)
    with open(path, "wb") as out:
        ds.save_as(out, enforce_file_format=True)
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
        remaining = length
        while remaining:
            block = rng.randbytes(min(BLOCK, remaining))
            out.write(block)
            remaining -= len(block)
    return LargeObject(path, path.stat().st_size, str(ds.StudyInstanceUID),
                       str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID),
                       dataset_sha256(path))


def dataset_sha256(path: Path) -> str:
    """SHA-256 of a Part 10 file's data set (the File Meta differs between copies)."""
    with open(path, "rb") as f:
        offset = dataset_offset(f.read(META_PREFIX))
        f.seek(offset)
        return sha256_stream(iter(lambda: f.read(BLOCK), b""))


def sha256_stream(chunks: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def multipart_first_part(path: Path) -> tuple[int, int]:
    """(offset, length) of the first part's body in a multipart/related body saved at
    ``path`` (its Content-Length header must be present)."""
    with open(path, "rb") as f:
        head = f.read(4096)
    end = head.index(b"\r\n\r\n")
    length = re.search(rb"(?i)content-length:\s*(\d+)", head[:end])
    assert length is not None, head[:end]
    return end + 4, int(length[1])


def file_slice_sha256(path: Path, offset: int, length: int) -> str:
    """SHA-256 of the data set of the Part 10 object stored at ``offset`` in ``path``."""
    with open(path, "rb") as f:
        f.seek(offset)
        skip = dataset_offset(f.read(META_PREFIX))
        f.seek(offset + skip)
        remaining = length - skip

        def chunks() -> Iterator[bytes]:
            nonlocal remaining
            while remaining > 0:
                chunk = f.read(min(BLOCK, remaining))
                if not chunk:
                    return
                remaining -= len(chunk)
                yield chunk

        return sha256_stream(chunks())


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid`` in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out


def reset_peak(pid: int) -> None:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0, ``clear_refs`` 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


class ArchiveProcess:
    """``pacs serve`` in a subprocess (DICOM and HTTP), ports taken from its ready line."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        env = {**env, "COLUMNS": "500"}  # the ready line on one line
        start = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([PACS, "serve"], env=env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            text = log.read_bytes()[start:].decode(errors="replace")
            found = re.search(r"on [\d.]+:(\d+) .*http://([\d.]+):(\d+)/dicomweb", text)
            if found:
                self.dicom_port = int(found[1])
                self.http = f"http://{found[2]}:{found[3]}"
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"pacs serve did not start:\n{text[-3000:]}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def archive_env(data_dir: Path, dicom_port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update(PACS_DATA_DIR=str(data_dir), PACS_DICOM_HOST="127.0.0.1",
               PACS_DICOM_PORT=str(dicom_port), PACS_HTTP_HOST="127.0.0.1", PACS_HTTP_PORT="0",
               PACS_LOG_LEVEL="WARNING")
    env.update(extra)
    return env
