"""Interpreter and allocator settings for a long-running, allocation-heavy daemon."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
from collections.abc import Iterator

__all__ = [
    "GC_YOUNG_THRESHOLD",
    "MMAP_THRESHOLD_BYTES",
    "TRIM_EVERY_S",
    "HeapTrimmer",
    "pin_mmap_threshold",
    "trim_heap",
    "tuned_runtime",
]

log = logging.getLogger(__name__)

#: Allocations between young-generation collections while the daemon runs (CPython: 700).
GC_YOUNG_THRESHOLD = 50_000
#: Blocks at least this large are mapped and unmapped (glibc's initial default, kept fixed).
MMAP_THRESHOLD_BYTES = 128 * 1024
_M_MMAP_THRESHOLD = -3  # glibc <malloc.h>
#: Seconds between two heap trims (``HeapTrimmer``). A trim walks the heap while the event
#: loop waits: measured 40 ms on an 800 MiB heap with nothing to give back, 100 ms when it
#: gave back 700 MiB; every 10 s that is under 0.5% of the loop, shorter than one batch.
TRIM_EVERY_S = 10.0


def pin_mmap_threshold(nbytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Keep glibc from raising its mmap threshold; False where there is no glibc ``mallopt``.

    glibc raises the threshold to the size of each mapped block freed (up to 32 MiB), so a
    batch's columns (hundreds of KiB each) move from their own mappings into the heap after
    the first batch, and the heap grows in steps as they fragment it around long-lived
    detector state. Measured on the memory bench (1,000 models x 20 detectors, 10M events):
    RSS wandered by +-30 MiB between samples with the dynamic threshold, and stays within
    1% from 5M to 10M events with it pinned. Setting it is permanent for the process.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, nbytes))


def trim_heap() -> bool:
    """Give the heap's free pages back to the system (glibc ``malloc_trim(0)``, which also
    releases free pages in the middle of the heap); False where there is no glibc.

    Freed blocks inside the heap stay resident until something is allocated over them: a
    batch's temporaries and the per-object detectors of a model whose members moved into
    bank rows leave holes between long-lived detector state that RSS keeps counting. Measured
    (the memory bench's leak check, engine alone, 71 models, auto policy): RSS grew 18 MiB
    from 1M to 2M events untrimmed, 9 MiB with a trim every 10 ticks.
    """
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim(0)
    return True


class HeapTrimmer:
    """Trims the heap (:func:`trim_heap`) at most once every ``every_s`` seconds of ``now``
    (the daemon's tick calls :meth:`maybe` each second)."""

    def __init__(self, every_s: float = TRIM_EVERY_S) -> None:
        self.every_s = every_s
        self._last: float | None = None
        self.trims = 0

    def maybe(self, now: float) -> bool:
        """Trim if ``every_s`` passed since the last trim (the first call only starts the
        clock); whether it trimmed."""
        if self._last is None:
            self._last = now
            return False
        if now - self._last < self.every_s:
            return False
        self._last = now
        if not trim_heap():
            return False
        self.trims += 1
        return True


@contextlib.contextmanager
def tuned_runtime() -> Iterator[None]:
    """Fewer cyclic-GC passes while the daemon runs (previous settings after), and a fixed
    mmap threshold (see :func:`pin_mmap_threshold`).

    Each batch allocates tens of thousands of short-lived containers (feature mappings,
    column rows) that refcounting frees; with CPython's default threshold of 700 they
    trigger hundreds of collections per batch, and the survivors of a batch in flight push
    full collections over every model's detectors. Measured on the throughput bench's
    engine (1,000 models, 16 detectors each): 16.6 -> 13.4 us per event, about the same as
    with the collector off. What exists at start (modules, settings, policies) is frozen:
    it lives as long as the process and need not be scanned again.
    """
    if not pin_mmap_threshold():
        log.debug("no glibc mallopt: the allocator keeps its dynamic mmap threshold")
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 10)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
