"""The ``pacs`` command: serve, import, demo, db. The entry point is the only place that
reads settings from the environment."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pacs.config import Settings, load_settings
from pacs.context import Caller
from pacs.errors import ConfigError, PacsError

app = typer.Typer(help="mini-PACS: a DICOM archive (DIMSE + DICOMweb) on SQL + object storage.",
                  no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Index database schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")
console = Console(stderr=True)


def _settings(**overrides: object) -> Settings:
    try:
        settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(2) from None
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return settings


def _services(settings: Settings, doorbell: Any = None):  # type: ignore[no-untyped-def]
    from pacs.services import build_services

    try:
        return build_services(settings, doorbell=doorbell)
    except (PacsError, Exception) as exc:  # noqa: BLE001 - show a clear message, not a trace
        if isinstance(exc, PacsError) or type(exc).__module__.startswith(("storage", "sqlalchemy")):
            console.print(f"[red]cannot open the archive:[/red] {exc}")
            raise typer.Exit(1) from None
        raise


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when ``pacs serve`` dies, even by SIGKILL: an
    orphaned worker would go on acknowledging objects on the shared port (Linux only)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the line above
        os._exit(1)


def _worker(settings: Settings, shared: Any, ready: Any = None,
            parent_pid: int | None = None, doorbell: Any = None) -> None:
    """A DICOM service process taking associations from the listening socket in ``shared``
    (a :class:`dicom_scp.server.SharedPort`) with its siblings; sets ``ready`` (a
    multiprocessing Event) once it accepts associations, and dies with ``parent_pid``.
    With a ``doorbell`` (S3 behind the spool) the uploads process uploads its objects."""
    if parent_pid is not None:
        _die_with_parent(parent_pid)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    from dicom_scp.server import DicomService
    from pacs.services import build_services, settle_heap

    services = build_services(settings, doorbell=doorbell)
    service = DicomService(services, shared=shared)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    service.start()
    settle_heap()
    if ready is not None:
        ready.set()
    stop.wait()
    service.stop()
    services.close()


UPLOAD_NICE = 10  # the uploads process yields the CPU to ingest and reading (docs/deployment.md)


def _uploader(settings: Settings, doorbell: Any, parent_pid: int) -> None:
    """The process that uploads the S3 spool (:func:`storage.spooled.run_uploads`), at a
    lower priority than the DICOM and web processes: while they are busy the spool absorbs
    the difference, and it drains as soon as they are not."""
    _die_with_parent(parent_pid)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s")
    os.nice(UPLOAD_NICE)
    from pacs.services import open_storage
    from storage.spooled import SpooledStore, run_uploads

    store = open_storage(settings)
    assert isinstance(store, SpooledStore)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        run_uploads(store, doorbell, stop, defer=settings.s3_upload_defer)
    finally:
        store.close()


def _start_uploader(ctx: Any, settings: Settings, doorbell: Any) -> multiprocessing.process.BaseProcess:
    proc = ctx.Process(target=_uploader, args=(settings, doorbell, os.getpid()), name="s3-uploads")
    proc.start()
    return proc


def _watch_workers(children: list[multiprocessing.process.BaseProcess], counts: Any,
                   lost: set[int]) -> None:
    """Report a DICOM worker process that died, and take it out of the turn-taking for
    new associations (its last count would otherwise keep the others deferring to it)."""
    for slot, proc in enumerate(children, start=1):
        if slot in lost or proc.is_alive():
            continue
        lost.add(slot)
        counts[slot] = 1 << 30
        console.print(f"[red]DICOM worker {proc.name} exited with {proc.exitcode}[/red]; "
                      f"{len(children) + 1 - len(lost)} process(es) take the associations")


def _wait_ready(children: list[multiprocessing.process.BaseProcess], events: list[Any],
                timeout: float = 120.0) -> None:
    """Wait until every worker process accepts associations (so "ready" means all of them)."""
    deadline = time.monotonic() + timeout
    for proc, ready in zip(children, events, strict=True):
        while not ready.wait(0.2):
            if not proc.is_alive():
                console.print(f"[red]DICOM worker {proc.name} exited with {proc.exitcode}[/red]")
                return
            if time.monotonic() > deadline:
                console.print(f"[yellow]DICOM worker {proc.name} not ready after {timeout:.0f} s[/yellow]")
                return


@app.command()
def serve(
    dicom_port: Annotated[int | None, typer.Option(help="Override PACS_DICOM_PORT.")] = None,
    http_port: Annotated[int | None, typer.Option(help="Override PACS_HTTP_PORT.")] = None,
    workers: Annotated[int | None, typer.Option(help="Override PACS_DICOM_WORKERS.")] = None,
    demo_if_empty: Annotated[bool, typer.Option(help="Load the demo studies into an empty archive.")] = False,
) -> None:
    """Start the archive's DICOM service; stop it with Ctrl-C or SIGTERM."""
    settings = _settings(dicom_port=dicom_port, http_port=http_port, dicom_workers=workers)
    from pacs.services import uses_spool
    from storage.spooled import Doorbell

    ctx = multiprocessing.get_context("spawn")
    # S3 behind the spool: one process of its own uploads (no upload threads in the others)
    doorbell = Doorbell() if uses_spool(settings) else None
    services = _services(settings, doorbell)
    uploader = _start_uploader(ctx, settings, doorbell) if doorbell is not None else None
    if demo_if_empty and _is_empty(services):
        console.print("empty archive: loading the demo studies (pacs demo)")
        _import_datasets(services, _demo_part10(2026, 6), "demo")
    from dicom_scp.server import DicomService, SharedPort

    workers = settings.dicom_process_count()
    counts = ctx.RawArray("i", workers) if workers > 1 else None
    service = DicomService(services, shared=SharedPort(counts, 0) if counts else None)
    children: list[multiprocessing.process.BaseProcess] = []
    ready_events: list[Any] = []
    if counts is not None:
        from dataclasses import replace
        child_settings = replace(settings, dicom_port=service.port, dicom_workers=1)
        for n in range(1, workers):
            ready = ctx.Event()
            shared = SharedPort(counts, n, listener=service.server.socket)
            proc = ctx.Process(target=_worker, name=f"dicom-{n + 1}",
                               args=(child_settings, shared, ready, os.getpid(), doorbell))
            proc.start()
            children.append(proc)
            ready_events.append(ready)
    from viewer_api.server import HttpService

    http = HttpService(services)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    service.start()
    http.start()
    from pacs.services import settle_heap

    settle_heap()
    _wait_ready(children, ready_events)
    console.print(
        f"[green]mini-PACS ready[/green]: DICOM AE [bold]{settings.ae_title}[/bold] on "
        f"{settings.dicom_host}:{service.port} ({workers} process(es)); "
        f"DICOMweb http://{settings.http_host}:{http.port}/dicomweb; "
        f"index {_safe_url(settings.database_url)}; storage {services.store.url}")
    sys.stderr.flush()
    lost: set[int] = set()
    while not stop.wait(1.0):
        _watch_workers(children, counts, lost)
        if uploader is not None and not uploader.is_alive():
            console.print(f"[red]S3 uploads process exited with {uploader.exitcode}[/red]; "
                          "restarting it (objects wait in the spool meanwhile)")
            uploader = _start_uploader(ctx, settings, doorbell)
    console.print("stopping: finishing associations in flight")
    for proc in children:
        if proc.pid:
            os.kill(proc.pid, signal.SIGTERM)
    http.stop()
    service.stop()
    for proc in children:
        proc.join(30)
    if uploader is not None:  # uploads in flight end; the rest resume at the next start
        uploader.terminate()
        uploader.join(30)
    services.close()
    console.print("stopped")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _is_empty(services) -> bool:  # type: ignore[no-untyped-def]
    from sqlalchemy import func, select

    from pacs.index.models import Instance

    with services.engine.connect() as conn:
        return int(conn.execute(select(func.count(Instance.id))).scalar_one()) == 0


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            out.append(path)
        else:
            console.print(f"[yellow]skipped (not found):[/yellow] {path}")
    return out


IMPORT_IN_MEMORY = 16 << 20  # larger files are streamed from disk, never read whole


def _read_files(files: list[Path]) -> Iterator[tuple[str, bytes | Path | Exception]]:
    """Each file's bytes, or its path when larger than :data:`IMPORT_IN_MEMORY` (a 2 GB
    whole-slide image is streamed by the ingest: header from its head, hashed and copied
    in chunks)."""
    for path in files:
        try:
            if path.stat().st_size > IMPORT_IN_MEMORY:
                yield str(path), path
            else:
                yield str(path), path.read_bytes()
        except OSError as exc:
            yield str(path), exc


def _import_datasets(services, items: Iterator[tuple[str, bytes | Path | Exception]], label: str,  # type: ignore[no-untyped-def]
                     total: int | None = None) -> Counter[str]:
    caller = Caller.cli(label)
    counts: Counter[str] = Counter()
    rejected: list[tuple[str, str]] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=False) as progress:
        task = progress.add_task(label, total=total)
        for name, data in items:
            if isinstance(data, Exception):
                counts["rejected"] += 1
                rejected.append((name, str(data)))
            else:
                try:
                    outcome = services.ingest.store_instance(caller, data)
                    counts[outcome.status.value] += 1
                except PacsError as exc:
                    counts["rejected"] += 1
                    rejected.append((name, f"{type(exc).__name__}: {exc}"))
            progress.advance(task)
    repaired = f", repaired {counts['repaired']}" if counts["repaired"] else ""
    console.print(f"{label}: stored {counts['stored']}, already stored {counts['already stored']}"
                  f", replaced {counts['replaced']}{repaired}, rejected {counts['rejected']}")
    for name, reason in rejected[:50]:
        console.print(f"  [yellow]rejected[/yellow] {name}: {reason}")
    if len(rejected) > 50:
        console.print(f"  … and {len(rejected) - 50} more")
    return counts


@app.command("import")
def import_(paths: Annotated[list[Path], typer.Argument(help="Files or folders (recursive).")]) -> None:
    """Import DICOM files through the same ingest path as C-STORE."""
    settings = _settings()
    services = _services(settings)
    files = _files(paths)
    counts = _import_datasets(services, _read_files(files), "import", total=len(files))
    services.close()
    if counts["rejected"] and not (counts["stored"] or counts["already stored"]
                                   or counts["repaired"] or counts["replaced"]):
        raise typer.Exit(1)


def _demo_part10(seed: int, studies: int) -> Iterator[tuple[str, bytes | Exception]]:
    from io import BytesIO

    from pacs.demo import generate_demo

    for ds in generate_demo(seed=seed, studies=studies):
        buf = BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        yield str(ds.SOPInstanceUID), buf.getvalue()


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same studies).")] = 2026,
    studies: Annotated[int, typer.Option(help="Number of studies.")] = 6,
    out: Annotated[Path | None, typer.Option(help="Write the files here instead of importing.")] = None,
) -> None:
    """Generate realistic synthetic CT, MR and CR studies (Vietnamese names, UTF-8)."""
    if out is not None:
        from pacs.demo import write_demo

        paths = write_demo(out, seed=seed, studies=studies)
        console.print(f"wrote {len(paths)} files under {out}")
        return
    settings = _settings()
    services = _services(settings)
    _import_datasets(services, _demo_part10(seed, studies), "demo")
    services.close()


def _progress_bar(label: str, total: int) -> tuple[Progress, object]:
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=console)
    return progress, progress.add_task(label, total=total)


@app.command()
def verify(
    hashes: Annotated[bool, typer.Option(help="Re-hash every object (slower, finds corruption).")] = True,
    repair: Annotated[bool, typer.Option(help="Remove orphan objects (never-acknowledged bytes) "
                                         "and temporary files over an hour old.")] = False,
) -> None:
    """Cross-check index and storage: missing objects, hash mismatches, orphans."""
    from pacs.verify import count_instances
    from pacs.verify import verify as run_verify

    settings = _settings()
    services = _services(settings)
    progress, task = _progress_bar("verify", count_instances(services.engine))
    with progress:
        report = run_verify(services.engine, services.store, hashes=hashes, repair=repair,
                            progress=lambda n: progress.advance(task, n))  # type: ignore[arg-type]
    services.close()
    console.print(f"checked {report.checked} instance(s): {len(report.missing)} missing, "
                  f"{len(report.corrupt)} corrupt, {len(report.orphans)} orphan object(s)"
                  + (f", {len(report.removed_orphans)} removed" if repair else "")
                  + (f"; {len(report.leftovers)} temporary file(s) of interrupted writes"
                     + (f", {len(report.removed_leftovers)} removed" if repair else "")
                     if report.leftovers else ""))
    if report.pending:
        console.print(f"{len(report.pending)} object(s) received within the hour not in S3 yet: "
                      "maybe still in another node's upload spool (not counted as missing)")
    for uid, key in report.missing[:100]:
        console.print(f"  [red]missing[/red] {uid} (object {key})")
    for uid, key in report.corrupt[:100]:
        console.print(f"  [red]corrupt[/red] {uid} (object {key})")
    if not report.healthy:
        console.print("To repair them, send the same objects again: resend the studies from "
                      "the modality or another archive, or `pacs import` copies (a resend "
                      "replaces a missing or corrupt stored copy; docs/deployment.md).")
        raise typer.Exit(1)


@app.command("migrate-storage")
def migrate_storage(
    target_url: Annotated[str, typer.Argument(help="Destination: file:///path or s3://bucket.")],
) -> None:
    """Copy every object to another storage backend (then point PACS_STORAGE_URL at it).

    For s3:// targets the PACS_S3_* settings apply."""
    from dataclasses import replace

    from pacs.services import open_storage
    from pacs.verify import count_instances
    from pacs.verify import migrate_storage as run_migrate

    settings = _settings()
    services = _services(settings)
    target = open_storage(replace(settings, storage_url=target_url))
    target.check()
    progress, task = _progress_bar("migrate", count_instances(services.engine))
    with progress:
        report = run_migrate(services.engine, services.store, target,
                             progress=lambda n: progress.advance(task, n))  # type: ignore[arg-type]
    services.close()
    target.close()
    console.print(f"copied {report.copied}, already there {report.already_there}, "
                  f"failed {len(report.failed)}; target {target.url}")
    for uid, reason in report.failed[:100]:
        console.print(f"  [red]failed[/red] {uid}: {reason}")
    if report.failed:
        raise typer.Exit(1)
    console.print(f"now set PACS_STORAGE_URL={target_url} and restart the archive")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending schema migrations (back up the database first)."""
    from pacs.index.db import current_revision, head_revision, make_engine, upgrade

    settings = _settings()
    engine = make_engine(settings.database_url)
    before = current_revision(engine)
    upgrade(engine)
    console.print(f"schema: {before or '(empty)'} -> {head_revision()}")


@db_app.command("current")
def db_current() -> None:
    """Show the schema revision of the database and the one this version needs."""
    from pacs.index.db import current_revision, head_revision, make_engine

    settings = _settings()
    engine = make_engine(settings.database_url)
    typer.echo(f"database: {current_revision(engine) or '(empty)'}; code: {head_revision()}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
