"""The tracking rule (FaceTracker: faces followed within a shot, never across a boundary), and incremental smoothing
(Timeline) giving exactly what smoothing the whole clip at once gives."""

from __future__ import annotations

import numpy as np
import pytest

from stages.faces.tracking import Anchor, FaceTracker, Timeline, box_between, iou, smooth_one


def _seen(tracker, t, *boxes, shot=0):
    """Feed one detection frame with ``boxes`` (all confident); {track id: its box} of the tracks seen on it."""
    arr = np.array(boxes, np.float32).reshape(-1, 4)
    tracker.update(int(t * 100), t, shot, arr, np.full(len(arr), 0.999), np.zeros((len(arr), 5, 2)))
    return {tr.id: tr.last_box.tolist() for tr in tracker.tracks if tr.last_t == t}


# frames 15 and 20 of the tests' VFR fast-pan clip (320x240), 0.24 s apart: the face moved 0.75 of its width
FAST_PAN = ([90, 87, 159, 175], [139, 72, 207, 158])


def test_a_face_that_moved_fast_without_overlap_is_followed():
    a, b = FAST_PAN
    assert iou(np.float32(a), np.float32([b]))[0] < 0.2  # overlap alone cannot follow it
    tracker = FaceTracker()
    assert _seen(tracker, 0.627, a) == {0: a}
    assert _seen(tracker, 0.867, b) == {0: b}
    assert len(tracker.tracks) == 1


def test_a_fast_face_is_followed_rather_than_another_face_further_away():
    a, b = FAST_PAN
    far = [260, 60, 330, 150]  # same size, 2 widths further on
    tracker = FaceTracker()
    _seen(tracker, 0.627, a)
    assert _seen(tracker, 0.867, far, b) == {0: b, 1: far}  # the far face is someone new


def test_a_track_does_not_jump_to_a_face_it_saw_beside_it():
    first, other = [100, 100, 170, 180], [185, 100, 255, 180]  # same size, centres 1.2 widths apart
    tracker = FaceTracker()
    assert _seen(tracker, 0.0, first, other) == {0: first, 1: other}
    assert _seen(tracker, 0.2, other) == {1: other}  # the first face is not detected: lost for now, not the neighbour
    assert tracker.tracks[0].timeline.anchors[-1].box is None and not tracker.tracks[0].ended


def test_a_face_too_far_or_of_another_size_starts_a_track_of_its_own():
    first = [100, 100, 170, 180]
    tracker = FaceTracker()
    _seen(tracker, 0.0, first)
    assert _seen(tracker, 0.1, [200, 100, 270, 180]) == {1: [200, 100, 270, 180]}  # 1.3 widths away after 0.1 s
    assert _seen(tracker, 0.2, [150, 100, 185, 140]) == {2: [150, 100, 185, 140]}  # half the size, close by
    assert tracker.tracks[0].detections == [(0, 0.0, pytest.approx(0.999))]


def test_a_shot_boundary_ends_every_track_and_a_lost_face_ends_after_max_gap():
    box = [100, 100, 170, 180]
    tracker = FaceTracker(max_gap_s=1.0)
    _seen(tracker, 0.0, box, shot=0)
    assert _seen(tracker, 0.2, box, shot=1) == {1: box}  # the same place after a cut: another track
    assert tracker.tracks[0].ended and tracker.tracks[0].shot == 0 and tracker.tracks[1].shot == 1
    _seen(tracker, 0.6, shot=1)
    assert not tracker.tracks[1].ended  # 0.4 s without it: lost for now
    _seen(tracker, 1.4, shot=1)
    assert tracker.tracks[1].ended and tracker.active == []


def test_a_new_track_is_not_held_back_over_the_detection_frame_that_missed_it():
    box = [100, 100, 170, 180]
    tracker = FaceTracker(max_gap_s=1.0, smooth=1)
    _seen(tracker, 0.0, shot=0)  # looked, no face
    _seen(tracker, 0.2, box, shot=0)
    tracker.finish()
    tl = tracker.tracks[0].timeline
    assert [tl.box_at(t, int(t * 100)).present for t in (0.0, 0.1, 0.2, 0.3, 0.7, 0.8)] == [False, True, True, True, True, False]


def whole_clip_boxes(anchors, window, max_gap_s, frames):
    """The straightforward way: smooth every anchor of the finished clip, then look each frame up."""
    present = [a for a in (smooth_one(anchors, k, window, max_gap_s) for k in range(len(anchors))) if a.box is not None]
    empty = [a.t for a in anchors if a.box is None]
    out = []
    for idx, t in frames:
        before = [a for a in present if a.t < t]
        after = [a for a in present if a.t >= t]
        out.append(box_between(t, idx, before[-1] if before else None, after[0] if after else None, max_gap_s,
                               lambda t0, t1: any(t0 <= e <= t1 for e in empty)))
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


def test_a_box_is_not_held_across_a_detection_frame_that_found_no_face():
    box, lm = np.array([10, 20, 60, 80], np.float32), np.zeros((5, 2), np.float32)
    tl = Timeline(1, 1.0)
    for i, t in enumerate((0.0, 0.2, 0.4)):  # a fade-in: the detector looked and found no face
        tl.add(Anchor(5 * i, t))
    tl.add(Anchor(15, 0.6, box, lm, 0.99, 1))
    tl.add(Anchor(20, 0.8))  # a cut away after it
    tl.settle(final=True)
    assert [tl.box_at(t, i).present for i, t in ((8, 0.32), (10, 0.4), (12, 0.48), (18, 0.72), (20, 0.8), (21, 0.84))] \
        == [False, False, True, True, False, False]
