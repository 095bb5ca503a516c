"""Objects of a retrieve opened ahead of their sending (:class:`pacs.retrieve.ReadAhead`):
each opened once, on a worker thread, in order; errors raised where the object is used;
nothing left open when a retrieve ends early."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from pacs.errors import NotFound
from pacs.retrieve import ReadAhead, StoredInstance
from pacs.services import Services


def _instance(n: int) -> StoredInstance:
    fields = dict.fromkeys(StoredInstance.__dataclass_fields__)
    fields.update(sop_instance_uid=f"1.2.3.{n}", storage_key=f"day/a/{n}.dcm")
    return StoredInstance(**fields)  # type: ignore[arg-type]


class _Stream:
    """An opened object, as the archive's streams are: its first chunk read, a file or an
    HTTP response held until it is read to the end or closed."""

    def __init__(self, uid: str, opener: Opener) -> None:
        self.uid, self.opener = uid, opener

    def __iter__(self) -> Iterator[bytes]:
        yield self.uid.encode()
        self.close()

    def close(self) -> None:
        with self.opener.lock:
            self.opener.closed.add(self.uid)


class Opener:
    """Streams of fake objects; records which were opened, on which thread, and closed."""

    def __init__(self, missing: frozenset[int] = frozenset()) -> None:
        self.opened: list[tuple[str, str]] = []
        self.closed: set[str] = set()
        self.missing = missing
        self.lock = threading.Lock()

    def __call__(self, inst: StoredInstance) -> _Stream:
        with self.lock:
            self.opened.append((inst.sop_instance_uid, threading.current_thread().name))
        if int(inst.sop_instance_uid.rsplit(".", 1)[1]) in self.missing:
            raise NotFound(f"object of {inst.sop_instance_uid} missing from storage")
        return _Stream(inst.sop_instance_uid, self)


    def settle(self, count: int) -> None:
        deadline = time.monotonic() + 5
        while len(self.opened) < count and time.monotonic() < deadline:
            time.sleep(0.005)


def test_each_object_opened_once_ahead_on_a_worker_thread() -> None:
    instances = [_instance(n) for n in range(10)]
    opener = Opener()
    loader = ReadAhead(opener, instances, depth=3)  # type: ignore[arg-type]
    received = []
    for n, inst in enumerate(instances):
        received.append(b"".join(loader(inst)))
        opener.settle(min(n + 4, 10))
        # everything up to three ahead of the one sent is open, nothing further
        assert {uid for uid, _ in opener.opened} == {f"1.2.3.{k}" for k in range(min(n + 4, 10))}
    assert received == [f"1.2.3.{n}".encode() for n in range(10)]
    assert sorted(uid for uid, _ in opener.opened) == sorted(i.sop_instance_uid for i in instances)
    threads = dict(opener.opened)
    assert threads["1.2.3.0"] == threading.current_thread().name  # nothing ahead of the first
    assert all(threads[f"1.2.3.{n}"].startswith("read-ahead") for n in range(1, 10))
    loader.close()


def test_an_error_is_raised_where_the_object_is_used() -> None:
    instances = [_instance(n) for n in range(4)]
    loader = ReadAhead(Opener(missing=frozenset({2})), instances, depth=2)  # type: ignore[arg-type]
    assert b"".join(loader(instances[0])) == b"1.2.3.0"
    assert b"".join(loader(instances[1])) == b"1.2.3.1"
    with pytest.raises(NotFound):
        loader(instances[2])  # opened ahead, failed there: raised now, as if opened now
    assert b"".join(loader(instances[3])) == b"1.2.3.3"  # the retrieve goes on
    loader.close()


def test_close_and_skipping_close_what_was_read_ahead() -> None:
    instances = [_instance(n) for n in range(8)]
    opener = Opener()
    loader = ReadAhead(opener, instances, depth=3)  # type: ignore[arg-type]
    b"".join(loader(instances[0]))
    opener.settle(4)
    b"".join(loader(instances[2]))  # 1 skipped (e.g. failed before it was opened): closed
    opener.settle(6)
    loader.close()  # e.g. cancelled: 3, 4, 5 were open
    assert {uid for uid, _ in opener.opened} == {f"1.2.3.{n}" for n in range(6)}
    assert opener.closed == {f"1.2.3.{n}" for n in range(6)}  # sent, skipped or dropped


def test_an_object_from_elsewhere_is_opened_at_once() -> None:
    opener = Opener()
    loader = ReadAhead(opener, [_instance(n) for n in range(3)])  # type: ignore[arg-type]
    assert b"".join(loader(_instance(99))) == b"1.2.3.99"
    assert opener.opened == [("1.2.3.99", threading.current_thread().name)]



def test_pairs_of_stream_and_length_are_closed_too() -> None:
    """WADO-RS opens (stream, length) pairs: those read ahead and never sent are closed."""
    from pacs.retrieve import close_stream

    instances = [_instance(n) for n in range(5)]
    opener = Opener()
    loader = ReadAhead(lambda inst: (opener(inst), 1), instances, depth=2,
                       close=lambda pair: close_stream(pair[0]))
    stream, length = loader(instances[0])
    assert (b"".join(stream), length) == (b"1.2.3.0", 1)
    opener.settle(3)
    loader.close()
    assert opener.closed == {"1.2.3.0", "1.2.3.1", "1.2.3.2"}


def test_remote_stores_are_read_ahead_local_folders_not(services: Services) -> None:
    """From S3 (behind its spool) a GET takes milliseconds: read ahead. From a local folder
    a read costs less than a hand-over to another thread: not."""
    import storage
    from pacs.retrieve import READ_AHEAD

    local = isinstance(services.store, storage.FolderStore)
    assert services.retrieve.read_ahead == (0 if local else READ_AHEAD)
