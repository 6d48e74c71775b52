"""Keep freed CPU memory in the process between training steps (glibc malloc settings).

By default glibc hands large freed blocks back to the operating system (blocks above a dynamic mmap
threshold, and the top of the heap above a trim threshold). A training step frees and reallocates the same
activations every step, so each step then pays page faults to get zeroed pages back; with both thresholds
raised the pages stay in the process at the same peak RSS (measurements in BENCHMARKS.md). (Intel's PyTorch
CPU launcher gets the same effect by preloading jemalloc or tcmalloc.)
"""

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
M_MMAP_THRESHOLD = -3
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory(threshold_bytes: int = 2**30) -> bool:
    """Raise glibc's mmap and trim thresholds to `threshold_bytes`; returns whether the settings applied.

    Does nothing where the allocator is not glibc's, where the user already chose malloc settings (the
    environment variables above, or jemalloc/tcmalloc in LD_PRELOAD), or with HF_MAE_KEEP_FREED_MEMORY=0.
    """
    if not sys.platform.startswith("linux") or os.environ.get("HF_MAE_KEEP_FREED_MEMORY", "1") == "0":
        return False
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in os.environ for name in USER_SETTINGS) or "jemalloc" in preload or "tcmalloc" in preload:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # glibc only: musl's mallopt ignores these settings
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_TRIM_THRESHOLD, threshold_bytes)) and bool(mallopt(M_MMAP_THRESHOLD, threshold_bytes))
