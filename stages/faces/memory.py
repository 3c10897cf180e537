"""Give freed heap memory back to the operating system (glibc only; a no-op elsewhere).

MTCNN on CPU allocates activations whose sizes change with every batch (the number of candidate
boxes varies), and glibc keeps the freed pieces in its heap, so a worker's resident memory creeps
up with the length of the clip although the stage holds a bounded window of frames. Calling
``malloc_trim(0)`` from time to time returns those pages; ``benchmarks/faces_memory.py`` measures
the effect and its cost.

Trimming is not enough on a long recording: glibc raises its mmap threshold each time a large block is freed, so
MTCNN's activations (0.5 to tens of MB) then come from the heap, where the small objects that outlive each
detection (boxes, track anchors, spool rows) land between them and pin the pages. Resident memory rose by 280 MiB
over a 60-minute recording (7,200 detections; ``benchmarks/timeline_memory.py``). :func:`map_large_blocks` fixes
the threshold so that those blocks are mapped and unmapped on their own, and raises the trim threshold so that the
top of the heap is not given back after every free (which made it slower still). Mapping every large block costs
time (1.54x the faces stage's on that recording), so ``faces.flat_heap=auto`` does it for long recordings only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_TRIM_THRESHOLD = 64 << 20  # free memory the top of the heap may keep (bytes)
LARGE_BLOCK_KIB = 512  # blocks from this size on get their own maps (512 KiB to 2 MiB measured alike)
LONG_RECORDING_S = 300.0  # faces.flat_heap=auto maps large blocks from a recording this long on


@functools.cache
def _libc_function(name: str, argtypes: list):
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = getattr(libc, name)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return None
    fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return fn


def _malloc_trim():
    return _libc_function("malloc_trim", (ctypes.c_size_t,))


_mapped: list[int] = []  # the threshold this process set, once (mallopt is per process and cannot be undone)


def map_large_blocks() -> bool:
    """Serve heap blocks of :data:`LARGE_BLOCK_KIB` KiB and more from their own memory maps, for the rest of this
    process (glibc ``mallopt``; another C library: nothing is changed). True when the threshold is set."""
    if _mapped:
        return True
    fn = _libc_function("mallopt", (ctypes.c_int, ctypes.c_int))
    if fn is None or not fn(_M_MMAP_THRESHOLD, LARGE_BLOCK_KIB << 10) or not fn(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD):
        return False
    _mapped.append(LARGE_BLOCK_KIB)
    return True


def release_free_heap() -> bool:
    """Return free heap pages to the OS; True when the C library could do it."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True
