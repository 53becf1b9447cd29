"""`trim_heap`: hand the C heap's free pages back to the operating system (glibc's ``malloc_trim``).

An analyzer run reads tens of thousands of rows at a time (the window's sample, pages of entries
and of turns to score), each a dict of a few dozen objects. Once freed, most of that memory stays
in the process: glibc keeps freed pages below the top of its heap for reuse, so a long-running
`serve` shows the peak of its biggest run as resident, and a soak reads that as growth. Trimming
after each run returned 80 of the 130 MiB a catch-up run over 300k turns had added (the rest is
Python's own arenas, still partly in use). A no-op where the C library is not glibc.

>>> trim_heap() in (True, False)
True
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):
        return None


def trim_heap() -> bool:
    """Release the C heap's free memory; True when glibc did (False: nothing to release, or no glibc)."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
