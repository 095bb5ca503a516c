"""Query and retrieve benchmark (issue 5): the archive against Orthanc (Debian, with its
DICOMweb plugin), the same seeded data set loaded into both, requests alternating between
the two targets in one run. Medians and the ratio us/Orthanc (lower is better).

- C-FIND STUDY level with DCMTK ``findscu`` (wall time of the tool), the same C-FIND timed at
  the wire (``bench/rawfind.py``: one open association, first byte of the request to last
  byte of the final response, the server's time alone) and QIDO-RS ``/studies``:
  by PatientID, PatientName ``A*``, a one-year StudyDate range and all studies, over N
  studies of one small instance each (``--studies``, default 10,000).
- C-MOVE (``movescu`` to a DCMTK ``storescp``) and C-GET (``getscu``) of a 100-slice CT
  study, WADO-RS retrieval of its series (multipart, 100 instances) and the series metadata;
  the same from a third archive on the production pair (PostgreSQL with fsync + SeaweedFS
  S3, every object read back from S3), reported as extra columns (``--no-production``: not).

Loading: Orthanc through C-STORE (``storescu``, 4 associations); the archive through its
real ingest path in-process (``IngestService.store_instance`` on 2 threads, exactly what
``pacs import`` and C-STORE do), both once per data folder: ``--work DIR`` keeps the loaded
targets so a later run (e.g. after an optimisation) skips the load.

Writes ``bench/results/query-latest.{md,json}`` and ``retrieve-latest.{md,json}``; with
``--studies`` other than 10,000 the query results go to ``query-<N>.{md,json}`` and are
compared to the 10k ones (scaling). ``make bench`` runs the default;
``make bench-scale`` the 100k run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dicomweb import PLUGIN, STORED, orthanc_version  # noqa: E402
from bench.ingest import (  # noqa: E402
    DCMTK_ENV,
    durable_postgres,
    push,
    stop,
    wait_port,
    wait_ready,
)
from bench.rawfind import RawFind, association_ms  # noqa: E402
from tests.infra import free_port, start_postgres, start_seaweedfs  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SCU, DEST = "BENCHSCU", "BENCHDEST"
FIRST_DAY, DAYS = date(2014, 1, 1), 12 * 365  # one year of twelve: ~8 % of the studies
YEAR = "20240101-20241231"
ECHO_LABEL = "C-ECHO echoscu (tool start and association)"
ASSOCIATION_LABEL = "Association at the wire (connect to A-ASSOCIATE-AC)"
WADO_PER_ROUND = 5  # WADO-RS requests per target and retrieve round
# Vietnamese family names with their usual weights; "An" starts with A: about 9 % of the
# patients, so PatientName=A* returns a realistic worklist page. (No "Âu": Orthanc does not
# fold diacritics, so the two would not return the same matches.)
FAMILIES = (("Nguyễn", 30), ("Trần", 11), ("Lê", 9), ("Phạm", 7), ("Hoàng", 5), ("Huỳnh", 5),
            ("Phan", 4), ("Vũ", 4), ("Võ", 4), ("Đặng", 2), ("Bùi", 2), ("Đỗ", 2), ("Hồ", 2),
            ("Ngô", 2), ("Dương", 1), ("Lý", 1), ("An", 9))
GIVEN = ("Văn An", "Thị Bích", "Hoàng Đức", "Minh Châu", "Thu Hà", "Quốc Bảo", "Ngọc Ánh",
         "Đình Dũng", "Thị Hương", "Đức Thắng", "Thị Ngọc Diệp", "Quang Đạt", "Anh Tuấn")
FIND_KEYS = ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "StudyTime",
             "AccessionNumber", "StudyDescription", "ModalitiesInStudy",
             "NumberOfStudyRelatedInstances")


# --- data --------------------------------------------------------------------------------

def small_studies(seed: int, n: int) -> Iterator[Any]:
    """``n`` studies of one 16x16 CT or MR instance; two studies per patient."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = random.Random(seed)
    names = [f for f, w in FAMILIES for _ in range(w)]
    pixels = np.arange(256, dtype=np.uint16).reshape(16, 16).tobytes()
    root = "1.2.826.0.1.3680043.8.498."
    for k in range(n):
        p = k // 2
        prng = random.Random(seed * 1_000_003 + p)  # the patient's two studies agree
        modality, sop_class = (("CT", "1.2.840.10008.5.1.4.1.1.2") if rng.random() < 0.6
                               else ("MR", "1.2.840.10008.5.1.4.1.1.4"))
        day = FIRST_DAY + timedelta(days=rng.randrange(DAYS))
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid(root, [f"{seed}|{k}|sop"])
        ds.StudyInstanceUID = generate_uid(root, [f"{seed}|{k}|study"])
        ds.SeriesInstanceUID = generate_uid(root, [f"{seed}|{k}|series"])
        ds.PatientName = f"{prng.choice(names)}^{prng.choice(GIVEN)}"
        ds.PatientID = f"P{p:08d}"
        ds.PatientBirthDate = f"{1940 + prng.randrange(65)}0{1 + prng.randrange(9)}15"
        ds.PatientSex = prng.choice("MF")
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = day.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = f"{7 + rng.randrange(11):02d}{rng.randrange(60):02d}00"
        ds.AccessionNumber = f"A{k:09d}"
        ds.StudyID = str(k % 100_000)
        ds.StudyDescription = "CT NGỰC" if modality == "CT" else "MRI SỌ NÃO"
        ds.ReferringPhysicianName = "Trần^Văn Minh"
        ds.Modality = modality
        ds.SeriesNumber = 1
        ds.InstanceNumber = 1
        ds.Rows = ds.Columns = 16
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        yield ds


def write_studies(folder: Path, seed: int, n: int, parts: int = 4) -> list[Path]:
    dirs = [folder / f"part{i}" for i in range(parts)]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for k, ds in enumerate(small_studies(seed, n)):
        ds.save_as(dirs[k % parts] / f"{k:07d}.dcm", enforce_file_format=True)
        if (k + 1) % 50_000 == 0:
            print(f"  generated {k + 1}/{n} ({(k + 1) / (time.perf_counter() - t0):.0f}/s)",
                  flush=True)
    return dirs


def report_orthanc_load(target: Target, n: int, done: threading.Event,
                        every: float = 60.0) -> None:
    """Print how many instances Orthanc holds every ``every`` seconds until ``done``: a
    long load (1M studies: hours) shows its progress."""
    base = target.web.rsplit("/dicom-web", 1)[0]
    t0 = time.perf_counter()
    while not done.wait(every):
        try:
            count = httpx.get(f"{base}/statistics", timeout=30).json()["CountInstances"]
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            print(f"  Orthanc: progress unknown ({exc})", flush=True)
            continue
        print(f"  Orthanc: {count}/{n} ({count / (time.perf_counter() - t0):.0f}/s)",
              flush=True)


def ingest_in_process(data_dir: Path, files: list[Path], threads: int = 2,
                      progress: Path | None = None) -> float:
    """Load files through the archive's ingest service (what ``pacs import`` does).

    ``progress``: a file holding how many of ``files`` (in order) are in already; written
    after each batch of 10,000, so a load cut short goes on from its last whole batch."""
    from pacs.config import load_settings
    from pacs.context import Caller
    from pacs.services import build_services

    services = build_services(load_settings({}, data_dir=data_dir, precompute_metadata=False))
    caller = Caller.cli("bench")
    first = 0
    if progress is not None and progress.exists():
        first = min(int(progress.read_text() or 0), len(files))
        print(f"  archive: {first} loaded before, going on from there", flush=True)
    done = first
    lock = threading.Lock()
    t0 = time.perf_counter()

    def one(path: Path) -> None:
        nonlocal done
        services.ingest.store_instance(caller, path.read_bytes())
        with lock:
            done += 1
            if done % 5000 == 0:
                rate = (done - first) / (time.perf_counter() - t0)
                print(f"  archive: {done}/{len(files)} ({rate:.0f}/s)", flush=True)
    try:
        with ThreadPoolExecutor(threads) as pool:
            for start in range(first, len(files), 10_000):  # not a million futures at once
                list(pool.map(one, files[start:start + 10_000]))
                if progress is not None:
                    progress.write_text(str(min(start + 10_000, len(files))))
    finally:
        services.close()
    return time.perf_counter() - t0


# --- targets -----------------------------------------------------------------------------

class Target:
    def __init__(self, name: str, aet: str, proc: subprocess.Popen[bytes], port: int, web: str):
        self.name, self.aet, self.proc, self.port, self.web = name, aet, proc, port, web


def start_orthanc(work: Path, dest_port: int) -> Target:
    port, http = free_port(), free_port()
    config = {"Name": "bench", "StorageDirectory": str(work / "storage"),
              "IndexDirectory": str(work / "index"), "DicomAet": "ORTHANC", "DicomPort": port,
              "HttpPort": http, "RemoteAccessAllowed": False, "TcpNoDelay": True,
              "DefaultEncoding": "Utf8", "DicomCheckCalledAet": False,
              "AuthenticationEnabled": False, "StorageCompression": False,
              "DicomModalities": {"scu": [SCU, "127.0.0.1", 104],
                                  "dest": [DEST, "127.0.0.1", dest_port]},
              "DicomAlwaysAllowFind": True, "DicomAlwaysAllowGet": True,
              "DicomAlwaysAllowMove": True,
              "Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    work.mkdir(parents=True, exist_ok=True)
    (work / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen(["Orthanc", str(work / "orthanc.json")], env=DCMTK_ENV,
                            stdout=subprocess.DEVNULL, stderr=open(work / "orthanc.log", "wb"))
    wait_port(port, proc, 600)
    wait_port(http, proc, 600)
    return Target("orthanc", "ORTHANC", proc, port, f"http://127.0.0.1:{http}/dicom-web")


def start_pacs(work: Path, dest_port: int, name: str = "pacs",
               settings: dict[str, str] | None = None) -> Target:
    port, http = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update(PACS_DATA_DIR=str(work), PACS_DICOM_HOST="127.0.0.1", PACS_DICOM_PORT=str(port),
               PACS_HTTP_PORT=str(http), PACS_LOG_LEVEL="WARNING",
               PACS_REMOTE_AES=f"{DEST}@127.0.0.1:{dest_port}", **(settings or {}))
    work.mkdir(parents=True, exist_ok=True)
    log = work / "pacs.log"
    offset = log.stat().st_size if log.exists() else 0  # appended to: this start's lines
    proc = subprocess.Popen([str(Path(sys.executable).parent / "pacs"), "serve"], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
    wait_port(port, proc, 600)
    wait_ready(log, proc, offset, 600)
    return Target(name, "MINIPACS", proc, port, f"http://127.0.0.1:{http}/dicomweb")


PRODUCTION = "pacs-postgres-s3"


def start_production(work: Path, dest_port: int) -> tuple[Target, list[Any]]:
    """The archive on PostgreSQL (fsync on) + S3 (SeaweedFS), for the retrieve benchmark
    only: its target and the servers to stop."""
    pg = start_postgres(work / "pg")
    servers: list[Any] = [pg]
    try:
        durable_postgres(pg)
        s3 = start_seaweedfs(work / "s3")
        servers.append(s3)
        target = start_pacs(work / "pacs", dest_port, PRODUCTION, {
            "PACS_DATABASE_URL": pg.create_database(), "PACS_STORAGE_URL": "s3://bench-retrieve",
            "PACS_S3_ENDPOINT": s3.endpoint, "PACS_S3_ACCESS_KEY": s3.access_key,
            "PACS_S3_SECRET_KEY": s3.secret_key})
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return target, servers


def wait_uploaded(work: Path, timeout: float = 300) -> None:
    """Until the S3 spool under ``work`` is empty: retrieves then read from S3."""
    deadline = time.monotonic() + timeout
    while any(work.rglob("*.dcm")):
        if time.monotonic() > deadline:
            raise RuntimeError(f"objects still in the spool under {work} after {timeout:.0f} s")
        time.sleep(0.5)


def load(work: Path, seed: int, n: int) -> None:
    """Generate the data set and load it into both targets, unless already done in ``work``.

    Each step leaves a marker, so a load cut short (1M studies take hours) goes on from the
    step it was in: the generated files are kept, Orthanc's load is redone, the archive's is
    resumed (what it already holds is answered "already stored")."""
    marker = work / f"loaded-{seed}-{n}"
    if marker.exists():
        print(f"reusing the {n} studies loaded in {work}", flush=True)
        return

    def step(name: str) -> Path:
        return work / f"{name}-{seed}-{n}"

    if work.exists() and not step("generated").exists():
        shutil.rmtree(work)  # another data set, or nothing of this one finished
    work.mkdir(parents=True, exist_ok=True)
    dirs = [work / "files" / f"part{i}" for i in range(4)]
    if step("generated").exists():
        print(f"reusing the {n} studies generated in {work / 'files'}", flush=True)
    else:
        t0 = time.perf_counter()
        dirs = write_studies(work / "files", seed, n, len(dirs))
        print(f"generated {n} studies in {time.perf_counter() - t0:.0f} s", flush=True)
        step("generated").touch()
    files = sorted(p for d in dirs for p in d.iterdir())
    if step("orthanc").exists():
        print("  Orthanc: loaded before", flush=True)
    else:
        shutil.rmtree(work / "orthanc", ignore_errors=True)
        orthanc = start_orthanc(work / "orthanc", free_port())
        done = threading.Event()
        reporter = threading.Thread(target=report_orthanc_load, args=(orthanc, n, done),
                                    daemon=True)
        reporter.start()
        try:  # each storescu pushes n/4 files: at least ~20 per second
            secs = push(orthanc.port, orthanc.aet, dirs, timeout=max(1800, n / 20))
            print(f"  Orthanc: {n} studies via storescu x{len(dirs)} in {secs:.0f} s "
                  f"({n / secs:.0f}/s)", flush=True)
        finally:
            done.set()
            stop(orthanc.proc)
        step("orthanc").touch()
    if (work / "pacs").exists():
        print("  archive: resuming a load cut short", flush=True)
    secs = ingest_in_process(work / "pacs", files, progress=step("archive"))
    print(f"  archive: {n} studies via IngestService x2 in {secs:.0f} s", flush=True)
    retrieve = work / "retrieve"
    shutil.rmtree(retrieve, ignore_errors=True)
    retrieve.mkdir()
    from pacs.demo import generate_bulk

    for i, ds in enumerate(generate_bulk(seed, 1, 100)):
        ds.save_as(retrieve / f"{i:03d}.dcm", enforce_file_format=True)
    shutil.rmtree(work / "files")
    marker.touch()
    for name in ("generated", "orthanc", "archive"):
        step(name).unlink(missing_ok=True)


def load_retrieve_study(targets: list[Target], folder: Path, study: Any) -> None:
    """Store the 100-slice study in both (storescu exits 0 even when stores fail: check)."""
    url = f"/studies/{study.StudyInstanceUID}/series/{study.SeriesInstanceUID}/instances"
    for t in targets:
        for _ in range(3):
            r = httpx.get(t.web + url, timeout=60)
            if r.status_code == 200 and len(r.json()) == 100:
                break
            push(t.port, t.aet, [folder])
            time.sleep(5)  # the archive precomputes the series metadata after ingest
        else:
            raise RuntimeError(f"{t.name}: the retrieve study was not stored (see its log)")


# --- measurements ------------------------------------------------------------------------

def run_tool(args: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(args, env=DCMTK_ENV, capture_output=True, text=True, timeout=1800)
    elapsed = (time.perf_counter() - t0) * 1000
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {proc.stderr[-800:]}")
    return elapsed, proc.stdout + proc.stderr


def findscu(t: Target, filters: dict[str, str], verbose: bool = False,
            quiet: bool = False) -> list[str]:
    """``findscu`` with the bench's keys; ``quiet`` (``-q``): it still receives and decodes
    every response but does not print them (by default it logs each one, ~50 lines)."""
    args = ["/usr/bin/findscu", "-S", "-aet", SCU, "-aec", t.aet, "-k", "QueryRetrieveLevel=STUDY"]
    for k in FIND_KEYS:
        args += ["-k", f"{k}={filters[k]}" if k in filters else k]
    flags = ["-v"] if verbose else ["-q"] if quiet else []
    return args + flags + ["127.0.0.1", str(t.port)]


def echoscu(t: Target) -> list[str]:
    return ["/usr/bin/echoscu", "-aet", SCU, "-aec", t.aet, "127.0.0.1", str(t.port)]


def get_json(client: httpx.Client, url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    r = client.get(url)
    elapsed = (time.perf_counter() - t0) * 1000
    if r.status_code >= 400:
        raise RuntimeError(f"{url}: HTTP {r.status_code}")
    return elapsed, len(r.json()) if r.status_code == 200 else 0


Case = tuple[str, Callable[[int], dict[str, str]], bool, int | None]


def query_cases(n: int, seed: int, everything: bool) -> list[Case]:
    """(label, filters of request i, also by C-FIND, QIDO limit: None for all matches)."""
    rng = random.Random(seed + 7)
    pids = [f"P{rng.randrange(n // 2):08d}" for _ in range(64)]
    cases: list[Case] = [
        ("PatientID", lambda i: {"PatientID": pids[i % len(pids)]}, True, None),
        ("PatientName A*", lambda i: {"PatientName": "A*"}, True, None),
        ("StudyDate one year", lambda i: {"StudyDate": YEAR}, True, None),
        ("first page of all studies (limit=100)", lambda i: {}, False, 100)]
    if everything:
        cases.append(("all studies", lambda i: {}, True, None))
    return cases


def measure_queries(targets: list[Target], n: int, seed: int, repeat: int,
                    repeat_broad: int, everything: bool) -> dict[str, Any]:
    clients = {t.name: httpx.Client(timeout=1800) for t in targets}
    raw = {t.name: RawFind("127.0.0.1", t.port, SCU, t.aet) for t in targets}
    out: dict[str, Any] = {t.name: {} for t in targets}
    counts: dict[str, dict[str, int]] = {t.name: {} for t in targets}

    def wire_find(t: Target, filters: dict[str, str]) -> tuple[float, int]:
        return raw[t.name].find({k: filters.get(k, "") for k in FIND_KEYS})

    # the floor of every findscu figure: a DCMTK tool's start (it loads its data dictionary)
    # and one association, with a C-ECHO in place of the query
    echo = ECHO_LABEL
    for t in targets:
        run_tool(echoscu(t))
        counts[t.name][echo] = 0
    for i in range(repeat):
        for t in targets if i % 2 == 0 else targets[::-1]:
            out[t.name].setdefault(echo, []).append(run_tool(echoscu(t))[0])
    print(f"  {echo}: " + ", ".join(f"{t.name} {statistics.median(out[t.name][echo]):.0f} ms"
                                    for t in targets), flush=True)
    # the association alone, without the tool: what each server spends accepting one
    setup = ASSOCIATION_LABEL
    for t in targets:
        association_ms("127.0.0.1", t.port, SCU, t.aet)
        counts[t.name][setup] = 0
    for i in range(3 * repeat):
        for t in targets if i % 2 == 0 else targets[::-1]:
            out[t.name].setdefault(setup, []).append(
                association_ms("127.0.0.1", t.port, SCU, t.aet))
    print(f"  {setup}: " + ", ".join(f"{t.name} {statistics.median(out[t.name][setup]):.2f} ms"
                                     for t in targets), flush=True)

    for label, make, cfind, limit in query_cases(n, seed, everything):
        broad = label == "all studies" or (n > 20_000 and not label.startswith(("PatientID",
                                                                                 "first")))
        reps = repeat_broad if broad else repeat

        def qido(t: Target, i: int, make: Callable[[int], dict[str, str]] = make,
                 limit: int | None = limit) -> tuple[float, int]:
            params = "&".join([f"{k}={v}" for k, v in make(i).items()]
                              + [f"limit={limit or n}"])
            return get_json(clients[t.name], f"{t.web}/studies?{params}")

        for t in targets:  # warm-up and match counts (C-FIND with -v prints each response)
            if cfind:
                _, text = run_tool(findscu(t, make(0), verbose=True))
                counts[t.name][f"C-FIND {label}"] = len(
                    re.findall(r"Find Response: \d+ \(Pending\)", text))
                counts[t.name][f"C-FIND quiet {label}"] = counts[t.name][f"C-FIND {label}"]
                counts[t.name][f"C-FIND at the wire {label}"] = wire_find(t, make(0))[1]
            counts[t.name][f"QIDO {label}"] = qido(t, 0)[1]
        for i in range(reps):
            for t in targets if i % 2 == 0 else targets[::-1]:  # alternate who goes first
                if cfind:
                    out[t.name].setdefault(f"C-FIND {label}", []).append(
                        run_tool(findscu(t, make(i)))[0])
                    out[t.name].setdefault(f"C-FIND quiet {label}", []).append(
                        run_tool(findscu(t, make(i), quiet=True))[0])
                    out[t.name].setdefault(f"C-FIND at the wire {label}", []).append(
                        wire_find(t, make(i))[0])
                out[t.name].setdefault(f"QIDO {label}", []).append(qido(t, i)[0])
        print(f"  {label}: " + ", ".join(
            f"{t.name} " + " / ".join(f"{k[:-len(label)].strip()} {statistics.median(v):.0f} ms"
                                      for k, v in out[t.name].items() if k.endswith(label))
            for t in targets), flush=True)
    for finder in raw.values():
        finder.close()
    return {"samples": out, "matches": counts}


def measure_retrieve(targets: list[Target], study: Any, repeat: int,
                     dest_port: int) -> dict[str, Any]:
    s, se = study.StudyInstanceUID, study.SeriesInstanceUID
    clients = {t.name: httpx.Client(timeout=600) for t in targets}
    out: dict[str, dict[str, list[float]]] = {t.name: {} for t in targets}
    sizes: dict[str, dict[str, int]] = {t.name: {} for t in targets}

    study_keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={s}"]
    # one instance: the fixed cost of a retrieve (associations, look-up, the answer)
    one_keys = ["-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={s}",
                "-k", f"SeriesInstanceUID={se}", "-k", f"SOPInstanceUID={study.SOPInstanceUID}"]

    def move(t: Target, keys: list[str]) -> float:
        ms, text = run_tool(["/usr/bin/movescu", "-S", "-aet", SCU, "-aec", t.aet, "-aem", DEST,
                             *keys, "127.0.0.1", str(t.port)])
        return ms

    def get(t: Target, keys: list[str]) -> float:
        ms, _ = run_tool(["/usr/bin/getscu", "-S", "-aet", SCU, "-aec", t.aet, "--ignore",
                          *keys, "127.0.0.1", str(t.port)])
        return ms

    def wado(t: Target, path: str, headers: dict[str, str] | None, key: str) -> float:
        t0 = time.perf_counter()
        size = 0
        with clients[t.name].stream("GET", f"{t.web}/studies/{s}/series/{se}{path}",
                                    headers=headers) as r:
            if r.status_code >= 400:
                raise RuntimeError(f"{t.name} {path}: HTTP {r.status_code}")
            for chunk in r.iter_bytes():
                size += len(chunk)
        sizes[t.name][key] = size
        return (time.perf_counter() - t0) * 1000

    for i in range(repeat + 1):  # the first round warms up (and is dropped)
        for t in targets if i % 2 == 0 else targets[::-1]:
            row = {"C-MOVE study (100 inst)": [move(t, study_keys)],
                   "C-GET study (100 inst)": [get(t, study_keys)],
                   "C-MOVE one instance": [move(t, one_keys)],
                   "C-GET one instance": [get(t, one_keys)],
                   # cheap next to a C-MOVE: several per round, for a steadier median
                   "WADO-RS series (100 inst)": [wado(t, "", STORED, "series")
                                                 for _ in range(WADO_PER_ROUND)],
                   "WADO-RS series metadata": [wado(t, "/metadata", None, "metadata")
                                               for _ in range(WADO_PER_ROUND)]}
            if i:
                for k, v in row.items():
                    out[t.name].setdefault(k, []).extend(v)
    return {"samples": out, "bytes": sizes}


# --- report ------------------------------------------------------------------------------

def header(title: str, what: str) -> list[str]:
    import pydicom
    import pynetdicom

    dcmtk = subprocess.run(["/usr/bin/findscu", "--version"], capture_output=True, text=True)
    dcmtk_v = (re.search(r"v(\d+\.\d+\.\d+)", dcmtk.stdout) or re.search(r"", "")).group(0)
    return [f"# {title} ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)", "",
            f"Machine: {platform.platform()}, {os.cpu_count()} cores (shared: other benchmarks "
            f"and test runs may have been running), Python {platform.python_version()}, "
            f"pynetdicom {pynetdicom.__version__}, pydicom {pydicom.__version__}; Orthanc "
            f"{orthanc_version()} (SQLite index) with its DICOMweb plugin; DCMTK {dcmtk_v} "
            f"tools with TCP_NODELAY=1; archive on SQLite + folder (`pacs serve`, default settings). "
            f"{what}", ""]


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def table(samples: dict[str, dict[str, list[float]]], extra: Callable[[str], list[str]],
          extra_heads: list[str]) -> list[str]:
    med = {t: {k: statistics.median(v) for k, v in r.items()} for t, r in samples.items()}
    lines = ["| request | mini-PACS (ms) | Orthanc (ms) | ratio us/Orthanc | "
             + " | ".join(extra_heads) + " |",
             "|---|---|---|---|" + "---|" * len(extra_heads)]
    for label in med["pacs"]:
        ours, theirs = med["pacs"][label], med["orthanc"][label]
        lines.append(f"| {label} | {_ms(ours)} | {_ms(theirs)} | {ours / theirs:.2f}x | "
                     + " | ".join(extra(label)) + " |")
    return lines


def report_queries(data: dict[str, Any], n: int, repeat: int) -> None:
    samples, counts = data["samples"], data["matches"]
    name = "query-latest" if n == 10_000 else f"query-{n // 1000}k"
    base = base_matches = None
    if n != 10_000 and (RESULTS / "query-latest.json").exists():
        small = json.loads((RESULTS / "query-latest.json").read_text())
        base, base_matches = small["medians"]["pacs"], small["matches"]["pacs"]
    med = {t: {k: statistics.median(v) for k, v in r.items()} for t, r in samples.items()}

    def extra(label: str) -> list[str]:
        cells = [f"{counts['pacs'][label]} / {counts['orthanc'][label]}"
                 if label not in (ECHO_LABEL, ASSOCIATION_LABEL) else "-"]
        if base is not None and base_matches is not None:
            if label not in base:
                return [*cells, "-", "-"]
            growth = med["pacs"][label] / base[label]
            per_match = growth / max(1, counts["pacs"][label]) * max(1, base_matches[label])
            cells += [f"{growth:.2f}x", f"{per_match:.2f}x"]
        return cells

    broad = (" (fewer for all studies and, above 20k studies, the broad queries: see the "
             "JSON)")
    heads = ["matches (us / Orthanc)"] + ([f"ours {n // 1000}k / ours 10k",
                                          "same, per match"] if base else [])
    lines = header(f"Query benchmark, {n} studies",
                   f"{n} studies of one 16x16 instance (two per patient, ~9 % of names start "
                   f"with A, dates over 12 years, {YEAR} ~8 %); medians of {repeat} requests "
                   f"per target{broad}, alternating targets. C-FIND: wall time of `findscu` (a new "
                   "process and association each time, ~10-20 ms of the figure, and the parsing "
                   "of every response, which it logs: ~50 lines each) with keys "
                   f"{', '.join(FIND_KEYS)}; C-FIND quiet: the same with `findscu -q` (it still "
                   "receives and decodes every response, without printing them); "
                   f"{ECHO_LABEL}: `echoscu`, the floor of every findscu figure (a DCMTK tool's "
                   f"start and one association); {ASSOCIATION_LABEL}: the association alone, "
                   "timed by our raw client (bench/rawfind.py) from opening the connection to "
                   "the accept, then released; C-FIND at the wire: the same query on one open "
                   "association, first byte of the request to last byte of the final response "
                   "(bench/rawfind.py: the server's time without findscu's); QIDO-RS: "
                   f"`/studies?...&limit={n}` (every match; our default cap is 10,000) or "
                   "`limit=100`, with the default "
                   "attributes, keep-alive client, JSON parsed.")
    lines += table(samples, extra, heads)
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    (RESULTS / f"{name}.json").write_text(json.dumps(
        {"studies": n, "date": datetime.now(UTC).isoformat(), "machine": platform.platform(),
         "orthanc": orthanc_version(), "samples": samples, "medians": med, "matches": counts},
        indent=2))


def report_retrieve(data: dict[str, Any], repeat: int) -> None:
    samples = data["samples"]
    lines = header("Retrieve benchmark",
                   "One CT study of 100 slices 512x512 (16-bit, ~51 MB), stored by `storescu`; "
                   f"medians of {repeat} rounds, alternating targets. C-MOVE: `movescu` to a "
                   "DCMTK `storescp --ignore`; C-GET: `getscu --ignore` (the study, then one "
                   "of its instances: a retrieve's fixed cost, each tool's start included); "
                   "WADO-RS: the series as "
                   "multipart/related application/dicom (stored syntax), and its metadata "
                   f"(warm), {WADO_PER_ROUND} requests per round, keep-alive client. For "
                   "throughput, ratio < 1 means faster than Orthanc. The last columns: the "
                   "archive on PostgreSQL (fsync on) + S3 (SeaweedFS on the same two cores), "
                   "every object read from S3 (its upload spool empty).")
    med = {t: {k: statistics.median(v) for k, v in r.items()} for t, r in samples.items()}

    def extra(label: str) -> list[str]:
        n = 1 if "one instance" in label else 100
        cells = [f"{n / med['pacs'][label] * 1000:.0f} / "
                 f"{n / med['orthanc'][label] * 1000:.0f}"]
        if PRODUCTION in med:
            ours = med[PRODUCTION][label]
            cells += [f"{ours:.1f}", f"{ours / med['orthanc'][label]:.2f}x"]
        return cells

    heads = ["instances/s (us / Orthanc)"]
    if PRODUCTION in med:
        heads += ["mini-PACS on PostgreSQL + S3 (ms)", "ratio to Orthanc"]
    lines += table(samples, extra, heads)
    text = "\n".join(lines) + "\n"
    print(text)
    (RESULTS / "retrieve-latest.md").write_text(text)
    (RESULTS / "retrieve-latest.json").write_text(json.dumps(
        {"date": datetime.now(UTC).isoformat(), "machine": platform.platform(),
         "orthanc": orthanc_version(), "samples": samples, "medians": med,
         "bytes": data["bytes"]}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--repeat-broad", type=int, default=3,
                        help="repeats of all studies, and of the broad queries above 20k studies")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--all", action="store_true",
                        help="also all studies (every match) above 20k studies: long")
    parser.add_argument("--work", type=Path, help="keep the loaded targets here and reuse them")
    parser.add_argument("--no-retrieve", action="store_true")
    parser.add_argument("--retrieve-only", action="store_true",
                        help="only C-MOVE, C-GET and WADO-RS (keeps query-latest as it is)")
    parser.add_argument("--load-only", action="store_true", help="load --work and stop")
    parser.add_argument("--no-production", action="store_true",
                        help="retrieve from the archive on SQLite + folder only (not also on "
                             "PostgreSQL + S3)")
    args = parser.parse_args()
    if not PLUGIN.exists() or shutil.which("Orthanc") is None:
        raise SystemExit("needs Debian's orthanc and orthanc-dicomweb (make bench installs them)")
    work = args.work or Path(tempfile.mkdtemp(prefix="pacs-bench-query-")) / "data"
    work = work.resolve()
    load(work, args.seed, args.studies)
    if args.load_only:
        return
    dest_port = free_port()
    dest = subprocess.Popen(["/usr/bin/storescp", "--fork", "--ignore", "-aet", DEST,
                             str(dest_port)], env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    targets: list[Target] = []
    servers: list[Any] = []
    production: Path | None = None
    try:
        wait_port(dest_port, dest)
        targets.append(start_pacs(work / "pacs", dest_port))
        targets.append(start_orthanc(work / "orthanc", dest_port))
        if not args.retrieve_only:
            print("measuring queries", flush=True)
            queries = measure_queries(targets, args.studies, args.seed, args.repeat,
                                      args.repeat_broad, args.studies <= 20_000 or args.all)
            report_queries(queries, args.studies, args.repeat)
        if not args.no_retrieve:
            import pydicom

            files = sorted((work / "retrieve").iterdir())
            study = pydicom.dcmread(files[0], stop_before_pixels=True)
            if not args.no_production:
                production = Path(tempfile.mkdtemp(prefix="pacs-bench-retrieve-"))
                target, servers = start_production(production, dest_port)
                targets.append(target)
            load_retrieve_study(targets, work / "retrieve", study)
            if production is not None:
                wait_uploaded(production / "pacs")
            print("measuring retrieve", flush=True)
            report_retrieve(measure_retrieve(targets, study, args.repeat, dest_port), args.repeat)
    finally:
        for t in targets:
            stop(t.proc)
        stop(dest)
        for server in servers:
            server.stop()
        if production is not None:
            shutil.rmtree(production, ignore_errors=True)
    if args.work is None:
        shutil.rmtree(work.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
