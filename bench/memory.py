"""Memory of the archive with one large multi-frame object (issue 3): DCMTK ``storescu`` sends a
1 GiB object to ``pacs serve``, then it comes back by C-GET (``getscu``) and WADO-RS, one of
its frames and its thumbnail are rendered, and it goes in again by STOW-RS, on the embedded
pair and on PostgreSQL + S3 (SeaweedFS). For each transfer the server's resident memory
before and its peak during (VmHWM, reset before each transfer) are reported, with the time
taken and whether the data set came back unchanged (SHA-256).

Not part of the test suite (``tests/e2e/test_large_objects.py`` checks the same with 256 MiB).
Run: ``.venv/bin/python bench/memory.py [--size-mib 1024] [--backends embedded,production]``;
writes ``bench/results/memory-latest.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.infra import free_port, start_postgres, start_seaweedfs  # noqa: E402
from tests.interop import dcmtk  # noqa: E402
from tests.large_object import (  # noqa: E402
    ArchiveProcess,
    LargeObject,
    archive_env,
    dataset_sha256,
    file_slice_sha256,
    memory,
    multipart_first_part,
    reset_peak,
    write_multiframe,
)

RESULTS = ROOT / "bench" / "results"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
TIMEOUT = 1800.0


def measure(server: ArchiveProcess, what: str, action: Callable[[], bool]) -> dict[str, Any]:
    """Run one transfer; the server's RSS before, its peak during, the time, the check."""
    before = memory(server.pid)["VmRSS"]
    reset_peak(server.pid)
    start = time.monotonic()
    ok = action()
    seconds = time.monotonic() - start
    peak = memory(server.pid)["VmHWM"]
    row = {"transfer": what, "rss_before_mib": before / 2**20, "peak_mib": peak / 2**20,
           "growth_mib": (peak - before) / 2**20, "seconds": seconds, "unchanged": ok}
    print(f"  {what:10s} rss {row['rss_before_mib']:7.1f} MiB  peak {row['peak_mib']:7.1f} MiB "
          f" (+{row['growth_mib']:6.1f})  {seconds:6.1f} s  {'ok' if ok else 'CHANGED'}",
          flush=True)
    return row


def store_scu(server: ArchiveProcess, obj: LargeObject) -> bool:
    run = dcmtk.run("storescu", "-d", "-aec", dcmtk.CALLED_AE, dcmtk.HOST,
                    str(server.dicom_port), str(obj.path), env=DCMTK_ENV, timeout=TIMEOUT)
    return run.returncode == 0 and run.final("C-STORE RSP").status == 0


def get_scu(server: ArchiveProcess, obj: LargeObject, out: Path) -> bool:
    out.mkdir()
    try:
        run = dcmtk.run("getscu", "-d", "-aec", dcmtk.CALLED_AE, "-S",
                        *dcmtk.keys("QueryRetrieveLevel=STUDY", f"StudyInstanceUID={obj.study_uid}"),
                        "-od", str(out), dcmtk.HOST, str(server.dicom_port), env=DCMTK_ENV,
                        timeout=TIMEOUT)
        received = dcmtk.read_dir(out)
        return (run.final("C-GET RSP").status == 0 and list(received) == [obj.sop_instance_uid]
                and dataset_sha256(received[obj.sop_instance_uid]) == obj.dataset_sha256)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def wado_rs(server: ArchiveProcess, obj: LargeObject, out: Path) -> bool:
    url = (f"{server.http}/dicomweb/studies/{obj.study_uid}/series/{obj.series_uid}"
           f"/instances/{obj.sop_instance_uid}")
    try:
        with httpx.stream("GET", url, timeout=TIMEOUT, headers={
                "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
                          ) as response, open(out, "wb") as f:
            if response.status_code != 200:
                return False
            for chunk in response.iter_bytes(1 << 20):
                f.write(chunk)
        offset, length = multipart_first_part(out)
        return file_slice_sha256(out, offset, length) == obj.dataset_sha256
    finally:
        out.unlink(missing_ok=True)


def stow_rs(server: ArchiveProcess, obj: LargeObject) -> bool:
    boundary = "memory-bench-boundary"

    def body() -> Iterator[bytes]:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        with open(obj.path, "rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    response = httpx.post(f"{server.http}/dicomweb/studies", content=body(), timeout=TIMEOUT,
                          headers={"Content-Type": f'multipart/related; type="application/dicom"; '
                                                   f"boundary={boundary}"})
    return response.status_code == 200  # an identical resend: "already stored"


def rendered(server: ArchiveProcess, obj: LargeObject) -> bool:
    """The last frame rendered and the thumbnail (each read from the object by range)."""
    base = (f"{server.http}/dicomweb/studies/{obj.study_uid}/series/{obj.series_uid}"
            f"/instances/{obj.sop_instance_uid}")
    last = obj.size // (512 * 512 * 2)  # whole 512 x 512 16-bit frames, the header under one
    for url in (f"{base}/frames/{last}/rendered", f"{base}/thumbnail"):
        response = httpx.get(url, timeout=TIMEOUT)
        if response.status_code != 200 or not response.content.startswith(b"\xff\xd8"):
            return False
    return True


def run_backend(name: str, env: dict[str, str], obj: LargeObject, work: Path) -> dict[str, Any]:
    print(f"{name}:", flush=True)
    server = ArchiveProcess(env, work / f"serve-{name}.log")
    try:
        time.sleep(1.0)  # let start-up settle
        rows = [measure(server, "C-STORE", lambda: store_scu(server, obj)),
                measure(server, "C-GET", lambda: get_scu(server, obj, work / "got")),
                measure(server, "WADO-RS", lambda: wado_rs(server, obj, work / "wado.bin")),
                measure(server, "rendered", lambda: rendered(server, obj)),
                measure(server, "STOW-RS", lambda: stow_rs(server, obj))]
    finally:
        server.stop()
    return {"backend": name, "transfers": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024, help="pixel data size")
    parser.add_argument("--backends", default="embedded,production")
    args = parser.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    work = Path(tempfile.mkdtemp(prefix="pacs-memory-"))
    try:
        print(f"writing a {args.size_mib} MiB multi-frame object in {work}", flush=True)
        obj = write_multiframe(work / "large.dcm", args.size_mib << 20, seed=1)
        results = []
        for backend in backends:
            data_dir = work / f"data-{backend}"
            if backend == "embedded":
                results.append(run_backend(backend, archive_env(data_dir, free_port()), obj, work))
                continue
            pg = start_postgres(work / "pg")
            s3 = start_seaweedfs(work / "s3")
            try:
                env = archive_env(data_dir, free_port(),
                                  PACS_DATABASE_URL=pg.create_database(),
                                  PACS_STORAGE_URL="s3://memory-bench",
                                  PACS_S3_ENDPOINT=s3.endpoint, PACS_S3_ACCESS_KEY=s3.access_key,
                                  PACS_S3_SECRET_KEY=s3.secret_key, PACS_S3_SECURE="false")
                results.append(run_backend(backend, env, obj, work))
            finally:
                s3.stop()
                pg.stop()
        report(results, obj)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(results: list[dict[str, Any]], obj: LargeObject) -> None:
    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "object_bytes": obj.size,
            "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory-latest.json").write_text(json.dumps({**meta, "results": results},
                                                           indent=2) + "\n")
    lines = [f"# Memory with one {obj.size / 2**20:.0f} MiB multi-frame object",
             "", f"{meta['date']}, {meta['cpus']} CPUs, Python {meta['python']}. Server RSS "
             "before each transfer and its peak during it (VmHWM reset before each); the "
             "data set is compared by SHA-256.", "",
             "| backend | transfer | RSS before (MiB) | peak (MiB) | growth (MiB) | seconds "
             "| unchanged |", "|---|---|---:|---:|---:|---:|---|"]
    for result in results:
        for row in result["transfers"]:
            lines.append(f"| {result['backend']} | {row['transfer']} | {row['rss_before_mib']:.0f} "
                         f"| {row['peak_mib']:.0f} | {row['growth_mib']:.0f} "
                         f"| {row['seconds']:.1f} | {'yes' if row['unchanged'] else 'NO'} |")
    (RESULTS / "memory-latest.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
