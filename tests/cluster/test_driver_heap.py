"""The driver hands freed C heap back to the OS (driver_heap.py)."""

from __future__ import annotations

import os

import pytest

from yolo_ray.cluster import driver_heap


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(driver_heap._malloc_trim() is None, reason="no glibc malloc_trim here")
def test_freed_heap_between_live_blocks_goes_back_to_the_os():
    blocks = [bytearray(1000) for _ in range(100_000)]  # ~100 MB from malloc, touched
    kept = blocks[::64]                                  # one live block every 64 KB
    del blocks
    before = rss_mb()                                    # freed, yet still resident
    assert driver_heap.release_free_heap() is True       # (live blocks above: no top trim)
    assert before - rss_mb() > 40                         # most of the ~98 MB freed
    assert len(kept) == 1563                             # still alive and intact
    assert all(len(b) == 1000 for b in kept)
