"""The faces stage's heap policy (``faces.flat_heap``, ``stages/faces/memory.py``): on, a large block freed does not
make the next large blocks come from the heap (where they fragment it over a long recording); off, glibc's own
dynamic threshold is left alone; auto, it is on from the first long recording. Each case runs in a fresh process (``mallopt`` is per process
and cannot be undone), and reads glibc's own count of mapped bytes (``mallinfo2``)."""

from __future__ import annotations

import ctypes.util
import json
import platform
import subprocess
import sys

import pytest

from pipeline.engine.config import ConfigError, key_fields, load_config
from tests.media import make_face_clip

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or "glibc" not in platform.libc_ver()[0],
                                reason="mallopt and mallinfo2 are glibc's")

PROBE = r"""
import ctypes, ctypes.util, json, sys
from stages.faces.stage import Config, open as open_stage

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
open_stage(Config(device="cpu", flat_heap={"on": True, "off": False}.get(sys.argv[1], sys.argv[1])))  # loads MTCNN as a worker does
libc.free(libc.malloc(8 << 20))  # an activation freed: glibc's default raises its threshold to 8 MiB
before = libc.mallinfo2().hblkhd
block = libc.malloc(1 << 20)  # the next activation, 1 MiB
mapped = libc.mallinfo2().hblkhd - before
libc.free(block)
print(json.dumps({"mapped": mapped}))
"""


def mapped_bytes(flat_heap: str) -> int:
    """Bytes of a 1 MiB block that glibc mapped on its own, after an 8 MiB block was freed, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", PROBE, flat_heap], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["mapped"]


def test_large_blocks_stay_mapped_after_a_larger_one_is_freed():
    assert ctypes.util.find_library("c")
    assert mapped_bytes("on") >= 1 << 20  # the block has a map of its own, given back when freed
    assert mapped_bytes("off") == 0  # glibc's own policy: the block came from the heap
    assert mapped_bytes("auto") == 0  # no long recording seen yet


RUN = r"""
import sys
from pipeline.cli import main
from stages.faces import memory
code = main(["run", sys.argv[1], "--out", sys.argv[2], "--cache", sys.argv[3], "-q", "--until", "faces",
             "--set", "run.workers=1", "--set", "faces.device=cpu"])
print(code, memory._mapped)
"""


@pytest.mark.parametrize("seconds, mapped", [(10, "[]"), (301, "[512]")])
def test_auto_maps_large_blocks_from_the_first_long_recording(tmp_path, seconds, mapped):
    clip = tmp_path / f"{seconds}s.mp4"
    make_face_clip(clip, fps=1, seconds=seconds, motion="pan_zoom")
    out = subprocess.run([sys.executable, "-c", RUN, str(clip), str(tmp_path / "run"), str(tmp_path / "cache")],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", mapped], out.stderr


def test_the_setting_is_not_in_the_cache_key_and_refuses_other_values():
    cfg = load_config(None, ["faces.flat_heap=false"])
    assert cfg.faces.flat_heap is False and load_config(None, ["faces.flat_heap=on"]).faces.flat_heap is True
    assert load_config(None).faces.flat_heap == "auto"
    assert key_fields(cfg.faces) == key_fields(load_config(None).faces)  # same artifacts either way
    with pytest.raises(ConfigError, match="flat_heap"):
        load_config(None, ["faces.flat_heap=sometimes"])
