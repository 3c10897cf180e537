"""Shot boundaries, found on the frames the faces stage decodes anyway (no second pass over the video).

Each decoded frame's luma plane (the Y plane of a YUV frame, read in place: no colour conversion) is shrunk to a
thumbnail of at most :data:`THUMB_SIDE` pixels a side (OpenCV's area filter), and two things are measured on it:

- **content change**: the mean absolute difference from the previous frame's thumbnail, on a 0-255 scale (a
  limited-range video's luma is stretched to it first). A **cut** is a frame whose change reaches ``cut_threshold``
  (default 27), at least ``min_shot_s`` after the last boundary. This is PySceneDetect's ``ContentDetector`` with
  ``luma_only=True`` (the mean absolute difference of the HSV value channel, threshold 27) and its flash filter in
  ``SUPPRESS`` mode; ``benchmarks/scene_cuts.py`` runs both side by side on the real-footage fixtures.
- **darkness**: the mean luma, 0-255 above black. A frame below ``dark_threshold`` (default 12, the threshold of
  PySceneDetect's ``ThresholdDetector``) is dark; a shot boundary is placed where a run of dark frames begins and
  where it ends (a fade to black and a fade from black, or a dip to black between two scenes), whatever its length.
  No content cut is placed on a dark frame or on the first frame after one (the change from black is the fade's).

Boundaries are decided on the frame itself (no frame waits for a later one), so the stage knows each frame's shot
as soon as it is decoded. The result: :class:`Shot` ``(first, stop)`` frame ranges, each with how it began
(``start``: the clip's first frame, ``cut``, ``fade_out``: the first dark frame, ``fade_in``: the first frame after
darkness).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

THUMB_SIDE = 160


@dataclass
class Shot:
    first: int  # first frame index
    stop: int  # one past the last frame
    t_start: float
    t_end: float  # time of the last frame
    start: str  # "start" | "cut" | "fade_out" | "fade_in"

    def to_json(self) -> dict:
        return asdict(self)


def _luma(frame) -> tuple[np.ndarray, float, float]:
    """The frame's luma plane (a view of its Y plane when it has one), its black level and the factor that
    stretches it to 0-255."""
    name = frame.format.name
    if name.startswith(("yuv", "yuvj", "nv12", "nv21")) and frame.planes:
        plane = frame.planes[0]
        y = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
        full = name.startswith("yuvj") or str(getattr(frame, "color_range", "")).endswith(("2", "JPEG"))
        return y, (0.0 if full else 16.0), (1.0 if full else 255.0 / 219.0)
    return frame.to_ndarray(format="gray"), 0.0, 1.0


class ShotDetector:
    """Feed every decoded frame in order (:meth:`add`); :meth:`shots` at the end."""

    def __init__(self, cut_threshold: float, dark_threshold: float, min_shot_s: float):
        self.cut_threshold, self.dark_threshold, self.min_shot_s = cut_threshold, dark_threshold, min_shot_s
        self.prev: np.ndarray | None = None
        self.prev_dark = False
        self.bounds: list[tuple[int, float, str]] = []  # (first frame, its time, how the shot began)
        self.n, self.last_t = 0, 0.0
        self.size: tuple[int, int] | None = None

    def _thumb(self, frame) -> tuple[np.ndarray, float]:
        y, black, stretch = _luma(frame)
        if self.size is None:
            h, w = y.shape
            s = min(1.0, THUMB_SIDE / max(w, h))
            self.size = (max(2, int(round(w * s))), max(2, int(round(h * s))))
        small = cv2.resize(y, self.size, interpolation=cv2.INTER_AREA).astype(np.float32)
        return small * stretch, black * stretch

    def add(self, index: int, t: float, frame) -> int:
        """Take frame ``index`` (decode order, from 0) at ``t`` seconds; returns the index of its shot."""
        if not self.bounds:
            self.bounds.append((index, t, "start"))
        thumb, black = self._thumb(frame)
        dark = bool(self.dark_threshold > 0 and float(thumb.mean()) - black < self.dark_threshold)
        if self.prev is not None:
            if dark != self.prev_dark:
                self.bounds.append((index, t, "fade_out" if dark else "fade_in"))
            elif not dark and self.cut_threshold > 0 and t - self.bounds[-1][1] >= self.min_shot_s - 1e-9:
                if float(np.abs(thumb - self.prev).mean()) >= self.cut_threshold:
                    self.bounds.append((index, t, "cut"))
        self.prev, self.prev_dark = thumb, dark
        self.n, self.last_t = index + 1, t
        return len(self.bounds) - 1

    def shots(self, times) -> list[Shot]:
        """The shots of the clip (``times``: every frame's timestamp)."""
        out = []
        for k, (first, t0, start) in enumerate(self.bounds):
            stop = self.bounds[k + 1][0] if k + 1 < len(self.bounds) else self.n
            out.append(Shot(first, stop, float(t0), float(times[stop - 1]), start))
        return out
