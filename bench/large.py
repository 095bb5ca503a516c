"""C-STORE of large objects (issue 5): the archive (SQLite + folder) against Orthanc 1.10.1 and
DCMTK ``storescp``, alternating targets in one run.

Two data sets, written once (seeded multi-frame objects, ``tests/large_object.py``): 40
objects of 24 MiB sent in one association (the size of a mammography or DX image) and two
of 512 MiB (a long multi-frame series, tomosynthesis), each object on its own association.
DCMTK ``storescu`` (TCP_NODELAY=1) sends; every target starts empty for each push, and the
page cache is synced before it. Medians over ``--rounds`` of the seconds per data set and
the ratio of our throughput to Orthanc's (higher is better).

Writes ``bench/results/large-latest.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.dicomweb import orthanc_version  # noqa: E402
from bench.ingest import DCMTK_ENV, pacs_starter, start_orthanc, start_storescp, stop  # noqa: E402
from tests.large_object import write_multiframe  # noqa: E402

RESULTS = ROOT / "bench" / "results"
Starter = Callable[[Path], tuple[subprocess.Popen[bytes], int]]
TARGETS: dict[str, tuple[str, Starter]] = {
    "storescp": ("STORESCP", start_storescp),
    "orthanc": ("ORTHANC", start_orthanc),
    "pacs-embedded": ("MINIPACS", pacs_starter({})),
}


def make_sets(work: Path, quick: bool) -> dict[str, list[Path]]:
    """The data sets: name -> objects (written once)."""
    sets = [(24, 10 if quick else 40, "one association"),
            (512, 1 if quick else 2, "one association each")]
    out: dict[str, list[Path]] = {}
    for n, (mib, count, how) in enumerate(sets):
        name = f"{mib} MiB x {count}, {how}"
        folder = work / f"set{n}"
        folder.mkdir()
        print(f"writing {name}", flush=True)
        out[name] = [write_multiframe(folder / f"{i:03d}.dcm", mib << 20, seed=100 * n + i).path
                     for i in range(count)]
    return out


def send(port: int, ae_title: str, files: list[Path], together: bool) -> float:
    """Seconds to send ``files`` with storescu: in one association, or one each in turn."""
    groups = [files] if together else [[f] for f in files]
    t0 = time.perf_counter()
    for group in groups:
        run = subprocess.run(["/usr/bin/storescu", "-aec", ae_title, "127.0.0.1", str(port),
                              *map(str, group)], env=DCMTK_ENV, capture_output=True,
                             timeout=1800)
        if run.returncode != 0:
            raise RuntimeError(f"storescu failed: {run.stderr.decode()[-500:]}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer objects, one round")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 1
    if shutil.which("Orthanc") is None:
        raise SystemExit("needs Debian's orthanc (make bench installs it)")
    work = Path(tempfile.mkdtemp(prefix="pacs-bench-large-"))
    samples: dict[str, dict[str, list[float]]] = {}
    try:
        sets = make_sets(work, args.quick)
        for r in range(args.rounds):
            order = list(TARGETS) if r % 2 == 0 else list(reversed(TARGETS))
            for name, files in sets.items():
                for target in order:
                    ae_title, start = TARGETS[target]
                    folder = work / f"target-{target}"
                    shutil.rmtree(folder, ignore_errors=True)
                    folder.mkdir()
                    proc, port = start(folder)
                    try:
                        os.sync()
                        secs = send(port, ae_title, files, together=name.endswith("association"))
                    finally:
                        stop(proc)
                    shutil.rmtree(folder, ignore_errors=True)
                    samples.setdefault(name, {}).setdefault(target, []).append(secs)
                    size = sum(f.stat().st_size for f in files) / 2**20
                    print(f"  round {r + 1} {name:36s} {target:14s} {secs:6.2f} s "
                          f"({size / secs:5.0f} MiB/s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(samples, args)


def report(samples: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> None:
    medians = {name: {t: statistics.median(v) for t, v in per.items()}
               for name, per in samples.items()}
    now = datetime.now(UTC)
    lines = [f"# C-STORE of large objects ({now:%Y-%m-%d %H:%M} UTC)", "",
             f"Machine: {platform.platform()}, {os.cpu_count()} cores, Python "
             f"{platform.python_version()}; Orthanc {orthanc_version()} (SQLite + folder), "
             "DCMTK storescp (no index, no fsync) and the archive (`pacs serve` defaults, "
             f"SQLite + folder); DCMTK storescu with TCP_NODELAY=1; {args.rounds} round(s), "
             "targets alternating, each empty for each push; medians (seconds per data set). "
             "Ratio: our throughput over Orthanc's (higher is better). Per-round times in "
             "the JSON.", "",
             "| data set | storescp (s) | Orthanc (s) | mini-PACS (s) | ratio us/Orthanc |",
             "|---|---:|---:|---:|---:|"]
    for name, med in medians.items():
        ratio = med["orthanc"] / med["pacs-embedded"]
        lines.append(f"| {name} | {med['storescp']:.2f} | {med['orthanc']:.2f} | "
                     f"{med['pacs-embedded']:.2f} | {ratio:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "large-latest.md").write_text(text)
    (RESULTS / "large-latest.json").write_text(json.dumps(
        {"date": now.isoformat(), "machine": platform.platform(), "orthanc": orthanc_version(),
         "rounds": args.rounds, "samples": samples, "medians": medians}, indent=2))


if __name__ == "__main__":
    main()
