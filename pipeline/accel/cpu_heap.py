"""Freed CPU memory kept in the process between iterations, as the CUDA caching allocator does.

glibc serves every allocation over its mmap threshold (32 MB at most) with a fresh mmap and
unmaps it on free. An iteration at 512 px, or a batch of four at 256 px, has activations that
large, so each iteration got them back from the kernel as new zeroed pages: tens of
thousands of page faults per iteration, measurably slower (bench/bench_heap.py; BENCHMARKS.md,
"Levers"). With mmap off and no trimming, the next iteration
reuses the same heap memory. The price is a process that keeps its peak; `release` hands it
back (the worker calls it after each batch).

Threads get glibc arenas of their own, and those do not keep memory: an allocation over 64 MB
(a heap's size) is always mapped anew, and with "never trim" set, heap_trim's padding sum
wraps around, so a thread's heap is unmapped whenever its free top covers it. The shards of a
CPU batch (cpu_shards.py) allocate on their own threads, and took 1.2-20k page faults per
iteration at 256 px batch 4, against a steady 1,152 unsplit. So all threads share the main
arena (`share_one_arena`). A thread keeps the arena it got at its first allocation, and glibc
hands an existing arena to any thread that finds the main one busy, so the limit is set when
the package is imported, before its libraries start threads: pyarrow's import starts jemalloc's
background thread, which would otherwise make a second arena.
"""

from __future__ import annotations

import ctypes
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -3, -4, -8  # malloc.h
MMAP_CEILING = 32 * 2**20  # the largest mmap threshold glibc's dynamic rule reaches (64-bit)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 (only glibc has it)
    except (OSError, AttributeError):  # macOS, Windows, musl
        return None
    return libc


def share_one_arena() -> bool:
    """Every thread of the process allocates in glibc's main arena (pipeline/__init__ calls it
    first). Returns whether it applied (glibc only)."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_ARENA_MAX, 1))


def keep_freed_memory(keep: bool = True) -> bool:
    """Serve large allocations from the heap and never trim it; process-wide. keep=False puts
    back what glibc does by default once its dynamic threshold has grown to its ceiling (what
    a run would get without this; benchmarks switch between the two). Returns whether it
    applied (glibc only; elsewhere the allocator is left as it is). The one shared arena stays
    either way (share_one_arena)."""
    libc = _glibc()
    if libc is None:
        return False
    if keep:  # no mmap at all; a trim threshold of -1 never trims (mallopt(3))
        settings = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: -1}
    else:
        settings = {M_MMAP_MAX: 65536, M_MMAP_THRESHOLD: MMAP_CEILING,
                    M_TRIM_THRESHOLD: 2 * MMAP_CEILING}
    return all([libc.mallopt(key, value) for key, value in settings.items()])


def release() -> None:
    """Return the heap's free memory to the system (between batches: the next one may need
    less, and the memory pre-flight reads what the system has free)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
