"""C-STORE ingest benchmark: DCMTK ``storescu`` pushing the same seeded CT data set into
DCMTK ``storescp`` (the ceiling: no index), Orthanc (Debian package) and our archive on the
embedded pair and on PostgreSQL + S3 (SeaweedFS), alternating targets, with 1 and 4
associations. Prints a table of medians with ratios to Orthanc, writes JSON and Markdown.

Run with ``make bench`` (installs orthanc/dcmtk when root). Options: ``--instances``,
``--rounds``, ``--quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.infra import free_port, start_postgres, start_seaweedfs  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Target:
    name: str
    ae_title: str
    start: Callable[[Path], tuple[subprocess.Popen[bytes], int]]


def start_storescp(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    out = work / "out"
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["/usr/bin/storescp", "--fork", "-aet", "STORESCP", "-od", str(out),
                             "-pm", "+B", str(port)], env=DCMTK_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc, port


def start_orthanc(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port, http = free_port(), free_port()
    config = {
        "Name": "bench", "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"), "DicomAet": "ORTHANC", "DicomPort": port,
        "HttpPort": http, "RemoteAccessAllowed": False, "TcpNoDelay": True,
        "DefaultEncoding": "Utf8", "DicomCheckCalledAet": False, "Plugins": [],
        "StorageCompression": False, "HttpServerEnabled": True,
    }
    cfg = work / "orthanc.json"
    cfg.write_text(json.dumps(config))
    # Orthanc speaks DICOM through DCMTK, which reads TCP_NODELAY from the environment
    proc = subprocess.Popen(["Orthanc", str(cfg)], env=DCMTK_ENV, stdout=subprocess.DEVNULL,
                            stderr=open(work / "orthanc.log", "wb"))
    wait_port(port, proc)
    return proc, port


def pacs_starter(extra_env: dict[str, str]) -> Callable[[Path], tuple[subprocess.Popen[bytes], int]]:
    def start(work: Path) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
        env.update(PACS_DATA_DIR=str(work / "data"), PACS_DICOM_HOST="127.0.0.1",
                   PACS_DICOM_PORT=str(port), PACS_HTTP_PORT="0", PACS_LOG_LEVEL="WARNING", **extra_env)
        proc = subprocess.Popen([str(Path(sys.executable).parent / "pacs"), "serve"], env=env,
                                stdout=subprocess.DEVNULL, stderr=open(work / "pacs.log", "wb"))
        wait_port(port, proc)
        return proc, port
    return start


def push(port: int, ae_title: str, folders: list[Path]) -> float:
    """storescu one association per folder, all at once; seconds until all finished."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["/usr/bin/storescu", "-aec", ae_title, "-R", "+sd", "-nh",
                               "127.0.0.1", str(port), str(folder)], env=DCMTK_ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for folder in folders]
    for p in procs:
        _, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - t0


def make_data(work: Path, instances: int, parts: int) -> list[Path]:
    from pacs.demo import generate_bulk

    folders = [work / f"part{n}" for n in range(parts)]
    for f in folders:
        f.mkdir(parents=True)
    per_study = 100
    for i, ds in enumerate(generate_bulk(2026, max(1, instances // per_study), per_study)):
        ds.save_as(folders[i % parts] / f"{i:06d}.dcm", enforce_file_format=True)
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="200 instances, 1 round")
    args = parser.parse_args()
    if args.quick:
        args.instances, args.rounds = 200, 1
    work = Path(tempfile.mkdtemp(prefix="pacs-bench-"))
    print(f"generating {args.instances} CT instances (512x512) in {work}", flush=True)
    data1 = make_data(work / "data1", args.instances, 1)
    data4 = make_data(work / "data4", args.instances, 4)
    pg = start_postgres(work / "pg")
    s3 = start_seaweedfs(work / "s3")
    targets = [
        Target("storescp", "STORESCP", start_storescp),
        Target("orthanc", "ORTHANC", start_orthanc),
        Target("pacs-embedded", "MINIPACS", pacs_starter({"PACS_DICOM_WORKERS": "2"})),
    ]
    if shutil.which("Orthanc") is None:
        print("Orthanc not installed (apt-get install orthanc): skipped", flush=True)
        targets = [t for t in targets if t.name != "orthanc"]
    results: dict[str, dict[str, list[float]]] = {t.name: {"1": [], "4": []} for t in targets}
    results["pacs-postgres-s3"] = {"1": [], "4": []}
    try:
        for rnd in range(args.rounds):
            for assoc, folders in (("1", data1), ("4", data4)):
                run_targets = list(targets)
                db = pg.create_database()
                bucket = f"bench-{rnd}-{assoc}"
                run_targets.append(Target("pacs-postgres-s3", "MINIPACS", pacs_starter({
                    "PACS_DICOM_WORKERS": "2", "PACS_DATABASE_URL": db,
                    "PACS_STORAGE_URL": f"s3://{bucket}", "PACS_S3_ENDPOINT": s3.endpoint,
                    "PACS_S3_ACCESS_KEY": s3.access_key, "PACS_S3_SECRET_KEY": s3.secret_key})))
                for target in run_targets:
                    tdir = work / f"{target.name}-{rnd}-{assoc}"
                    tdir.mkdir()
                    proc, port = target.start(tdir)
                    try:
                        secs = push(port, target.ae_title, folders)
                    finally:
                        stop(proc)
                    rate = args.instances / secs
                    results[target.name][assoc].append(rate)
                    print(f"round {rnd + 1} {assoc} assoc {target.name:18s} {rate:7.1f} inst/s",
                          flush=True)
                    shutil.rmtree(tdir, ignore_errors=True)
    finally:
        s3.stop()
        pg.stop()
    report(results, args)
    shutil.rmtree(work, ignore_errors=True)


def report(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    med = {n: {a: statistics.median(v) for a, v in r.items() if v} for n, r in results.items()}
    ref = med.get("orthanc", {})
    lines = [f"# Ingest benchmark ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)", "",
             f"Machine: {platform.platform()}, {os.cpu_count()} cores, Python "
             f"{platform.python_version()}; {args.instances} CT instances 512x512, "
             f"{args.rounds} round(s), medians; storescu with TCP_NODELAY=1.", "",
             "| target | 1 assoc (inst/s) | ratio to Orthanc | 4 assoc (inst/s) | ratio to Orthanc |",
             "|---|---|---|---|---|"]
    for name, r in med.items():
        cells = []
        for a in ("1", "4"):
            v = r.get(a)
            ratio = f"{v / ref[a]:.2f}x" if v and ref.get(a) else "-"
            cells += [f"{v:.1f}" if v else "-", ratio]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.md").write_text(text)
    (RESULTS / "latest.json").write_text(json.dumps(
        {"results": results, "medians": med, "instances": args.instances,
         "rounds": args.rounds, "machine": platform.platform()}, indent=2))


if __name__ == "__main__":
    main()
