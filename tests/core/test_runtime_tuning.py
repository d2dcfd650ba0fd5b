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


_FRAGMENT = """
import json, sys
from monitor.daemon.runtime import pin_mmap_threshold, trim_heap

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

pin_mmap_threshold()
blocks = [bytes(1000) + bytes([i % 256]) for i in range(120_000)]  # ~115 MiB in the heap
kept = blocks[::64]  # long-lived state scattered through it
del blocks
before = rss_mib()
assert trim_heap() is True
print(json.dumps({"before": before, "after": rss_mib()}))
"""


def test_trim_gives_back_the_holes_freed_inside_the_heap() -> None:
    """Blocks freed between long-lived ones stay resident until trimmed (what the fill phase
    leaves as members move into bank rows); the trim returns them. In a fresh process: the
    test runner's own heap would blur the figures."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", _FRAGMENT], capture_output=True, text=True, env=env, check=True
    )
    rss = json.loads(out.stdout)
    assert rss["before"] - rss["after"] > 60, rss


def test_the_trimmer_trims_once_per_period() -> None:
    from monitor.daemon.runtime import HeapTrimmer

    trimmer = HeapTrimmer(every_s=10.0)
    assert [trimmer.maybe(t) for t in (100.0, 101.0, 109.9, 110.0, 115.0, 120.5)] == [
        False, False, False, True, False, True,
    ]  # fmt: skip
    assert trimmer.trims == 2
