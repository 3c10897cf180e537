"""Synthetic test media made by code: real, short video files for tests.

Every clip is rendered from scikit-image's ``astronaut()`` photograph (a real
face) pasted on a static textured background, then encoded with PyAV.  The
module also writes deliberately broken inputs (empty, text, truncated,
audio-only, unreadable) for error-path tests.

Public API
----------
``make_face_clip(path, *, codec, size, fps, seconds, motion, rotation, vfr,
faces, expression, seed) -> ClipSpec``
    A real encoded clip plus the ground truth (timestamps, face boxes, ...).
``make_zero_byte``, ``make_text_as_video``, ``make_truncated``,
``make_audio_only``, ``make_unreadable``
    Bad inputs.
``unprivileged_subprocess_kwargs``, ``file_modes_enforced``
    Start a subprocess that honours file modes, so that ``chmod 000`` means
    something even when the tests run as root.
``write_frames(path, frames, size, fps, codec)``, ``background(width, height, seed)``
    Encode frames made elsewhere (``tests/real_media.py``) with the same settings; the textured background.
``unicode_name``
    A file name with spaces and non-ASCII characters.
``upright``
    Turn a decoded (stored) frame upright from its ``frame.rotation``.

Codecs, containers and sizes (verified with PyAV 18.1 / FFmpeg in this venv)
------------------------------------------------------------------------------
=========  =============  ============  ===================================
codec      encoder        containers    odd width/height with yuv420p?
=========  =============  ============  ===================================
``h264``   libx264        .mp4 .mkv     no  (encoder refuses to open)
``hevc``   libx265        .mp4 .mkv     no  (encoder refuses to open)
``vp9``    libvpx-vp9     .webm .mkv    yes (e.g. 321x243 round-trips)
``mpeg4``  mpeg4 (part 2) .avi .mp4     yes (e.g. 321x243 round-trips)
=========  =============  ============  ===================================

All clips are yuv420p.  Pass even sizes for h264/hevc (a ``ValueError``
says so otherwise); use ``vp9`` or ``mpeg4`` when a test needs an odd frame
size.  Encoders run single-threaded with fast settings (x264/x265
``ultrafast``, VP9 ``deadline=realtime cpu-used=8``), and the ``bitexact``
flags are set, so a given seed gives byte-identical files.

Rotation convention (verified by decoding, and by OpenCV's auto-rotation)
-------------------------------------------------------------------------
``rotation`` is the counter-clockwise angle, in degrees, that
``VideoStream.set_display_rotation`` takes and PyAV reports back in
``av.VideoFrame.rotation``, normalised to [-180, 180): 180 reads back as
-180 and 270 as -90 (``ClipSpec.rotation`` holds the read-back value).  The file
stores the pixels *un-rotated*, like a phone does; a reader makes a decoded
frame upright with::

    upright = np.rot90(frame.to_ndarray(format="rgb24"), k=round(frame.rotation / 90))

``np.rot90`` with positive ``k`` rotates counter-clockwise.  For example a
clip made with ``rotation=90`` stores the picture turned 90 degrees
clockwise, decodes with ``frame.rotation == 90`` and needs ``k=1``.  (This
is the opposite sign of the legacy MP4 ``rotate`` tag and of OpenCV's
``CAP_PROP_ORIENTATION_META``, both clockwise: a phone's ``rotate=90``
portrait video reads back as ``frame.rotation == -90``.)  OpenCV's
auto-orientation of these clips gives exactly ``upright(...)``.
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import av
import cv2
import numpy as np

PathLike = Union[str, os.PathLike]
Box = tuple[float, float, float, float]

#: A file name with spaces, Latin diacritics and CJK characters.
unicode_name = "clip with spaces ünïcødé 表情.mp4"
UNICODE_NAME = unicode_name

# Face box in skimage.data.astronaut() measured once with
# facenet_pytorch.MTCNN(keep_all=True).detect(img, landmarks=True):
# box (181.05, 62.16, 267.75, 172.05), prob 0.999998, landmarks
# eyes (205.0, 101.7) (246.8, 103.7), nose (224.7, 129.0),
# mouth corners (201.7, 139.2) (245.3, 141.9).
REFERENCE_FACE_BOX: Box = (181.05, 62.16, 267.75, 172.05)
REFERENCE_MOUTH_CENTER = (223.5, 140.5)
REFERENCE_MOUTH_WIDTH = 43.6
# Region of the photograph that is pasted (x1, y1, x2, y2): face plus hair,
# chin and a margin, cut out with a feathered ellipse.
_PATCH_BOX = (136, 20, 312, 216)

_CODECS = {
    # codec: (encoder, allowed suffixes, options, needs even size)
    "h264": ("libx264", (".mp4", ".mkv"), {"preset": "ultrafast", "crf": "28"}, True),
    "hevc": (
        "libx265",
        (".mp4", ".mkv"),
        {"preset": "ultrafast", "crf": "30", "x265-params": "log-level=error"},
        True,
    ),
    "vp9": (
        "libvpx-vp9",
        (".webm", ".mkv"),
        {"deadline": "realtime", "cpu-used": "8", "crf": "40", "b": "0", "lag-in-frames": "0"},
        False,
    ),
    # Constant quantiser 8 (PyAV does not pass global_quality on per frame).
    "mpeg4": ("mpeg4", (".avi", ".mp4"), {"qmin": "8", "qmax": "8"}, False),
}
_VFR_TIME_BASE = Fraction(1, 90000)
# Alternating frame intervals for vfr=True: 1/50 s and 1/15 s (exact at 90 kHz).
_VFR_INTERVALS = (1800, 6000)
_MOTIONS = ("static", "pan", "zoom", "pan_zoom")


@dataclass
class ClipSpec:
    """Ground truth for a clip written by :func:`make_face_clip`.

    ``width``/``height`` are the stored (encoded) frame size;
    ``display_width``/``display_height`` the size after applying
    ``rotation`` (see the module docstring for the sign convention).
    ``fps`` is the nominal rate (the average rate for ``vfr`` clips).
    ``timestamps`` are the presentation times in seconds of each frame, as a
    decoder reports them (exact for the defaults; containers with a 1 ms time
    base such as WebM round them to the millisecond).

    ``face_boxes`` are per frame ``(x1, y1, x2, y2)`` of the primary (largest)
    face in upright display coordinates, ``None`` when ``faces == 0``;
    ``second_face_boxes`` likewise for the smaller face when ``faces == 2``.
    They map the MTCNN box of the source photograph, so MTCNN on the decoded
    frames agrees with them to IoU > 0.75.  ``expression`` is the ``(t0, t1)``
    window of the synthetic mouth-opening event, ``apex`` its peak time (both
    seconds), and ``expression_intensity`` the per-frame strength in [0, 1]
    (all zeros without an event).
    """

    path: Path
    codec: str
    width: int
    height: int
    display_width: int
    display_height: int
    fps: float
    n_frames: int
    timestamps: list[float]
    rotation: int = 0
    vfr: bool = False
    motion: str = "pan"
    faces: int = 1
    face_boxes: Optional[list[Box]] = None
    second_face_boxes: Optional[list[Box]] = None
    expression: Optional[tuple[float, float]] = None
    apex: Optional[float] = None
    expression_intensity: list[float] = field(default_factory=list)
    seed: int = 0

    @property
    def duration(self) -> float:
        """Nominal duration: last timestamp plus one nominal frame interval."""
        return self.timestamps[-1] + 1.0 / self.fps if self.timestamps else 0.0


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _face_patch() -> tuple[np.ndarray, np.ndarray]:
    """The astronaut face patch (RGB float32) and its feathered alpha mask."""
    from skimage import data

    x1, y1, x2, y2 = _PATCH_BOX
    patch = data.astronaut()[y1:y2, x1:x2].astype(np.float32)
    h, w = patch.shape[:2]
    alpha = np.zeros((h, w), np.float32)
    cv2.ellipse(alpha, (w // 2, h // 2), (int(w * 0.46), int(h * 0.48)), 0, 0, 360, 1.0, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 4.0)
    return patch, alpha


def _mouth_patch(intensity: float) -> np.ndarray:
    """Face patch with a dark open mouth blended in at ``intensity`` in [0, 1]."""
    patch, _ = _face_patch()
    if intensity <= 0:
        return patch
    mx = REFERENCE_MOUTH_CENTER[0] - _PATCH_BOX[0]
    my = REFERENCE_MOUTH_CENTER[1] - _PATCH_BOX[1]
    h, w = patch.shape[:2]
    mask = np.zeros((h, w), np.float32)
    axes = (int(round(REFERENCE_MOUTH_WIDTH * 0.42)), int(round(3 + 11 * intensity)))
    cv2.ellipse(mask, (int(round(mx)), int(round(my + 2))), axes, 0, 0, 360, 1.0, -1, cv2.LINE_AA)
    mask = cv2.GaussianBlur(mask, (0, 0), 1.0)[..., None] * min(1.0, intensity * 1.5)
    mouth_colour = np.array([70.0, 20.0, 25.0], np.float32)
    return patch * (1 - mask) + mouth_colour * mask


def background(width: int, height: int, seed: int) -> np.ndarray:
    """Static background (float32 RGB, 0..255): soft colour gradient plus low-frequency noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(90, 170, size=3).astype(np.float32)
    tilt = rng.uniform(-40, 40, size=3).astype(np.float32)
    ramp = (xx / max(width - 1, 1) * 0.6 + yy / max(height - 1, 1) * 0.4)[..., None]
    noise = rng.normal(0, 1, size=(height, width, 3)).astype(np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 3.0)
    noise *= 8.0 / max(float(noise.std()), 1e-6)
    return base + tilt * ramp + noise


def _paste(canvas: np.ndarray, patch: np.ndarray, alpha: np.ndarray, scale: float,
           centre: tuple[float, float]) -> Box:
    """Alpha-blend ``patch`` scaled about its centre onto ``canvas`` at ``centre``.

    Returns where the reference face box lands, in canvas coordinates.
    """
    ph, pw = patch.shape[:2]
    tx = centre[0] - scale * pw / 2.0
    ty = centre[1] - scale * ph / 2.0
    m = np.array([[scale, 0, tx], [0, scale, ty]], np.float32)
    size = (canvas.shape[1], canvas.shape[0])
    warped = cv2.warpAffine(patch, m, size, flags=cv2.INTER_LINEAR)
    a = cv2.warpAffine(alpha, m, size, flags=cv2.INTER_LINEAR)[..., None]
    canvas *= 1 - a
    canvas += warped * a
    bx1, by1, bx2, by2 = REFERENCE_FACE_BOX
    px, py = _PATCH_BOX[0], _PATCH_BOX[1]
    return (scale * (bx1 - px) + tx, scale * (by1 - py) + ty,
            scale * (bx2 - px) + tx, scale * (by2 - py) + ty)


def _draw_shapes(canvas: np.ndarray, u: float, seed: int) -> None:
    """Moving coloured discs and rectangles (the faces=0 content)."""
    rng = np.random.default_rng(seed + 1)
    h, w = canvas.shape[:2]
    for k in range(4):
        colour = tuple(float(c) for c in rng.uniform(20, 235, size=3))
        r = int(min(w, h) * rng.uniform(0.06, 0.12))
        phase = rng.uniform(0, 2 * math.pi)
        cx = int(w * (0.5 + 0.35 * math.cos(2 * math.pi * u + phase)))
        cy = int(h * (0.5 + 0.3 * math.sin(2 * math.pi * u * (1 + k % 2) + phase)))
        if k % 2:
            cv2.circle(canvas, (cx, cy), r, colour, -1, cv2.LINE_AA)
        else:
            cv2.rectangle(canvas, (cx - r, cy - r // 2), (cx + r, cy + r // 2), colour, -1)


def _expression_intensity(t: float, window: Optional[tuple[float, float]]) -> float:
    """Smooth 0 -> 1 -> 0 ramp over ``window`` (sin^2), peaking at its middle."""
    if window is None:
        return 0.0
    t0, t1 = window
    if not t0 < t < t1:
        return 0.0
    return math.sin(math.pi * (t - t0) / (t1 - t0)) ** 2


class _Layout:
    """Where the faces go: primary path over time and the static second face."""

    def __init__(self, width: int, height: int, motion: str, faces: int):
        patch, _ = _face_patch()
        ph, pw = patch.shape[:2]
        # Base scale: reference face height ~36 % of the short display side.
        face_h = REFERENCE_FACE_BOX[3] - REFERENCE_FACE_BOX[1]
        self.base = 0.36 * min(width, height) / face_h
        self.motion = motion
        zmax = 1.2 if "zoom" in motion else 1.0
        half_w, half_h = pw * self.base * zmax / 2, ph * self.base * zmax / 2
        right = width * (0.66 if faces == 2 else 1.0)
        self.x_lo, self.x_hi = half_w * 0.8, max(half_w * 0.8, right - half_w * 0.8)
        self.y_mid = height / 2.0
        self.y_amp = max(0.0, min(0.08 * height, height / 2.0 - half_h * 0.8))
        self.second_scale = 0.55 * self.base
        self.second_centre = (0.82 * width, 0.4 * height)
        if faces == 2 and self.motion in ("static", "zoom"):
            self.x_lo = self.x_hi = (self.x_lo + self.x_hi) / 2

    def primary(self, u: float) -> tuple[float, tuple[float, float]]:
        """(scale, centre) of the primary face at normalised time ``u`` in [0, 1]."""
        zoom = 0.9 - 0.3 * math.cos(2 * math.pi * u) if "zoom" in self.motion else 1.0
        if "pan" in self.motion:
            x = self.x_lo + (self.x_hi - self.x_lo) * (0.5 - 0.5 * math.cos(math.pi * u))
            y = self.y_mid + self.y_amp * math.sin(2 * math.pi * u)
        else:
            x, y = (self.x_lo + self.x_hi) / 2, self.y_mid
        return self.base * zoom, (x, y)


def _render(t: float, u: float, bg: np.ndarray, layout: _Layout, faces: int,
            window: Optional[tuple[float, float]], seed: int):
    """One upright RGB frame plus (primary box, second box, expression intensity)."""
    canvas = bg.copy()
    intensity = _expression_intensity(t, window)
    primary = second = None
    _, alpha = _face_patch()
    if faces == 0:
        _draw_shapes(canvas, u, seed)
    if faces == 2:
        second = _paste(canvas, _face_patch()[0], alpha, layout.second_scale, layout.second_centre)
    if faces >= 1:
        scale, centre = layout.primary(u)
        primary = _paste(canvas, _mouth_patch(intensity), alpha, scale, centre)
    frame = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    return frame, primary, second, intensity


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------


def _pts_ticks(fps: Fraction, seconds: float, vfr: bool) -> tuple[list[int], Fraction]:
    """Frame pts (in ticks) and their time base."""
    if not vfr:
        n = max(1, int(math.floor(seconds * fps + 1e-9)))
        return list(range(n)), 1 / fps
    ticks, t, k = [], 0, 0
    limit = seconds / _VFR_TIME_BASE
    while t < limit:
        ticks.append(t)
        t += _VFR_INTERVALS[k % len(_VFR_INTERVALS)]
        k += 1
    return ticks, _VFR_TIME_BASE


def _check_args(path: Path, codec: str, size: tuple[int, int], motion: str, rotation: int,
                vfr: bool, faces: int, expression) -> None:
    if codec not in _CODECS:
        raise ValueError(f"codec must be one of {sorted(_CODECS)}, got {codec!r}")
    _, suffixes, _, even = _CODECS[codec]
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{codec} clips need one of {suffixes}, got {path.name!r}")
    if even and (size[0] % 2 or size[1] % 2):
        raise ValueError(f"{codec} with yuv420p needs even width/height, got {size}; "
                         "use codec='vp9' or 'mpeg4' for odd sizes")
    if motion not in _MOTIONS:
        raise ValueError(f"motion must be one of {_MOTIONS}, got {motion!r}")
    if rotation % 90 or rotation % 360 not in (0, 90, 180, 270):
        raise ValueError(f"rotation must be a multiple of 90, got {rotation}")
    if path.suffix.lower() == ".avi" and (rotation % 360 or vfr):
        raise ValueError("AVI stores neither rotation metadata nor variable frame rate")
    if faces not in (0, 1, 2):
        raise ValueError(f"faces must be 0, 1 or 2, got {faces}")
    if expression is not None:
        if faces == 0:
            raise ValueError("an expression event needs a face")
        if motion != "static":
            raise ValueError("expression events need motion='static' so that only the face moves")
        if not 0 <= expression[0] < expression[1]:
            raise ValueError(f"expression window must be (t0, t1), 0 <= t0 < t1: {expression}")


def _open_video(path: Path, codec: str, width: int, height: int, fps: Fraction,
                time_base: Fraction, rotation: int):
    """Open an output container with one configured video stream."""
    encoder, _, options, _ = _CODECS[codec]
    container_options = {"fflags": "+bitexact"}
    if path.suffix.lower() == ".mp4":
        # Index at the front, so a truncated copy still opens (see make_truncated).
        container_options["movflags"] = "+faststart"
    out = av.open(str(path), "w", options=container_options)
    stream = out.add_stream(encoder, rate=fps, options=dict(options))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.time_base = time_base
    stream.time_base = time_base
    stream.codec_context.thread_count = 1
    stream.codec_context.gop_size = max(1, round(2 * float(fps)))  # a key frame every 2 s
    stream.codec_context.flags |= av.codec.context.Flags.bitexact
    if rotation % 360:
        stream.set_display_rotation(rotation)
    return out, stream


def _encode(out, stream, frames: Iterator[tuple[int, np.ndarray]], time_base: Fraction) -> None:
    for pts, rgb in frames:
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))
    out.close()


def write_frames(path: PathLike, frames: Iterable[np.ndarray], size: tuple[int, int], fps: int = 25,
                 codec: str = "h264") -> Path:
    """Encode upright RGB frames (``size`` = (width, height), uint8) at a constant ``fps`` (pts 0, 1, 2, ...),
    with this module's encoder settings (so a given list of frames gives the same bytes every time)."""
    path = Path(path)
    _check_args(path, codec, size, "static", 0, False, 1, None)
    rate = Fraction(fps)
    out, stream = _open_video(path, codec, size[0], size[1], rate, 1 / rate, 0)
    _encode(out, stream, enumerate(frames), 1 / rate)
    return path


def _normalise_rotation(rotation: int) -> int:
    """Map a multiple of 90 to the value PyAV reads back: 0, 90, -180 or -90."""
    r = rotation % 360
    return r - 360 if r >= 180 else r


def make_face_clip(path: PathLike, *, codec: str = "h264", size: tuple[int, int] = (320, 240),
                   fps: Union[int, float, Fraction] = 25, seconds: float = 2.0,
                   motion: str = "pan", rotation: int = 0, vfr: bool = False, faces: int = 1,
                   expression: Optional[tuple[float, float]] = None, seed: int = 0) -> ClipSpec:
    """Write a synthetic face video and return its ground truth.

    path: output file; its suffix picks the container (see module table).
    codec: "h264", "vp9", "mpeg4" or "hevc"; always yuv420p.
    size: (width, height) as *displayed*, i.e. upright.  With rotation 90/270
        the stored frames are (height, width).  Odd sizes need vp9 or mpeg4.
    fps: frame rate for constant-rate clips; for ``vfr=True`` the frame
        intervals alternate 1/50 s and 1/15 s (time base 1/90000) and
        ``ClipSpec.fps`` is the resulting average rate.
    seconds: duration; frames are at ``t < seconds``.
    motion: "static", "pan" (smooth left-to-right translation), "zoom"
        (scale 0.6x..1.2x and back) or "pan_zoom".
    rotation: 0/90/180/270 counter-clockwise display rotation written as a
        display matrix; the pixels are stored rotated the other way, so
        ``np.rot90(decoded, k=round(frame.rotation / 90))`` is upright.
    vfr: irregular timestamps (mp4/mkv/webm only).
    faces: 0 (background with moving shapes), 1, or 2 (a second, static,
        55 %-size copy at the right; the primary stays in the left part).
    expression: (t0, t1) seconds of a synthetic mouth-opening event on the
        primary face, sin^2 ramp, apex at (t0 + t1) / 2.  Needs
        ``motion="static"`` so nothing else moves.
    seed: background texture / shapes; same seed gives identical bytes.
    """
    path = Path(path)
    width, height = int(size[0]), int(size[1])
    _check_args(path, codec, (width, height), motion, rotation, vfr, faces, expression)
    quarter_turns = (rotation % 360) // 90
    stored_w, stored_h = (height, width) if quarter_turns % 2 else (width, height)
    rate = Fraction(fps).limit_denominator(100000)
    ticks, time_base = _pts_ticks(rate, seconds, vfr)
    timestamps = [float(p * time_base) for p in ticks]

    bg = background(width, height, seed)
    layout = _Layout(width, height, motion, faces)
    primary_boxes, second_boxes, intensities = [], [], []

    def frames() -> Iterator[tuple[int, np.ndarray]]:
        for pts, t in zip(ticks, timestamps):
            rgb, box1, box2, level = _render(t, t / seconds, bg, layout, faces, expression, seed)
            primary_boxes.append(box1)
            second_boxes.append(box2)
            intensities.append(level)
            yield pts, np.ascontiguousarray(np.rot90(rgb, k=-quarter_turns))

    out, stream = _open_video(path, codec, stored_w, stored_h, rate, time_base, rotation)
    _encode(out, stream, frames(), time_base)

    return ClipSpec(
        path=path, codec=codec, width=stored_w, height=stored_h,
        display_width=width, display_height=height,
        fps=float(rate) if not vfr else len(ticks) / seconds,
        n_frames=len(ticks), timestamps=timestamps,
        rotation=_normalise_rotation(rotation), vfr=vfr, motion=motion, faces=faces,
        face_boxes=primary_boxes if faces else None,
        second_face_boxes=second_boxes if faces == 2 else None,
        expression=tuple(expression) if expression else None,
        apex=(expression[0] + expression[1]) / 2 if expression else None,
        expression_intensity=intensities, seed=seed,
    )


def upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Undo display rotation: ``np.rot90(rgb, k=round(rotation / 90))``.

    ``rotation`` is ``av.VideoFrame.rotation`` (counter-clockwise degrees).
    """
    return np.rot90(rgb, k=int(round(rotation / 90)))


# --------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------


def make_zero_byte(path: PathLike) -> Path:
    """An empty file (0 bytes)."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def make_text_as_video(path: PathLike) -> Path:
    """A plain-text file with a video suffix (e.g. ``notes.mp4``)."""
    path = Path(path)
    path.write_text("This is not a video.\nJust some UTF-8 text: ünïcødé 表情.\n" * 20,
                    encoding="utf-8")
    return path


def make_truncated(src_clip: Union[ClipSpec, PathLike], path: PathLike,
                   keep_fraction: float = 0.4) -> Path:
    """Copy the first ``keep_fraction`` of the bytes of a valid clip.

    The mp4 clips of this module are written with ``+faststart`` (index in
    front of the media data), so the truncated copy still opens and lists
    its full frame count, but decoding yields fewer frames or fails part
    way.  A non-faststart mp4 cut this way would not open at all.
    """
    src = Path(src_clip.path if isinstance(src_clip, ClipSpec) else src_clip)
    if not 0 < keep_fraction < 1:
        raise ValueError(f"keep_fraction must be in (0, 1), got {keep_fraction}")
    data = src.read_bytes()
    path = Path(path)
    path.write_bytes(data[: int(len(data) * keep_fraction)])
    return path


def make_audio_only(path: PathLike, seconds: float = 1.0, sample_rate: int = 44100,
                    frequency: float = 440.0) -> Path:
    """An .mp4/.m4a holding one AAC audio stream (a sine tone) and no video."""
    path = Path(path)
    out = av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"})
    stream = out.add_stream("aac", rate=sample_rate, layout="mono")
    n = int(seconds * sample_rate)
    tone = (0.3 * np.sin(2 * np.pi * frequency * np.arange(n) / sample_rate)).astype(np.float32)
    chunk = stream.codec_context.frame_size or 1024
    for start in range(0, n, chunk):
        frame = av.AudioFrame.from_ndarray(tone[None, start:start + chunk], format="fltp",
                                           layout="mono")
        frame.sample_rate, frame.pts = sample_rate, start
        frame.time_base = Fraction(1, sample_rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))
    out.close()
    return path


def make_tiny_video(path: PathLike, size: tuple[int, int] = (2, 2), n_frames: int = 5, fps: int = 25) -> Path:
    """A valid H.264 clip of ``size`` pixels (even numbers), one grey frame repeated: far too small for a face."""
    path = Path(path)
    grey = np.full((size[1], size[0], 3), 128, np.uint8)
    write_frames(path, (grey for _ in range(n_frames)), size, fps)
    return path


def make_unreadable(path: PathLike, src: Optional[PathLike] = None) -> Path:
    """A file with mode 000: a copy of ``src`` (default: a tiny valid clip).

    Root ignores file modes (CAP_DAC_OVERRIDE), so as root the file stays
    readable by the test process itself.  Run the program under test with
    ``subprocess.run(..., **unprivileged_subprocess_kwargs())`` to make the
    mode count; :func:`file_modes_enforced` says whether that works here.
    """
    path = Path(path)
    if src is None:
        make_face_clip(path, codec="mpeg4", size=(160, 120), seconds=0.2, motion="static")
    else:
        shutil.copyfile(src, path)
    os.chmod(path, 0)
    return path


def is_root() -> bool:
    """True when running as uid 0 (where chmod 000 does not stop reads)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def unprivileged_subprocess_kwargs() -> dict:
    """Keyword arguments for ``subprocess.run`` so that the child honours file modes.

    Not root: returns ``{}``.  Root: returns ``{"preexec_fn": f}`` where ``f``
    drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the capability
    bounding set (``prctl(PR_CAPBSET_DROP)``) just before ``exec``.  The child
    is still uid 0 with the same HOME, interpreter, venv and write access
    to root-owned files, but opening a mode-000 file fails with EACCES
    (``cat: ...: Permission denied``, ``av.error.PermissionError``).

    Why not switch to ``nobody`` (``user=65534``)?  The venv's interpreter
    is a symlink into ``/root/.pyenv`` and ``/root`` is mode 0700, so
    ``nobody`` cannot even start Python here (nor enter pytest's
    ``tmp_path``, also under a 0700 directory).
    """
    if not is_root():
        return {}
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork

    def drop_file_permission_override() -> None:
        for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
            if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")

    return {"preexec_fn": drop_file_permission_override}


def file_modes_enforced(path: PathLike) -> bool:
    """True if a child started with :func:`unprivileged_subprocess_kwargs`
    cannot open ``path`` (e.g. a :func:`make_unreadable` file)."""
    code = "import sys; open(sys.argv[1], 'rb').close()"
    try:
        result = subprocess.run([sys.executable, "-c", code, os.fspath(path)],
                                capture_output=True, **unprivileged_subprocess_kwargs())
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode != 0 and b"PermissionError" in result.stderr


def decode_all(path: PathLike) -> tuple[list[np.ndarray], list[float], list[int]]:
    """Decode every video frame: (rgb frames as stored, pts seconds, rotations)."""
    frames, times, rotations = [], [], []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.pts * frame.time_base))
            rotations.append(int(frame.rotation))
    return frames, times, rotations


def make_cut_in(path: PathLike, black_s: float = 1.0, fps: int = 25, **face_clip: object) -> float:
    """A clip that opens on ``black_s`` seconds of black frames and cuts to a face clip (``make_face_clip``'s
    arguments; H.264 .mp4, constant rate). Returns the time of the first frame with the face."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    face = make_face_clip(path.with_name(f".face-{path.name}"), fps=fps, **face_clip)
    frames, _, _ = decode_all(face.path)
    face.path.unlink()
    n_black = round(black_s * fps)
    black = np.zeros_like(frames[0])
    write_frames(path, [black] * n_black + frames, (frames[0].shape[1], frames[0].shape[0]), fps)
    return n_black / fps


__all__: Sequence[str] = (
    "ClipSpec", "make_face_clip", "make_cut_in", "upright", "decode_all", "write_frames", "background",
    "make_zero_byte", "make_text_as_video", "make_truncated", "make_audio_only", "make_tiny_video",
    "make_unreadable", "is_root", "unprivileged_subprocess_kwargs", "file_modes_enforced",
    "unicode_name", "UNICODE_NAME", "REFERENCE_FACE_BOX",
)
