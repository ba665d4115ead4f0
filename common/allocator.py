"""How the process's C allocator hands memory back: glibc's defaults cost CPU inference most of its time."""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt(3) parameters.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 << 20  # glibc's upper limit on 64-bit systems
TRIM_THRESHOLD = 1 << 30
TOP_PAD = 256 << 20


def retain_freed_memory() -> bool:
    """Keep freed activations in glibc's heap instead of returning them to the kernel; whether it applied.

    By default every tensor of a few MiB or more is a fresh mmap, so each batch page-faults its activations in
    again, which on a small CPU can cost more than the inference itself (bench/allocator.py measures both). No
    computation changes. The cost is up to TRIM_THRESHOLD of freed memory the process keeps. Not glibc (macOS,
    Windows, musl): nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
