"""Segments of a clip for timelines (``faces.segments``, ``dfer run --segments``; issue 24, ``docs/timelines.md``).

A segmented run makes each segment of each clip a unit of work (``pipeline/engine/units.py``): keyframes, context
and classify run once per segment, while faces and expression run once per file and are shared. A segment is a unit
part ``{"segment": i, "start_s": s, "end_s": e}`` (with ``"subject": k`` for another person under
``faces.subjects=all``): its start and end are in its cache keys, so a new segment length recomputes only the
per-segment stages. A per-unit stage sees only the segment's frames (:func:`window`): its frame indices (keyframes,
context windows) count from the segment's first frame, its timestamps stay the clip's.

Segments are ``LENGTH[:STRIDE]`` (a segment of LENGTH seconds every STRIDE seconds, default STRIDE = LENGTH; the
last one ends with the clip, and none starts after a segment that reached the end) or ``shots`` (one per shot of
the faces stage). A segment where the person's face is on less than ``faces.segment_min_face`` of its frames is
not a unit: the timeline lists it with no prediction and the reason.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

SHOTS = "shots"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|ms|min)\s*$", re.IGNORECASE)
_SCALE = {"s": 1.0, "ms": 0.001, "min": 60.0}
EPS = 5e-4  # segment bounds are kept to the millisecond: a frame at t belongs to [start, end) within half of one
USAGE = "LENGTH[:STRIDE] with a unit (e.g. 4s, 4s:2s, 1.5s, 500ms, 1min) or 'shots'"


@dataclass(frozen=True)
class SegmentSpec:
    """What ``faces.segments`` asks for: ``shots``, or ``length``/``stride`` seconds."""

    shots: bool = False
    length: float = 0.0
    stride: float = 0.0

    def __str__(self) -> str:
        if self.shots:
            return SHOTS
        text = f"{self.length:g}s"
        return text if self.stride == self.length else f"{text}:{self.stride:g}s"


def _seconds(text: str, what: str, value: str) -> float:
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{what} '{text.strip()}' is not a duration: segments are {USAGE}")
    s = float(m.group(1)) * _SCALE[m.group(2).lower()]
    if not (math.isfinite(s) and s > 0):
        raise ValueError(f"{what} must be more than 0 seconds: segments are {USAGE}")
    return s


def parse_segments(value) -> SegmentSpec | None:
    """``faces.segments`` as given (a string, or a number of seconds from YAML) -> its spec; None: no segments.
    Raises ValueError naming the problem (the config layer turns it into an error naming the setting, exit 2)."""
    if value is None:
        return None
    if isinstance(value, (bool, int, float)):  # YAML reads 4:2 as the number 242 (base 60), 4 as a number
        raise ValueError(f"segments are {USAGE}, not a bare number (in YAML and --set, 4:2 reads as 242: write 4s:2s)")
    if not isinstance(value, str):
        raise ValueError(f"segments are {USAGE}")
    text = value.strip()
    if text.lower() in ("", "none", "off"):
        return None
    if text.lower() == SHOTS:
        return SegmentSpec(shots=True)
    length_text, sep, stride_text = text.partition(":")
    length = _seconds(length_text, "the length", value)
    stride = _seconds(stride_text, "the stride", value) if sep else length
    return SegmentSpec(length=round(length, 3), stride=round(stride, 3))


def spans(spec: SegmentSpec, t: np.ndarray, duration: float, shots: list[dict] | None = None) -> list[tuple[float, float]]:
    """[start, end) seconds of each segment of a clip whose frames are at ``t`` (``duration``: its end; ``shots``:
    the faces stage's, for ``shots``)."""
    if spec.shots:
        n = len(t)
        out = []
        for s in shots or [{"first": 0, "stop": n}]:
            first, stop = int(s["first"]), int(s["stop"])
            if first < n and stop > first:
                out.append((float(t[first]), float(t[stop]) if stop < n else duration))
        return [(round(a, 3), round(b, 3)) for a, b in out]
    out, k = [], 0
    while True:
        start = round(k * spec.stride, 3)
        if start >= duration - EPS:
            break
        end = round(min(start + spec.length, duration), 3)
        out.append((start, end))
        if end >= duration - EPS:
            break
        k += 1
    return out


def window(t: np.ndarray, part: dict) -> tuple[int, int] | None:
    """[first, stop) frames of the segment a unit part names (None: the part is not a segment, the whole clip)."""
    if "start_s" not in part:
        return None
    first = int(np.searchsorted(t, float(part["start_s"]) - EPS, side="left"))
    stop = int(np.searchsorted(t, float(part["end_s"]) - EPS, side="left"))
    return first, max(first, stop)


def part(segment: int, start: float, end: float, subject: int = 0) -> dict:
    """The unit part of a segment (the subject only for another person than the clip's)."""
    return {**({"subject": subject} if subject else {}), "segment": segment, "start_s": start, "end_s": end}
