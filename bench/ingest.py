"""C-STORE ingest benchmark: DCMTK ``storescu`` pushing the same seeded CT data set into
DCMTK ``storescp`` (the ceiling: no index), Orthanc (Debian package) and our archive on the
embedded pair and on PostgreSQL + S3 (SeaweedFS), alternating targets, with 1 and 4
associations, and with one association per instance (:mod:`bench.rawstore`, the first
``--per-instance`` objects: senders that associate for each image pay the set-up and release
each time). Prints a table of medians with ratios to Orthanc, writes JSON and Markdown.

Our archive runs as ``pacs serve`` with its deployment defaults (one DICOM process per core,
``PACS_MAX_PDU``), and the benchmark waits until every worker process accepts associations.
PostgreSQL runs with ``fsync``/``synchronous_commit`` on, as in production. The resident
memory of our archive's processes (all of them, summed) is sampled during each push. The
targets' work folders are removed at the end of the run, not between pushes (see
:data:`RECENTLY_DELETED`), unless the disk runs short.

Run with ``make bench`` (installs orthanc/dcmtk when root). Options: ``--instances``,
``--rounds``, ``--quick``, ``--targets``, ``--assoc``, ``--per-instance``, ``--save-as``
(``make bench-memory``: ``--instances 10000 --rounds 1 --assoc 4 --targets
pacs-embedded,pacs-postgres-s3 --save-as ingest-10k-memory``, RSS while 10,000 instances go
in), ``--pacs-env KEY=VALUE`` (experiments).

Scaling (``--preloaded DIR``, run by ``make bench-scale``): DIR is a work folder of
``bench/query.py`` holding Orthanc and the archive loaded with N studies; each round pushes
the same data into an empty and into a copy of the loaded Orthanc and archive (the index
copied, the stored objects hard-linked), alternating, and reports each one's rate in the
loaded archive against its rate in the empty one (goal: within 10 %).
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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.infra import (  # noqa: E402
    PostgresServer,
    SeaweedServer,
    free_port,
    start_postgres,
    start_seaweedfs,
)

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


def wait_ready(log: Path, proc: subprocess.Popen[bytes], offset: int = 0,
               timeout: float = 120) -> None:
    """Wait for ``pacs serve``'s "ready" line in ``log`` (after byte ``offset``): printed
    once every DICOM process accepts associations and the HTTP service has warmed up. Its
    ports open earlier; requests in between measure the start (first C-ECHOs 50-300 ms)."""
    deadline = time.monotonic() + timeout
    while b"ready" not in log.read_bytes()[offset:]:
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_bytes()[-500:].decode(errors="replace")
            raise RuntimeError(f"pacs serve did not get ready: {tail}")
        time.sleep(0.1)


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
    # copies a loaded archive into the target's work folder before it starts (scaling)
    prepare: Callable[[Path], None] | None = None


# ext4 without a journal (as on our machines) skips, when it allocates an inode, every free
# inode whose deletion is less than 60 s old (``recently_deleted``), reading each one's
# inode-table block: right after ~1,000 files are removed, creating a file costs ~0.3 ms
# of kernel CPU more (13 % of the archive's CPU in a profile of a four-association push).
# An archive seldom deletes, so the pushes must not follow the benchmark's own deletions.
RECENTLY_DELETED = 65.0


class Trash:
    """Work folders of finished pushes, removed only at the end of the run, or earlier
    (followed by a pause of :data:`RECENTLY_DELETED` seconds) when the disk runs short."""

    def __init__(self, work: Path, needed: int) -> None:
        self.work, self.needed = work, needed  # bytes a push may need
        self.folders: list[Path] = []

    def add(self, folder: Path) -> None:
        self.folders.append(folder)

    def make_room(self) -> None:
        """Before a push: remove the kept folders if less than four pushes' room is left."""
        if not self.folders or shutil.disk_usage(self.work).free > 4 * self.needed + (2 << 30):
            return
        print(f"disk short: removing {len(self.folders)} finished work folder(s), then "
              f"{RECENTLY_DELETED:.0f} s for the file system to forget them", flush=True)
        self.empty()
        os.sync()
        time.sleep(RECENTLY_DELETED)

    def empty(self) -> None:
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)
        self.folders = []


def preloaded_copy(source: Path, dest_name: str, linked: str,
                   skip: tuple[str, ...] = ()) -> Callable[[Path], None]:
    """Copy a loaded target's folder into ``work/dest_name``: everything copied (an index is
    written to in place: a hard link would change the loaded original), except the object
    folder ``linked``, hard-linked (stored objects are never modified, new ones are new
    files in the copy's own folders)."""
    def prepare(work: Path) -> None:
        dest = work / dest_name
        dest.mkdir(parents=True, exist_ok=True)
        for entry in source.iterdir():
            if entry.name in skip:
                continue
            if entry.name == linked:
                subprocess.run(["cp", "-al", str(entry), str(dest / entry.name)], check=True)
            elif entry.is_dir():
                shutil.copytree(entry, dest / entry.name)
            else:
                shutil.copy2(entry, dest / entry.name)
    return prepare


def loaded_studies(folder: Path) -> int:
    """Number of studies a ``bench/query.py`` work folder holds (its ``loaded-<seed>-<n>``)."""
    markers = sorted(folder.glob("loaded-*-*"))
    if not markers or not (folder / "pacs").is_dir() or not (folder / "orthanc").is_dir():
        raise SystemExit(f"{folder} is not a loaded bench/query.py work folder "
                         "(run make bench-scale, or bench/query.py --work DIR --load-only)")
    return int(markers[0].name.rsplit("-", 1)[1])


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
        log = work / "pacs.log"
        proc = subprocess.Popen([str(Path(sys.executable).parent / "pacs"), "serve"], env=env,
                                stdout=subprocess.DEVNULL, stderr=open(log, "wb"))
        wait_port(port, proc)
        wait_ready(log, proc)
        return proc, port
    return start


# PostgreSQL + S3 (SeaweedFS on this machine) twice: uploading at once (the default), and
# with uploads deferred while stores arrive, as docker-compose.yml runs it (MinIO beside it)
S3_TARGETS = {"pacs-postgres-s3": {},
              "pacs-postgres-s3-deferred": {"PACS_S3_UPLOAD_DEFER": "30"}}


def in_s3(name: str) -> str:
    """The results row of an S3 target's rate until every object is in S3."""
    return f"{name}, until all in S3"


def wait_uploaded(spool: Path, timeout: float = 900.0) -> float:
    """Seconds until the S3 spool is empty (every acknowledged object uploaded)."""
    start = time.perf_counter()
    while any(p.is_file() and not p.name.startswith(".") for p in spool.rglob("*")):
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"uploads from {spool} not done after {timeout:.0f} s: see "
                               f"{spool.parent.parent / 'pacs.log'} and the S3 server's log")
        time.sleep(0.05)
    return time.perf_counter() - start


def remove_bucket(s3: SeaweedServer, bucket: str) -> None:
    """Remove a finished push's bucket and its objects. SeaweedFS gives each bucket volumes
    of its own, as many as the free disk allows: keeping 30 pushes' buckets ran a run on a
    disk ~80 % full out of them, and the uploads of the next push were refused ("no free
    volumes left") until the wait for them timed out."""
    try:
        s3.client().remove_bucket(bucket)  # SeaweedFS removes a bucket with its content
    except Exception as exc:  # noqa: BLE001 - the run goes on; the disk may fill sooner
        print(f"could not remove bucket {bucket}: {exc}", flush=True)


def durable_postgres(pg: PostgresServer) -> None:
    """Restart the test cluster (started with fsync off) with PostgreSQL's durable defaults."""
    pg.stop()
    options = (f"-c listen_addresses=127.0.0.1 -p {pg.port} -k {pg.base_dir}"
               " -c fsync=on -c synchronous_commit=on -c full_page_writes=on")
    result = pg._pg_ctl("-l", str(pg.log_path), "-w", "-t", "60", "-o", options, "start")
    if result.returncode != 0:
        raise RuntimeError(f"PostgreSQL restart failed: {result.stderr}")
    pg.running = True


def _tree_rss(pid: int) -> int:
    """Resident set size (bytes) of ``pid`` and all its descendants, from /proc."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return total


class RssSampler:
    """Samples the summed RSS of a process tree every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append(_tree_rss(self.pid))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(_tree_rss(self.pid))

    def summary(self) -> dict[str, float]:
        mib = [s / 2**20 for s in self.samples if s] or [0.0]
        return {"start_mib": round(mib[0], 1), "middle_mib": round(mib[len(mib) // 2], 1),
                "end_mib": round(mib[-1], 1), "peak_mib": round(max(mib), 1)}


def push(port: int, ae_title: str, folders: list[Path], timeout: float = 1800) -> float:
    """storescu one association per folder, all at once; seconds until all finished (each
    within ``timeout`` seconds)."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["/usr/bin/storescu", "-aec", ae_title, "-R", "+sd", "-nh",
                               "127.0.0.1", str(port), str(folder)], env=DCMTK_ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for folder in folders]
    for p in procs:
        _, err = p.communicate(timeout=timeout)
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


ALL_TARGETS = ("storescp", "orthanc", "pacs-embedded", *S3_TARGETS)
EACH = "each"  # one association per instance (bench.rawstore)
MODES = ("1", "4", EACH)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="200 instances, 1 round")
    parser.add_argument("--targets", default=",".join(ALL_TARGETS),
                        help="comma-separated subset of " + ", ".join(ALL_TARGETS))
    parser.add_argument("--assoc", default="1,4,each",
                        help="what to run: 1 and/or 4 storescu associations, 'each': one "
                             "association per instance")
    parser.add_argument("--per-instance", type=int, default=500, metavar="N",
                        help="objects sent with one association each (default: 500)")
    parser.add_argument("--pacs-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra PACS_* setting for our archive (experiments)")
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results")
    parser.add_argument("--save-as", default="latest", metavar="STEM",
                        help="write bench/results/STEM.md and .json (default: latest)")
    parser.add_argument("--preloaded", type=Path, metavar="DIR",
                        help="scaling: also push into copies of the Orthanc and archive loaded "
                             "in DIR by bench/query.py --work DIR (orthanc and pacs-embedded only)")
    args = parser.parse_args()
    if args.quick:
        args.instances, args.rounds = 200, 1
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    if args.preloaded is not None:  # scaling: the targets bench/query.py loads
        wanted = [t for t in wanted if t in ("orthanc", "pacs-embedded")]
    assocs = [a.strip() for a in args.assoc.split(",") if a.strip() in MODES]
    if args.preloaded is not None:  # scaling compares storescu pushes
        assocs = [a for a in assocs if a != EACH]
    extra = dict(item.split("=", 1) for item in args.pacs_env)
    work = Path(tempfile.mkdtemp(prefix="pacs-bench-"))
    print(f"generating {args.instances} CT instances (512x512) in {work}", flush=True)
    data = {a: make_data(work / f"data{a}", args.instances, int(a))
            for a in assocs if a != EACH}
    singles: list[Any] = []
    if EACH in assocs:
        from bench.rawstore import load

        files = sorted((data.get("1") or make_data(work / "data1", args.instances, 1))[0]
                       .glob("*.dcm"))
        singles = [load(path) for path in files[:args.per_instance]]
    counts = {a: len(singles) if a == EACH else args.instances for a in assocs}
    pg = s3 = None
    if any(name in wanted for name in S3_TARGETS):
        pg = start_postgres(work / "pg")
        durable_postgres(pg)
        s3 = start_seaweedfs(work / "s3")
    targets = [
        Target("storescp", "STORESCP", start_storescp),
        Target("orthanc", "ORTHANC", start_orthanc),
        Target("pacs-embedded", "MINIPACS", pacs_starter(extra)),
    ]
    if shutil.which("Orthanc") is None:
        print("Orthanc not installed (apt-get install orthanc): skipped", flush=True)
        wanted = [t for t in wanted if t != "orthanc"]
    targets = [t for t in targets if t.name in wanted]
    args.loaded = 0
    if args.preloaded is not None:
        args.loaded = loaded_studies(args.preloaded)
        by_name = {t.name: t for t in targets}
        label = f"@{args.loaded // 1000}k"
        if "orthanc" in by_name:
            targets.append(Target("orthanc" + label, "ORTHANC", start_orthanc,
                                  preloaded_copy(args.preloaded / "orthanc", ".", "storage",
                                                 skip=("orthanc.json", "orthanc.log"))))
        if "pacs-embedded" in by_name:
            targets.append(Target("pacs-embedded" + label, "MINIPACS", pacs_starter(extra),
                                  preloaded_copy(args.preloaded / "pacs", "data", "objects",
                                                 skip=("tmp", "pacs.log"))))
        wanted = [t.name for t in targets]
    results: dict[str, dict[str, list[float]]] = {n: {a: [] for a in assocs} for n in wanted}
    for name in S3_TARGETS:
        if name in wanted:
            results[in_s3(name)] = {a: [] for a in assocs}
    memory: dict[str, dict[str, list[dict[str, float]]]] = {
        n: {a: [] for a in assocs} for n in wanted if n.startswith("pacs")}
    trash = Trash(work, sum(p.stat().st_size for p in (work / "data1").rglob("*.dcm"))
                  if (work / "data1").exists()
                  else sum(p.stat().st_size for p in (work / "data4").rglob("*.dcm")))
    try:
        for rnd in range(args.rounds):
            for assoc in assocs:
                run_targets = list(targets)
                buckets: dict[str, str] = {}
                for n, (name, env) in enumerate(S3_TARGETS.items()):
                    if pg is None or s3 is None or name not in wanted:
                        continue
                    buckets[name] = f"bench-{rnd}-{assoc}-{n}"
                    run_targets.append(Target(name, "MINIPACS", pacs_starter({
                        "PACS_DATABASE_URL": pg.create_database(),
                        "PACS_STORAGE_URL": f"s3://{buckets[name]}",
                        "PACS_S3_ENDPOINT": s3.endpoint, "PACS_S3_ACCESS_KEY": s3.access_key,
                        "PACS_S3_SECRET_KEY": s3.secret_key, **env, **extra})))
                for target in run_targets:
                    tdir = work / f"{target.name}-{rnd}-{assoc}"
                    trash.make_room()
                    tdir.mkdir()
                    if target.prepare is not None:
                        target.prepare(tdir)
                    proc, port = target.start(tdir)
                    # the previous push's (or copy's) dirty pages are written back now, not
                    # during this one (storescp and Orthanc do not fsync their files)
                    os.sync()
                    sampler = RssSampler(proc.pid)
                    drained = None
                    try:
                        with sampler:
                            if assoc == EACH:
                                from bench.rawstore import push_per_association

                                secs = push_per_association(port, target.ae_title, singles)
                            else:
                                secs = push(port, target.ae_title, data[assoc])
                        if target.name in S3_TARGETS:
                            drained = secs + wait_uploaded(tdir / "data" / "spool")
                    finally:
                        stop(proc)
                    if s3 is not None and target.name in buckets:
                        remove_bucket(s3, buckets[target.name])
                    count = counts[assoc]
                    rate = count / secs
                    results[target.name][assoc].append(rate)
                    line = f"round {rnd + 1} {assoc} assoc {target.name:25s} {rate:7.1f} inst/s"
                    if drained is not None:
                        results[in_s3(target.name)][assoc].append(count / drained)
                        line += f" ({count / drained:.1f} inst/s until all in S3)"
                    if target.name in memory:
                        rss = sampler.summary()
                        memory[target.name][assoc].append(rss)
                        line += (f"  RSS start {rss['start_mib']:.0f} / end {rss['end_mib']:.0f}"
                                 f" / peak {rss['peak_mib']:.0f} MiB")
                    print(line, flush=True)
                    trash.add(tdir)
    finally:
        trash.empty()
        if s3 is not None:
            s3.stop()
        if pg is not None:
            pg.stop()
    if args.preloaded is not None:
        report_scaling(results, args)
    else:
        report(results, memory, args)
    shutil.rmtree(work, ignore_errors=True)


def report(results: dict[str, dict[str, list[float]]],
           memory: dict[str, dict[str, list[dict[str, float]]]], args: argparse.Namespace) -> None:
    med = {n: {a: statistics.median(v) for a, v in r.items() if v} for n, r in results.items()}
    ref = med.get("orthanc", {})
    lines = [f"# Ingest benchmark ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)", "",
             f"Machine: {platform.platform()}, {os.cpu_count()} cores, Python "
             f"{platform.python_version()}; {args.instances} CT instances 512x512, "
             f"{args.rounds} round(s), medians; storescu with TCP_NODELAY=1. Our archive: "
             f"`pacs serve` defaults{' + ' + ' '.join(args.pacs_env) if args.pacs_env else ''}."
             + (f" One association per instance: the first {args.per_instance} instances, "
                "one after the other, each with an association of its own (`bench/rawstore.py`)."
                if any(EACH in r for r in med.values()) else ""),
             "",
             "| target | 1 assoc (inst/s) | ratio to Orthanc | 4 assoc (inst/s) | ratio to Orthanc "
             "| 1 assoc per instance (inst/s) | ratio to Orthanc |",
             "|---|---|---|---|---|---|---|"]
    for name, r in med.items():
        cells = []
        for a in MODES:
            v = r.get(a)
            ratio = f"{v / ref[a]:.2f}x" if v and ref.get(a) else "-"
            cells += [f"{v:.1f}" if v else "-", ratio]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    rounds = results.get("orthanc", {})
    ours = results.get("pacs-embedded", {})
    per_round = [("1 assoc per instance " if a == EACH else f"{a} assoc ")
                 + ", ".join(f"{u / o:.2f}x" for u, o in zip(ours[a], rounds[a], strict=True))
                 for a in MODES if ours.get(a) and rounds.get(a)]
    if per_round and args.rounds > 1:  # how far apart the rounds are on this machine
        lines += ["", "pacs-embedded against Orthanc round by round (each round pushes to "
                  "every target in turn): " + "; ".join(per_round) + "."]
    folder = med.get("pacs-embedded", {})
    for name, env in S3_TARGETS.items():
        s3, drained = med.get(name, {}), med.get(in_s3(name), {})
        if not (folder and s3):
            continue
        how = (" with " + " ".join(f"{k}={v}" for k, v in env.items())) if env else ""
        lines += ["", f"S3 (with PostgreSQL){how} against folder (with SQLite), time for the "
                  "same push (goal <= 1.5x): " + ", ".join(
                      f"{a} assoc {folder[a] / s3[a]:.2f}x acknowledged"
                      + (f", {folder[a] / drained[a]:.2f}x until all in S3"
                         if drained.get(a) else "")
                      for a in ("1", "4") if folder.get(a) and s3.get(a)) + "."]
    if any(name in med for name in S3_TARGETS):
        lines += ["", "The archive acknowledges once an object is fsynced in its local spool "
                  "and indexed; a process of its own at a lower priority uploads the spool "
                  "(`-deferred`: not while stores keep arriving, up to 30 s, as "
                  "docker-compose.yml runs it with MinIO on the same machine)."]
    if any(runs for per in memory.values() for runs in per.values()):
        lines += ["", "Resident memory of the archive (all its processes, MiB) during each push:",
                  "", "| target | assoc | start | half-way | end | peak |",
                  "|---|---|---|---|---|---|"]
        for name, per in memory.items():
            for a, runs in per.items():
                for rss in runs:
                    lines.append(f"| {name} | {a} | {rss['start_mib']:.0f} | "
                                 f"{rss.get('middle_mib', 0):.0f} | {rss['end_mib']:.0f} | "
                                 f"{rss['peak_mib']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.no_save:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.save_as}.md").write_text(text)
    (RESULTS / f"{args.save_as}.json").write_text(json.dumps(
        {"results": results, "medians": med, "memory_mib": memory, "instances": args.instances,
         "per_instance": args.per_instance, "rounds": args.rounds, "pacs_env": args.pacs_env,
         "machine": platform.platform()},
        indent=2))


def report_scaling(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    """Rates in the loaded archives against the empty ones (and ratios to Orthanc)."""
    med = {n: {a: statistics.median(v) for a, v in r.items() if v} for n, r in results.items()}
    label = f"@{args.loaded // 1000}k"
    lines = [f"# Ingest at {args.loaded} studies ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)", "",
             f"Machine: {platform.platform()}, {os.cpu_count()} cores, Python "
             f"{platform.python_version()}; {args.instances} CT instances 512x512 pushed with "
             f"storescu (TCP_NODELAY=1) into an empty target and into a copy of the same target "
             f"loaded with {args.loaded} studies (`bench/query.py`'s data set), alternating; "
             f"{args.rounds} round(s), medians (inst/s). Goal: the loaded rate within 10 % of "
             "the empty one. Per-round rates in the JSON.", "",
             "| target | assoc | empty (inst/s) | loaded (inst/s) | loaded / empty | "
             "loaded, ratio to Orthanc |", "|---|---|---|---|---|---|"]
    for name in ("orthanc", "pacs-embedded"):
        for a in ("1", "4"):
            empty, loaded = med.get(name, {}).get(a), med.get(name + label, {}).get(a)
            if not empty or not loaded:
                continue
            ref = med.get("orthanc" + label, {}).get(a)
            lines.append(f"| {name} | {a} | {empty:.1f} | {loaded:.1f} | {loaded / empty:.2f}x | "
                         f"{f'{loaded / ref:.2f}x' if ref else '-'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.no_save:
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"ingest-{args.loaded // 1000}k"
    (RESULTS / f"{stem}.md").write_text(text)
    (RESULTS / f"{stem}.json").write_text(json.dumps(
        {"results": results, "medians": med, "instances": args.instances, "rounds": args.rounds,
         "loaded_studies": args.loaded, "machine": platform.platform()}, indent=2))


if __name__ == "__main__":
    main()
