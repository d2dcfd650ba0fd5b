"""The daemon tunes CPython's cyclic collector while it runs and puts it back after."""

from __future__ import annotations

import gc

from monitor.daemon import GC_YOUNG_THRESHOLD, tuned_collector


def test_daemon_collector_tuning_is_undone() -> None:
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    with tuned_collector():
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
        assert gc.get_freeze_count() > frozen
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen
