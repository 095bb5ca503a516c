"""Group commit: each caller gets its own item's outcome, after its batch ran."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from pacs.index.groupcommit import GroupCommitter, Item


def test_concurrent_submits_share_batches_and_get_their_own_results() -> None:
    batches: list[int] = []
    gate = threading.Event()

    def run(batch: Sequence[Item[int, int]]) -> None:
        gate.wait(5)  # hold the first batch so the others queue up behind it
        batches.append(len(batch))
        for item in batch:
            if item.work == 3:
                item.fail(ValueError("three"))
            else:
                item.succeed(item.work * 10)

    committer: GroupCommitter[int, int] = GroupCommitter(run)
    results: dict[int, object] = {}

    def submit(n: int) -> None:
        try:
            results[n] = committer.submit(n)
        except ValueError as exc:
            results[n] = str(exc)

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert results == {n: ("three" if n == 3 else n * 10) for n in range(8)}
    assert sum(batches) == 8 and len(batches) < 8


def test_an_exception_escaping_the_batch_reaches_every_unsettled_item() -> None:
    def run(batch: Sequence[Item[int, int]]) -> None:
        raise RuntimeError("index down")

    committer: GroupCommitter[int, int] = GroupCommitter(run)
    with pytest.raises(RuntimeError, match="index down"):
        committer.submit(1)
    with pytest.raises(RuntimeError):  # and the committer is usable again
        committer.submit(2)


def test_batches_are_capped() -> None:
    sizes: list[int] = []
    gate = threading.Event()

    def run(batch: Sequence[Item[int, int]]) -> None:
        gate.wait(5)
        sizes.append(len(batch))
        for item in batch:
            item.succeed(None)

    committer: GroupCommitter[int, int] = GroupCommitter(run, max_batch=3)
    threads = [threading.Thread(target=committer.submit, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert sum(sizes) == 10 and max(sizes) <= 3
