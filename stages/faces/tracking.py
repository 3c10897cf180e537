"""Face tracking within shots, box smoothing and interpolation between detections (pure numpy).

**Tracks.** Every confident face (``min_score``) on a detection frame continues a track or starts one. A track lives
inside one shot: at a shot boundary every track ends, and the faces after it start new ones (a box is never carried
over a cut). On each detection frame the tracks are continued, in this order:

1. by overlap: the pairs of (track, detection) with the highest IoU between the track's last box and the detection,
   at least ``iou_min``, greedily;
2. else by distance, for a face that moved fast (a head turn, a camera pan; detections a fifth of a second apart
   can leave no overlap): for each track left, the detection left nearest to its last box whose size is similar
   (side, the square root of the area, within a factor ``SIZE_RATIO``) and whose centre lies within ``reach`` of the
   last box's centre, ``reach = side * min(REACH_BASE + REACH_PER_S * dt, REACH_MAX)`` (``dt``: seconds since that
   box) - a face moving up to 4 of its widths a second, never more than 1.5 widths from where it was. A detection
   that overlaps the last box of another track is never taken this way, so a track does not jump from one person
   to the next; nor does it take a face of another size or further away.

A detection left over starts a new track. A track that no detection continues for longer than ``max_gap_s`` ends.
Which person a track shows, across tracks and shots, is :mod:`stages.faces.identity`'s question.

Each track keeps its own :class:`Timeline` (smoothing, interpolation, holding at its ends), fed one anchor per
detection frame of its shot from its first detection on (an empty one where it was not found), and one empty
anchor for the detection frame of the same shot before its first: so a box is held only towards frames where no
detection looked and missed it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU between one box ``a`` (4,) and boxes ``b`` (N, 4), boxes as x1, y1, x2, y2."""
    x1 = np.maximum(a[0], b[:, 0])
    y1 = np.maximum(a[1], b[:, 1])
    x2 = np.minimum(a[2], b[:, 2])
    y2 = np.minimum(a[3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


@dataclass
class Anchor:
    """A track's face on one detection frame (``box`` is None when it was not found)."""

    index: int
    t: float
    box: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    score: float = 0.0
    n_faces: int = 0


SIZE_RATIO = 1.5  # a face followed by distance has a side within this factor of the track's last box
REACH_BASE = 0.5  # its centre within (REACH_BASE + REACH_PER_S * seconds elapsed) sides of the last box's centre,
REACH_PER_S = 4.0
REACH_MAX = 1.5  # and never more than REACH_MAX sides away


def _sides(boxes: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))


def _centres(boxes: np.ndarray) -> np.ndarray:
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)


def confident(boxes, scores, landmarks, min_score: float):
    """The detections scoring at least ``min_score``: (boxes (N, 4), scores (N,), landmarks (N, 5, 2) or None),
    N possibly 0."""
    if boxes is None or len(boxes) == 0:
        return np.empty((0, 4), np.float32), np.empty(0, np.float32), None
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    keep = scores >= min_score
    lms = None if landmarks is None else np.asarray(landmarks, dtype=np.float32).reshape(-1, 5, 2)[keep]
    return boxes[keep], scores[keep], lms


def match(refs: list[np.ndarray], boxes: np.ndarray, dts: list[float | None], iou_min: float) -> dict[int, int]:
    """Which detection continues which reference box (the tracking rule above): ``{reference index: detection
    index}``. ``dts``: seconds since each reference box (None: overlap only)."""
    out: dict[int, int] = {}
    if not refs or not len(boxes):
        return out
    overlaps = np.stack([iou(r, boxes) for r in refs])
    while True:
        k, j = np.unravel_index(int(np.argmax(overlaps)), overlaps.shape)
        if overlaps[k, j] < iou_min:
            break
        out[int(k)] = int(j)
        overlaps[k, :] = -1
        overlaps[:, j] = -1
    taken = set(out.values())
    for k, ref in enumerate(refs):
        if k in out or dts[k] is None:
            continue
        side = float(_sides(ref[None])[0])
        if side <= 0:
            continue
        ratio = _sides(boxes) / side
        distance = np.linalg.norm(_centres(boxes) - _centres(ref[None]), axis=1) / side
        ok = (ratio <= SIZE_RATIO) & (ratio >= 1 / SIZE_RATIO) & (distance <= min(REACH_BASE + REACH_PER_S * max(dts[k], 0.0), REACH_MAX))
        ok[list(taken)] = False
        others = [r for m, r in enumerate(refs) if m != k]
        if others:  # a detection on another track's face is not this track's
            ok &= ~np.array([(iou(b, np.stack(others)) >= iou_min).any() for b in boxes])
        if ok.any():
            j = int(np.flatnonzero(ok)[np.argmin(distance[ok])])
            out[k] = j
            taken.add(j)
    return out


@dataclass
class Track:
    """One face followed through one shot."""

    id: int
    shot: int
    timeline: "Timeline | None"  # None once no frame still to be written can show it
    last_box: np.ndarray
    last_t: float
    first_t: float
    detections: list[tuple[int, float, float]] = field(default_factory=list)  # (frame index, t, score)
    sides: list[float] = field(default_factory=list)  # the side (sqrt of the area) of each detected box
    ended: bool = False


class FaceTracker:
    """All the faces of one clip, tracked within shots (the rule in the module docstring).

    :meth:`update` takes the detection frames in order; ``tracks`` holds every track ever started, ``active`` the
    ones still followed."""

    def __init__(self, min_score: float = 0.9, iou_min: float = 0.2, max_gap_s: float = 1.0, smooth: int = 3):
        self.min_score, self.iou_min, self.max_gap_s, self.smooth = min_score, iou_min, max_gap_s, smooth
        self.tracks: list[Track] = []
        self.active: list[Track] = []
        self.shot: int | None = None
        self.last_frame: tuple[int, float] | None = None  # the last detection frame of the current shot

    def _end(self, track: Track) -> None:
        track.ended = True
        track.timeline.settle(final=True)

    def update(self, index: int, t: float, shot: int, boxes, scores, landmarks) -> int:
        """One detection frame's detections (arrays or None) on frame ``index`` of shot ``shot``; returns how many
        confident faces it had."""
        if shot != self.shot:
            for tr in self.active:
                self._end(tr)
            self.active, self.shot, self.last_frame = [], shot, None
        boxes, scores, lms = confident(boxes, scores, landmarks, self.min_score)
        n = len(boxes)
        pairs = match([tr.last_box for tr in self.active], boxes, [t - tr.last_t for tr in self.active], self.iou_min)
        still = []
        for k, tr in enumerate(self.active):
            j = pairs.get(k)
            if j is None:
                tr.timeline.add(Anchor(index, t, n_faces=n))
                if t - tr.last_t > self.max_gap_s:
                    self._end(tr)
                    continue
            else:
                self._seen(tr, index, t, boxes[j], lms[j], float(scores[j]), n)
            still.append(tr)
        for j in sorted(set(range(n)) - set(pairs.values())):
            tr = Track(len(self.tracks), shot, Timeline(self.smooth, self.max_gap_s), boxes[j], t, t)
            if self.last_frame is not None:  # the detection frame before looked and did not see it
                tr.timeline.add(Anchor(self.last_frame[0], self.last_frame[1], n_faces=0))
            self._seen(tr, index, t, boxes[j], lms[j], float(scores[j]), n)
            self.tracks.append(tr)
            still.append(tr)
        self.active = still
        self.last_frame = (index, t)
        return n

    @staticmethod
    def _seen(tr: Track, index, t, box, lm, score, n) -> None:
        tr.timeline.add(Anchor(index, t, box, lm, score, n))
        tr.last_box, tr.last_t = box, t
        tr.detections.append((index, t, score))
        tr.sides.append(float(_sides(box[None])[0]))

    def finish(self) -> None:
        """The clip is over: every track ends."""
        for tr in self.active:
            self._end(tr)
        self.active = []


def smooth_one(anchors: list[Anchor], k: int, window: int, max_gap_s: float) -> Anchor:
    """Anchor ``k`` with its box and landmarks averaged over its present neighbours (centred window of
    ``window`` detections; the anchor itself weighs double). Only neighbours within ``max_gap_s`` take
    part, so a shot cut is not blurred."""
    a = anchors[k]
    h = max(0, window // 2)
    if h == 0 or a.box is None:
        return a
    nb = [b for b in anchors[max(0, k - h) : k + h + 1] if b.box is not None and abs(b.t - a.t) <= max_gap_s]
    w = np.array([1.0 + (b is a) for b in nb])
    box = np.average(np.stack([b.box for b in nb]), axis=0, weights=w)
    lm = np.average(np.stack([b.landmarks for b in nb]), axis=0, weights=w)
    return Anchor(a.index, a.t, box.astype(np.float32), lm.astype(np.float32), a.score, a.n_faces)


@dataclass
class FrameBox:
    box: np.ndarray | None
    landmarks: np.ndarray | None
    detected: bool
    interpolated: bool
    present: bool
    score: float = 0.0  # the detector's score on a detection frame; 0 elsewhere
    held: bool = False  # the box of the nearest detection, held (not between two detections)


def box_between(t: float, index: int, prev: Anchor | None, nxt: Anchor | None, max_gap_s: float,
                seen_empty: Callable[[float, float], bool] | None = None) -> FrameBox:
    """The primary face box for frame ``index`` at time ``t``, given the last smoothed present anchor before
    ``t`` and the first at or after it.

    Between two anchors closer than ``max_gap_s`` the box is linearly interpolated in time; within
    ``max_gap_s / 2`` of a single anchor (before the first detection, after the last, beside a longer gap) it is
    held, but not across a detection frame where the primary face was not found (``seen_empty(t0, t1)``: is
    there one at a time in ``[t0, t1]``?), so the frames of a fade-in or a cut before the face appears stay
    without it; otherwise the face is missing for this frame (``present=False``; the nearest box, if any, is
    still returned so the crop stays on the last known face).
    """
    if prev is None and nxt is None:
        return FrameBox(None, None, False, False, False)
    if nxt is not None and nxt.index == index:
        return FrameBox(nxt.box, nxt.landmarks, True, False, True, nxt.score)
    if prev is not None and prev.index == index:
        return FrameBox(prev.box, prev.landmarks, True, False, True, prev.score)
    if prev is not None and nxt is not None and nxt.t - prev.t <= max_gap_s:
        w = (t - prev.t) / max(nxt.t - prev.t, 1e-9)
        box = (1 - w) * prev.box + w * nxt.box
        lm = (1 - w) * prev.landmarks + w * nxt.landmarks
        return FrameBox(box.astype(np.float32), lm.astype(np.float32), False, True, True)
    cands = [a for a in (prev, nxt) if a is not None]
    near = min(cands, key=lambda a: abs(a.t - t))
    held = abs(near.t - t) <= max_gap_s / 2 and not (seen_empty and seen_empty(min(t, near.t), max(t, near.t)))
    return FrameBox(near.box, near.landmarks, False, held, held, held=held)


class Timeline:
    """The anchors of one track as they arrive, smoothed incrementally.

    Anchor ``k`` is final once ``anchors[k + h]`` exists (``h = window // 2``), so each anchor is
    smoothed for good once; the last ``h`` are smoothed provisionally at every :meth:`settle`.
    Same results as smoothing the whole clip's anchors at once and looking each frame up among them,
    in time linear in the clip's length; with :meth:`forget_before` its memory stays bounded too.
    """

    def __init__(self, window: int, max_gap_s: float):
        self.window, self.max_gap_s = window, max_gap_s
        self.h = max(0, window // 2)
        self.anchors: list[Anchor] = []  # anchors[k - self._base] is the clip's k-th anchor
        self._base = 0
        self._n_final = 0
        self._present: list[Anchor] = []  # final smoothed anchors with a box, in time order
        self._times: list[float] = []
        self._tail: list[Anchor] = []  # provisional smoothed anchors with a box (the last h)
        self._tail_times: list[float] = []
        self._empty_times: list[float] = []  # detection frames without the primary face

    def add(self, anchor: Anchor) -> None:
        self.anchors.append(anchor)
        if anchor.box is None:
            self._empty_times.append(anchor.t)

    def seen_empty(self, t0: float, t1: float) -> bool:
        """Whether a detection frame at a time in ``[t0, t1]`` had no primary face."""
        i = bisect.bisect_left(self._empty_times, t0)
        return i < len(self._empty_times) and self._empty_times[i] <= t1

    def _count(self) -> int:
        return self._base + len(self.anchors)

    def horizon(self) -> float:
        """Time of the last anchor whose smoothed box is final (-inf before there is one)."""
        n = self._count()
        return self.anchors[n - 1 - self.h - self._base].t if n > self.h else -np.inf

    def _smooth(self, k: int) -> Anchor:
        return smooth_one(self.anchors, k - self._base, self.window, self.max_gap_s)

    def settle(self, final: bool = False) -> None:
        """Smooth what can be smoothed for good (everything when ``final``); the rest provisionally."""
        n = self._count()
        upto = n if final else max(self._n_final, n - self.h)
        for k in range(self._n_final, upto):
            a = self._smooth(k)
            if a.box is not None:
                self._present.append(a)
                self._times.append(a.t)
        self._n_final = upto
        self._tail = [a for a in (self._smooth(k) for k in range(upto, n)) if a.box is not None]
        self._tail_times = [a.t for a in self._tail]

    def forget_before(self, t: float) -> None:
        """Drop what no frame at ``t`` or later can need: anchors already smoothed for good and out of
        reach of the smoothing window, and final anchors before the last one preceding ``t``."""
        drop = max(0, min(self._n_final - self.h, self._count()) - self._base)
        if drop:
            del self.anchors[:drop]
            self._base += drop
        j = bisect.bisect_left(self._times, t) - 1
        if j > 0:
            del self._present[:j]
            del self._times[:j]
        keep_from = min(t, self._times[0]) if self._times else t  # a frame at t or later looks back to there at most
        del self._empty_times[: bisect.bisect_left(self._empty_times, keep_from)]

    def box_at(self, t: float, index: int) -> FrameBox:
        j = bisect.bisect_left(self._times, t)
        if j < len(self._present):
            return box_between(t, index, self._present[j - 1] if j > 0 else None, self._present[j], self.max_gap_s,
                               self.seen_empty)
        k = bisect.bisect_left(self._tail_times, t)
        prev = self._tail[k - 1] if k > 0 else (self._present[-1] if self._present else None)
        nxt = self._tail[k] if k < len(self._tail) else None
        return box_between(t, index, prev, nxt, self.max_gap_s, self.seen_empty)
