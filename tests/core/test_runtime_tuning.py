"""The daemon tunes CPython's cyclic collector while it runs and puts it back after; it pins
glibc's mmap threshold so large batch temporaries never settle in the heap."""

from __future__ import annotations

import ctypes
import gc

from monitor.daemon.runtime import GC_YOUNG_THRESHOLD, pin_mmap_threshold, tuned_runtime


def test_collector_tuning_is_undone() -> None:
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    with tuned_runtime():
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
        assert gc.get_freeze_count() > frozen
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen


def test_mmap_threshold_is_pinned_on_glibc() -> None:
    libc = ctypes.CDLL(None)
    assert hasattr(libc, "mallopt"), "these machines run glibc: the pin must be in effect"
    assert pin_mmap_threshold() is True
