"""Give freed heap memory back to the operating system (glibc only; a no-op elsewhere).

MTCNN on CPU allocates activations whose sizes change with every batch (the number of candidate
boxes varies), and glibc keeps the freed pieces in its heap, so a worker's resident memory creeps
up with the length of the clip although the stage holds a bounded window of frames. Calling
``malloc_trim(0)`` from time to time returns those pages; ``benchmarks/faces_memory.py`` measures
the effect and its cost.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        fn = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def release_free_heap() -> bool:
    """Return free heap pages to the OS; True when the C library could do it."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True
