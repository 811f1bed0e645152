"""A training process keeps the memory it frees, for the next step to reuse.

glibc's malloc serves a large block (above its mmap threshold, 32 MiB at most) with fresh pages
from the kernel and unmaps them again on free; freed memory at the top of its heap goes back to
the kernel too. A training step frees and allocates the same large blocks every step: the dense
gradient of the word embeddings (47 MB for MiniLM, 125 MB for BERT-large) is mapped anew by
every backward pass, and the kernel faults in and zeroes its pages before torch zeroes them
again (what that costs a step: `benchmarks/profile_phases.py` and the benchmarks README).

`keep_freed_memory()` tells malloc, for the rest of the process, to serve every block from its
heap (M_MMAP_MAX = 0) and to keep what is freed (M_TRIM_THRESHOLD at its maximum): the pages of
one step are reused by the next. It moves memory, never arithmetic: torch places every CPU
tensor at a 64-byte boundary either way, so the numbers are bit-identical (tested); the
process's resident memory stays at its peak instead of shrinking between steps. Outside glibc
(macOS, musl) it does nothing and says so."""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4   # glibc's malloc.h
KEEP_ALL = 2**31 - 1                    # mallopt takes an int

_applied = False


def keep_freed_memory() -> bool:
    """Applies the setting once per process; whether it is in force (False: not glibc)."""
    global _applied
    if not _applied and platform.libc_ver()[0] == "glibc":
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        _applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, KEEP_ALL))
    return _applied
