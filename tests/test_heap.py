"""trim_heap gives freed C-heap pages back to the OS (glibc), which glibc alone keeps."""

from __future__ import annotations

import psutil

from monitor.heap import trim_heap


def _rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def test_freed_memory_below_a_live_block_leaves_the_process_once_trimmed() -> None:
    blocks = [bytes(2000) + bytes([i % 256]) for i in range(100_000)]  # ~200 MiB of malloc'd blocks
    pin = bytes(3000) + b"top"  # allocated last: glibc cannot shrink the heap from the top past it
    held = _rss_mib()
    del blocks
    freed_untrimmed = _rss_mib()
    assert trim_heap()
    trimmed = _rss_mib()
    assert freed_untrimmed - trimmed > 100, (held, freed_untrimmed, trimmed)
    assert pin.endswith(b"top")
