"""Group commit: several threads' index writes in one transaction, each caller released only
after the transaction holding its rows committed.

Leader/follower, no extra thread: a caller queues its work item; if no batch is being
committed it becomes the leader, takes everything queued (up to ``max_batch``), runs the
batch function outside the lock and hands each item its own result or error. Callers that
queued meanwhile wait; when the leader is done one of them leads the next batch. With one
association nothing waits (batches of one); with several, the ones arriving while a
transaction (and its fsync) is in flight share the next one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class Item(Generic[T, R]):
    """One caller's work and, once its batch ran, its result or error."""

    work: T
    done: bool = False
    settled: bool = False
    result: R | None = None
    error: BaseException | None = field(default=None, repr=False)

    def succeed(self, result: R | None) -> None:
        self.result, self.error, self.settled = result, None, True

    def fail(self, error: BaseException) -> None:
        self.result, self.error, self.settled = None, error, True


BatchFn = Callable[[Sequence[Item[T, R]]], None]


class GroupCommitter(Generic[T, R]):
    """Runs ``batch_fn`` over the items queued by concurrent :meth:`submit` calls.

    ``batch_fn`` settles every item it is given (:meth:`Item.succeed` / :meth:`Item.fail`); an
    exception escaping it is given to every item it did not settle.
    """

    def __init__(self, batch_fn: BatchFn[T, R], max_batch: int = 64) -> None:
        self._batch_fn = batch_fn
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: list[Item[T, R]] = []
        self._busy = False

    def submit(self, work: T) -> R | None:
        """Queue ``work``, wait until its batch committed; its result (or its error, raised)."""
        item: Item[T, R] = Item(work)
        with self._cond:
            self._queue.append(item)
            while self._busy and not item.done:
                self._cond.wait()
            if item.done:
                return self._outcome(item)
            # not busy and not done: the item is still queued; lead a batch that holds it
            self._busy = True
            self._queue.remove(item)
            batch = [item, *self._queue[:self._max_batch - 1]]
            del self._queue[:self._max_batch - 1]
        try:
            self._batch_fn(batch)
        except BaseException as exc:  # noqa: BLE001 - handed to each caller below
            for other in batch:
                if not other.settled:
                    other.fail(exc)
        finally:
            with self._cond:
                for other in batch:
                    other.done = True
                self._busy = False
                self._cond.notify_all()
        return self._outcome(item)

    @staticmethod
    def _outcome(item: Item[T, R]) -> R | None:
        if item.error is not None:
            raise item.error
        return item.result
