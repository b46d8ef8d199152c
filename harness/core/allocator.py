"""Keep freed memory in the process on glibc, so large CPU tensors do not page-fault every time.

PyTorch's CPU tensors come from the C library's malloc. glibc serves blocks above its mmap
threshold (128 KiB, raised as blocks are freed, at most 32 MiB) with fresh mappings and returns
them, and the top of its heap above 128 KiB, to the system on free; the next block of that size
is new memory again, and touching it costs one page fault per 4 KiB page. A gradient method
allocates blocks of tens of MB per call (every sender's difference, every receiver's gradient):
on random-init GPT-2 at 8 x 16 tokens, one grad-wrong call made about 66,000 page faults and
0.15 s of system time, against 27,000 for the plain forward+backward it is compared with.
PyTorch's CPU performance guide recommends an allocator that keeps memory (jemalloc, tcmalloc)
for this reason. `keep_freed_memory` gets the same from glibc itself through `mallopt`: the heap
is never trimmed (M_TRIM_THRESHOLD at its maximum), and blocks up to 32 MiB, glibc's largest
mmap threshold, come from the heap from the start (M_MMAP_THRESHOLD); larger ones come from the
heap too once its free top can hold them. Turning mappings off altogether (M_MMAP_MAX 0) was
rejected: a loop of 64 MiB tensors then grew the heap by 64 MiB per step, because torch's
aligned requests are larger than the block just freed. Measured in pairs of processes
(docs/methods.md#cpu-memory-allocator), grad-wrong and EAP take 0.85-0.87x their time under
glibc's defaults, and the plain forward+backward takes the same time.

The cost: memory freed during a run stays with the process (its resident size stays at its
peak until it exits), which suits a batch job. `circuit-bench` and the benchmarks call it at
start; CIRCUIT_BENCH_SYSTEM_MALLOC=1 leaves the C library's defaults, and nothing changes on a
C library other than glibc (or with jemalloc/tcmalloc preloaded, whose `mallopt` is ignored).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

OPT_OUT = "CIRCUIT_BENCH_SYSTEM_MALLOC"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc on 64-bit: 4 * 1024 * 1024 * sizeof(long)
_STATE = {"kept": False}


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (see the module docstring). Returns
    whether the settings were applied: False with CIRCUIT_BENCH_SYSTEM_MALLOC=1 or off glibc."""
    if os.environ.get(OPT_OUT, "") not in ("", "0"):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    except (OSError, AttributeError):
        return False
    _STATE["kept"] = bool(ok)
    return _STATE["kept"]


def freed_memory_kept() -> bool:
    """Whether `keep_freed_memory` took effect in this process (timing rows record it)."""
    return _STATE["kept"]
