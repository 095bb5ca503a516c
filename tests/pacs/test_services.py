"""Process-level settings of a server process (``pacs.services``)."""

from __future__ import annotations

import gc

from pacs.services import settle_heap


def test_settle_heap_collects_then_freezes_what_startup_built() -> None:
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    Cycle()  # garbage in a cycle: collected, not frozen
    frozen_before = gc.get_freeze_count()
    try:
        settle_heap()
        assert gc.get_freeze_count() > frozen_before
        assert not any(type(o) is Cycle for o in gc.get_objects())
        gc.collect()  # later garbage is still collected
        assert gc.get_count()[0] < 700
    finally:
        gc.unfreeze()
