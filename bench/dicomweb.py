"""DICOMweb latency benchmark: the archive against Orthanc's DICOMweb plugin (Debian
``orthanc-dicomweb``), same seeded data pushed to both with DCMTK ``storescu``, requests
alternating between targets in one run. Medians in ms and the ratio us/Orthanc (lower is
better). Writes ``bench/results/dicomweb-latest.{md,json}``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ingest import DCMTK_ENV, make_data, push, stop, wait_port, wait_ready  # noqa: E402
from tests.infra import free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
FRAME = {"Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'}
JPEG = {"Accept": "image/jpeg"}
COLD_RENDERS = 20
THUMBNAIL = 128  # pixels a side


def start_orthanc(work: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    port, http = free_port(), free_port()
    config = {"Name": "bench", "StorageDirectory": str(work / "storage"),
              "IndexDirectory": str(work / "index"), "DicomAet": "ORTHANC", "DicomPort": port,
              "HttpPort": http, "RemoteAccessAllowed": False, "TcpNoDelay": True,
              "DefaultEncoding": "Utf8", "DicomCheckCalledAet": False, "AuthenticationEnabled": False,
              "Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (work / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen(["Orthanc", str(work / "orthanc.json")], env=DCMTK_ENV,
                            stdout=subprocess.DEVNULL, stderr=open(work / "orthanc.log", "wb"))
    wait_port(port, proc)
    wait_port(http, proc)
    return proc, port, f"http://127.0.0.1:{http}/dicom-web"


def start_pacs(work: Path) -> tuple[subprocess.Popen[bytes], int, str]:
    port, http = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update(PACS_DATA_DIR=str(work / "data"), PACS_DICOM_HOST="127.0.0.1",
               PACS_DICOM_PORT=str(port), PACS_HTTP_PORT=str(http), PACS_LOG_LEVEL="WARNING")
    log = work / "pacs.log"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "pacs"), "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
    wait_port(port, proc)
    wait_ready(log, proc)
    return proc, port, f"http://127.0.0.1:{http}/dicomweb"


def timed(client: httpx.Client, url: str, headers: dict[str, str] | None = None,
          fits: int | None = None) -> float:
    """Milliseconds of one GET; with ``fits``, the answer must be an image of at most that
    many pixels a side."""
    t0 = time.perf_counter()
    r = client.get(url, headers=headers)
    elapsed = (time.perf_counter() - t0) * 1000
    if r.status_code >= 400:
        raise RuntimeError(f"{url}: HTTP {r.status_code}")
    if fits is not None:
        from PIL import Image

        size = Image.open(io.BytesIO(r.content)).size
        if max(size) > fits:
            raise RuntimeError(f"{url}: a {size} image, not a {fits}-pixel thumbnail")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=5)
    parser.add_argument("--per-study", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--settle", type=float, default=5.0,
                        help="seconds between the end of the push and the cold requests")
    args = parser.parse_args()
    if not PLUGIN.exists() or shutil.which("Orthanc") is None:
        raise SystemExit("needs Debian's orthanc and orthanc-dicomweb (make bench installs them)")
    work = Path(tempfile.mkdtemp(prefix="pacs-bench-web-"))
    n = args.studies * args.per_study
    print(f"generating {n} CT instances in {work}", flush=True)
    (folder,) = make_data(work / "data", n, 1)
    import pydicom

    files = sorted(folder.iterdir())
    sample = [pydicom.dcmread(f, stop_before_pixels=True) for f in files[:: args.per_study]]
    # cold renders: first touch of COLD_RENDERS instances spread over all studies (not the
    # warm one, files[0]); a median of 4 first requests moved with every outlier
    step = max(n // COLD_RENDERS, 1)
    untouched = [pydicom.dcmread(f, stop_before_pixels=True) for f in files[1::step]]
    # cold thumbnails: another COLD_RENDERS instances, never rendered either
    untouched_thumbs = [pydicom.dcmread(f, stop_before_pixels=True)
                        for f in files[1 + step // 2::step]]
    targets: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for name, start, aet in (("orthanc", start_orthanc, "ORTHANC"), ("pacs", start_pacs, "MINIPACS")):
            (work / name).mkdir()
            proc, port, base = start(work / name)
            targets[name] = (proc, base)
            push(port, aet, [folder])
        # "cold" = first request for a study, a few seconds after it arrived (a radiologist
        # opens it, not a script racing the push): our archive precomputes series metadata
        # in the background once stores pause; Orthanc computes on request
        os.sync()  # Orthanc does not fsync: its objects would be written back meanwhile
        time.sleep(args.settle)
        results = measure(targets, sample, untouched, untouched_thumbs, args.repeat)
    finally:
        for proc, _ in targets.values():
            stop(proc)
    report(results, n, args)
    shutil.rmtree(work, ignore_errors=True)


def thumbnail_path(target: str) -> str:
    """An instance's thumbnail: ours (128 x 128, PS3.18 8.3.5.2); Orthanc's DICOMweb plugin
    1.7 has no thumbnail resource, so the same-size render it does have."""
    return "/thumbnail" if target == "pacs" else f"/rendered?viewport={THUMBNAIL},{THUMBNAIL}"


def measure(targets: dict[str, tuple[subprocess.Popen[bytes], str]], sample: list[object],
            untouched: list[object], untouched_thumbs: list[object],
            repeat: int) -> dict[str, dict[str, list[float]]]:
    clients = {name: httpx.Client(timeout=60) for name in targets}
    out: dict[str, dict[str, list[float]]] = {name: {} for name in targets}
    first = sample[0]
    study, series, sop = first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID  # type: ignore[attr-defined]
    pid = first.PatientID  # type: ignore[attr-defined]

    def urls(name: str, base: str) -> dict[str, tuple[str, dict[str, str] | None]]:
        inst = f"{base}/studies/{study}/series/{series}/instances/{sop}"
        return {
            "QIDO studies by PatientID": (f"{base}/studies?PatientID={pid}", None),
            "QIDO all studies": (f"{base}/studies", None),
            "series metadata (warm)": (f"{base}/studies/{study}/series/{series}/metadata", None),
            "WADO-RS instance": (inst, STORED),
            "WADO-RS frame": (f"{inst}/frames/1", FRAME),
            "rendered JPEG (warm)": (f"{inst}/rendered", JPEG),
            "thumbnail JPEG (warm)": (f"{inst}{thumbnail_path(name)}", JPEG),
        }

    # cold: first touch of every other study's series metadata, and of the untouched renders,
    # one target then the other for each object (who goes first alternates), so that
    # neither is measured alone during the other's background work (writeback, precompute)
    def cold(ds: object, suffix: str) -> str:
        s, se, i = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID  # type: ignore[attr-defined]
        return f"/studies/{s}/series/{se}" + (f"/instances/{i}{suffix}" if suffix else "/metadata")

    firsts: list[tuple[str, object, str, dict[str, str] | None, int | None]] = [
        *(("series metadata (cold)", ds, "", None, None) for ds in sample[1:]),
        *(("rendered JPEG (cold)", ds, "/rendered", JPEG, None) for ds in untouched),
        *(("thumbnail JPEG (cold)", ds, "thumbnail", JPEG, THUMBNAIL) for ds in untouched_thumbs)]
    for j, (label, ds, suffix, headers, fits) in enumerate(firsts):
        names = list(targets) if j % 2 == 0 else list(targets)[::-1]
        for name in names:
            path = thumbnail_path(name) if suffix == "thumbnail" else suffix
            out[name].setdefault(label, []).append(
                timed(clients[name], targets[name][1] + cold(ds, path), headers, fits))
    for _ in range(repeat):
        for name, (_, base) in targets.items():  # alternate targets
            for label, (url, headers) in urls(name, base).items():
                out[name].setdefault(label, []).append(timed(clients[name], url, headers))
    return out


def report(results: dict[str, dict[str, list[float]]], n: int, args: argparse.Namespace) -> None:
    med = {t: {k: statistics.median(v) for k, v in r.items()} for t, r in results.items()}
    lines = [f"# DICOMweb latency benchmark ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)", "",
             f"Machine: {platform.platform()}, {os.cpu_count()} cores, Python "
             f"{platform.python_version()}; Orthanc {orthanc_version()} with its DICOMweb plugin; "
             f"{n} CT instances 512x512 in {args.studies} studies; medians of {args.repeat} "
             f"requests (cold: first request of each other study's series metadata and of "
             f"{COLD_RENDERS} instances' renders and of {COLD_RENDERS} others' thumbnails, "
             f"{args.settle:.0f} s after the push ended and a `sync`, the two targets in turn for "
             f"each object), keep-alive HTTP client; thumbnails: "
             f"ours `/thumbnail`, Orthanc's plugin (no thumbnail resource) "
             f"`/rendered?viewport={THUMBNAIL},{THUMBNAIL}`.", "",
             "| request | mini-PACS (ms) | Orthanc (ms) | ratio us/Orthanc |", "|---|---|---|---|"]
    for label in med["pacs"]:
        ours, theirs = med["pacs"][label], med["orthanc"].get(label)
        ratio = f"{ours / theirs:.2f}x" if theirs else "-"
        lines.append(f"| {label} | {ours:.1f} | {theirs:.1f} | {ratio} |" if theirs else
                     f"| {label} | {ours:.1f} | - | - |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dicomweb-latest.md").write_text(text)
    (RESULTS / "dicomweb-latest.json").write_text(json.dumps({"results": results, "medians": med},
                                                             indent=2))


def orthanc_version() -> str:
    try:
        return subprocess.run(["Orthanc", "--version"], capture_output=True, text=True,
                              timeout=10).stdout.split("\n")[0].split()[-1]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


if __name__ == "__main__":
    main()
