"""Incremental smoothing (Timeline) gives exactly what smoothing the whole clip at once gives."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.tracking import Anchor, Timeline, box_between, smooth_one


def whole_clip_boxes(anchors, window, max_gap_s, frames):
    """The straightforward way: smooth every anchor of the finished clip, then look each frame up."""
    present = [a for a in (smooth_one(anchors, k, window, max_gap_s) for k in range(len(anchors))) if a.box is not None]
    out = []
    for idx, t in frames:
        before = [a for a in present if a.t < t]
        after = [a for a in present if a.t >= t]
        out.append(box_between(t, idx, before[-1] if before else None, after[0] if after else None, max_gap_s))
    return out


def _anchors(rng, n, dt):
    out, t = [], 0.0
    for i in range(n):
        t += dt * (1 + 5 * (rng.random() < 0.1))  # occasional long gaps
        if rng.random() < 0.25:
            out.append(Anchor(3 * i, t))  # no face on this detection frame
            continue
        box = np.array([10, 20, 60, 80], np.float32) + rng.normal(0, 3, 4).astype(np.float32)
        out.append(Anchor(3 * i, t, box, rng.normal(40, 5, (5, 2)).astype(np.float32), float(rng.random()), 1))
    return out


@pytest.mark.parametrize("window,max_gap_s", [(1, 1.0), (3, 1.0), (5, 0.3), (7, 0.15)])
def test_timeline_matches_whole_clip_smoothing(window, max_gap_s):
    rng = np.random.default_rng(window)
    anchors = _anchors(rng, 80, 0.1)
    frame_times = [(3 * i + d, a.t + d * 0.033) for i, a in enumerate(anchors) for d in range(3)]

    tl = Timeline(window, max_gap_s)
    got, k = [], 0
    for a in anchors:
        tl.add(a)
        if rng.random() < 0.3:  # settle at random points and emit the frames that are final, like the stage
            tl.settle(final=False)
            while k < len(frame_times) and frame_times[k][1] + max_gap_s <= tl.horizon():
                got.append(tl.box_at(frame_times[k][1], frame_times[k][0]))
                k += 1
            if k < len(frame_times):  # what the stage does: forget what the frames still waiting cannot need
                tl.forget_before(frame_times[k][1])
    tl.settle(final=True)
    got += [tl.box_at(t, idx) for idx, t in frame_times[k:]]

    want = whole_clip_boxes(anchors, window, max_gap_s, frame_times)
    assert len(got) == len(want)
    n_interp = 0
    for g, w in zip(got, want):
        assert (g.detected, g.interpolated, g.present, g.score) == (w.detected, w.interpolated, w.present, w.score)
        n_interp += g.interpolated
        if w.box is None:
            assert g.box is None
        else:
            np.testing.assert_array_equal(g.box, w.box)
            np.testing.assert_array_equal(g.landmarks, w.landmarks)
    assert n_interp > 0  # the case exercises interpolation, not only detection frames


def test_timeline_memory_stays_bounded_when_it_forgets():
    rng = np.random.default_rng(1)
    anchors = _anchors(rng, 3000, 0.1)
    tl = Timeline(5, 1.0)
    sizes = []
    for i, a in enumerate(anchors):
        tl.add(a)
        if i % 10 == 9:
            tl.settle(final=False)
            tl.forget_before(anchors[max(0, i - 20)].t)  # frames of the last ~20 anchors still wait
            sizes.append(len(tl.anchors) + len(tl._present))
    assert max(sizes[-100:]) <= 60, max(sizes)  # not growing with the 3000 anchors fed
