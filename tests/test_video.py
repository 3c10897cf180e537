"""Region-only YUV->RGB conversion gives exactly the pixels of the whole frame's conversion."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.core.video import FramePixels, VideoReader, to_rgb


def _frames(path, n=3):
    with VideoReader(path) as reader:
        out = []
        for (_, frame), _ in zip(reader.frames(), range(n)):
            out.append((frame, reader.frame_rotation(frame)))
        return out


def _random_regions(rng, w, h, n=150):
    for _ in range(n):
        x0, x1 = sorted(rng.integers(0, w + 1, 2))
        y0, y1 = sorted(rng.integers(0, h + 1, 2))
        yield int(x0), int(y0), int(x1), int(y1)


@pytest.mark.parametrize("name", ["pan.mp4", "sub/zoom.webm", "odd.avi"])
def test_regions_are_byte_identical_to_the_whole_frame(clip_dir, name):
    rng = np.random.default_rng(0)
    for frame, rotation in _frames(clip_dir[name].path):
        full = to_rgb(frame, rotation)
        h, w = full.shape[:2]
        for x0, y0, x1, y1 in _random_regions(rng, w, h):
            pixels = FramePixels(frame, rotation)
            assert pixels.shape == full.shape
            np.testing.assert_array_equal(pixels[y0:y1, x0:x1], full[y0:y1, x0:x1], err_msg=f"{name} {(x0, y0, x1, y1)}")


def test_rotated_frames_are_upright(special_clips):
    frame, rotation = _frames(special_clips["rotated"].path, 1)[0]
    assert rotation in (90, 270)
    pixels = FramePixels(frame, rotation)
    full = to_rgb(frame, rotation)
    assert pixels.shape == full.shape == (frame.width, frame.height, 3)
    np.testing.assert_array_equal(pixels[10:50, 5:77], full[10:50, 5:77])


def test_a_kept_region_serves_the_regions_inside_it(clip_dir):
    frame, rotation = _frames(clip_dir["pan.mp4"].path, 1)[0]
    full = to_rgb(frame, rotation)
    pixels = FramePixels(frame, rotation)
    pixels.keep(40, 30, 200, 180)
    inside, outside = pixels[50:100, 60:120], pixels[0:100, 0:120]
    np.testing.assert_array_equal(inside, full[50:100, 60:120])
    np.testing.assert_array_equal(outside, full[0:100, 0:120])
    assert np.shares_memory(inside, pixels[30:180, 40:200])  # served from the kept region, not converted again


def test_the_region_path_is_taken_for_plain_yuv420p_frames(clip_dir):
    frame, rotation = _frames(clip_dir["pan.mp4"].path, 1)[0]
    assert frame.format.name == "yuv420p" and rotation == 0
    pixels = FramePixels(frame, rotation)
    pixels[10:20, 10:20]
    assert pixels._full is None  # no whole-frame conversion happened
