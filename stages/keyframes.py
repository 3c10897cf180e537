"""keyframes: choose K sparse keyframes and describe the gaps between them.

Facial motion is measured on the face crops, in regions placed by the landmarks (eyes + brows,
mouth), at a small working size:

- ``motion``: mean absolute difference between consecutive crops, divided by the time step
  (so it is a rate, right under variable frame rate);
- ``expression``: mean absolute difference from the clip's median crop (a stand-in for the
  neutral face). Its peaks are expression apexes: the frame difference peaks at the onset and
  offset of a 0.25-0.5 s micro-expression, while the displacement from neutral peaks at its apex.

Strategies: ``uniform`` (evenly spaced in time: what VLMs do today), ``motion_apex`` (the K highest
peaks of the smoothed expression curve, at least ``min_separation_s`` apart; uniform fill when a
clip has fewer peaks that stand out), ``hybrid`` (up to K/2 apexes, the rest uniform in time,
kept apart from the apexes), ``expression_apex`` (as ``motion_apex``, on the expression intensity
1 - p(neutral) of the embedded expression model instead: the expression stage's probabilities, smoothed
like the motion curves, missing faces bridged linearly; a peak must also rise
:data:`INTENSITY_MIN_RISE` above the clip's median intensity. Only this strategy reads the expression
stage, so the others' cache keys do not depend on it).

Real footage (the faces stage's shots and subject): the curves are measured on the unit's person only (its face
crops where its face is present: the neutral face is the median of those), the jump at a shot boundary is not
motion (the motion into a shot's first frame, or into or out of a frame without the face, is 0), and each shot is
smoothed on its own. No keyframe is chosen on a frame without the person's face, nor within ``cut_margin`` frames of
a shot boundary (either side), unless no frame is left; a clip whose person is on fewer frames than ``k`` gets
fewer keyframes rather than frames without the face. A clip without any face (``faces.no_face=full_frame``) is
measured on its whole frames, as before.

Gaps (``keyframes.json``'s ``gaps``, in time order, each with its ``kind``): ``between`` two consecutive
keyframes; ``lead_in`` from the clip's first frame to the first keyframe and ``lead_out`` from the last
keyframe to the clip's last frame, each only when longer than ``edge_gap_min_s`` (with 4 uniform keyframes
each is an eighth of the clip, long enough to hold a whole micro-expression). A gap has ``start_index`` /
``end_index`` (the frames that bound it: keyframes, or the clip's first/last frame), ``t_start``/``t_end``
and ``between`` (the frames strictly inside); a gap over a shot boundary also has ``cuts`` (the first frames of the
shots that begin inside it, after ``start_index`` up to ``end_index``), and ``keyframes.json`` then lists all
boundaries in ``cuts``. ``duration_s`` is the clip's duration (the last frame's
timestamp plus its frame time, :attr:`stages.faces.facetrack.FaceTrack.duration_s`). A segment's keyframes
(``faces.segments``) are chosen among its frames only: ``indices`` count from its first frame, ``timestamps`` and
``duration_s`` (the segment's end) are the recording's.
"""

from __future__ import annotations

import tempfile
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.errors import StageInputError
from stages.faces.facetrack import FaceTrack, Scene
from pipeline.core.jobs import ClipJob
from pipeline.models.expression import CLASSES
from stages import expression
from stages.base import Stage

NAME = "keyframes"
VERSION = 3  # 2: lead-in/lead-out gaps, gap kinds, duration_s = clip duration. 3: shots and the unit's person: no
# keyframe without the face or beside a cut, no motion across a cut, fewer keyframes rather than face-less ones
UPSTREAM: tuple[str, ...] = ("faces", "expression")  # the most it reads; see upstream()

INTENSITY_MIN_RISE = 0.1
"""``expression_apex``: a peak of the expression intensity (a probability) must be at least this far above the clip's
median intensity, besides ``apex_min_z`` robust standard deviations: a face that keeps one expression has a flat
intensity whose small wiggles are not apexes."""

MOTION_FILE = "motion.npz"
KEYFRAMES_FILE = "keyframes.json"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    k: int = Field(4, ge=1, le=64)
    """Number of keyframes."""
    strategy: Literal["uniform", "motion_apex", "hybrid", "expression_apex"] = "hybrid"
    """How keyframes are chosen (see the module docstring)."""
    work_size: int = Field(64, ge=16, le=256)
    """Crops are measured at this size (pixels)."""
    smooth_s: float = Field(0.1, ge=0.0)
    """Gaussian smoothing of the motion curves (sigma, seconds)."""
    min_separation_s: float = Field(0.3, ge=0.0)
    """Minimum time between two chosen apexes."""
    apex_min_z: float = Field(3.0, ge=0.0)
    """An apex must rise this many robust standard deviations above the clip's median expression."""
    avoid_missing: bool = True
    """Never put a keyframe on a frame whose face is missing (when another frame is available)."""
    cut_margin: int = Field(3, ge=0)
    """No keyframe on the first or last this-many frames of a shot (where a cut or a fade begins or ends), unless
    no other frame shows the face."""
    edge_gap_min_s: float = Field(0.2, ge=0.0)
    """The stretch before the first keyframe (lead-in) and after the last (lead-out) becomes a gap, described
    by the context stage like the gaps between keyframes, when it is longer than this (seconds). 0.2 s is
    below the shortest micro-expression (0.25 s)."""


def _region_masks(lm: np.ndarray, size: int) -> np.ndarray:
    """Per-frame weights (K, size, size) from landmarks in crop pixels (K, 5, 2): eye+brow boxes and the mouth box."""
    n = len(lm)
    masks = np.zeros((n, size, size), np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        p = lm[i]
        if not np.isfinite(p).all():
            masks[i] = 1.0
            continue
        eye_d = max(np.linalg.norm(p[1] - p[0]), size * 0.1)
        for eye in (p[0], p[1]):  # eye + brow: a box reaching up above the eye
            masks[i] += (np.abs(xx - eye[0]) < 0.45 * eye_d) & (yy > eye[1] - 0.6 * eye_d) & (yy < eye[1] + 0.3 * eye_d)
        mouth_c = (p[3] + p[4]) / 2
        mouth_w = max(np.linalg.norm(p[4] - p[3]), size * 0.1)
        masks[i] += (np.abs(xx - mouth_c[0]) < 0.8 * mouth_w) & (np.abs(yy - mouth_c[1]) < 0.5 * mouth_w)
        masks[i] = np.clip(masks[i], 0, 1)
        if masks[i].sum() == 0:
            masks[i] = 1.0
    return masks


def _gauss_smooth(y: np.ndarray, t: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing in time (handles irregular timestamps), truncated at 3 sigma."""
    if sigma <= 0 or len(y) < 3:
        return y
    lo = np.searchsorted(t, t - 3 * sigma)
    hi = np.searchsorted(t, t + 3 * sigma, side="right")
    out = np.empty(len(y), np.float64)
    for i in range(len(y)):
        w = np.exp(-0.5 * ((t[lo[i] : hi[i]] - t[i]) / sigma) ** 2)
        out[i] = float(w @ y[lo[i] : hi[i]]) / float(w.sum())
    return out


CHUNK = 256  # frames measured at a time: memory stays flat in the clip's length


class _PixelMedian:
    """Exact per-pixel median of uint8 images seen one chunk at a time, from per-pixel value counts: the same
    float32 numbers as ``np.median`` over the stacked ``images / 255`` (the mean of the two middle values
    for an even count), in memory independent of the number of images."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape, self.n = shape, 0
        self.px = int(np.prod(shape))
        self.counts = np.zeros(self.px * 256, np.int64)

    def add(self, images: np.ndarray) -> None:
        flat = images.reshape(len(images), self.px).astype(np.int64) + np.arange(self.px) * 256
        self.counts += np.bincount(flat.ravel(), minlength=self.px * 256)
        self.n += len(images)

    def median(self) -> np.ndarray:
        cum = self.counts.reshape(self.px, 256).cumsum(axis=1)
        ranks = [(self.n - 1) // 2, self.n // 2]  # the two middle ranks (equal for an odd count)
        values = np.arange(256, dtype=np.float32) / 255.0
        middle = np.stack([values[(cum <= r).sum(axis=1)] for r in ranks]).reshape(2, *self.shape)
        return np.median(middle, axis=0) if self.n % 2 == 0 else middle[0]


def shot_ranges(n: int, boundaries: list[int]) -> list[tuple[int, int]]:
    """``[first, stop)`` of each shot of an ``n``-frame clip whose shots begin at ``boundaries`` (besides 0)."""
    edges = [0, *[b for b in boundaries if 0 < b < n], n]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _smooth_shots(y: np.ndarray, t: np.ndarray, sigma: float, shots: list[tuple[int, int]]) -> np.ndarray:
    out = np.empty(len(y), np.float64)
    for a, b in shots:
        out[a:b] = _gauss_smooth(y[a:b], t[a:b], sigma)
    return out


def motion_curves(track: FaceTrack, cfg: Config, boundaries: list[int] = ()) -> dict[str, np.ndarray]:
    """The motion and expression curves of a clip, streamed: the crops are decoded ``CHUNK`` at a time, kept
    as small uint8 images in a temporary file for the second pass (distance from the median face over the frames
    with the face), never all in memory. ``boundaries``: the first frames of the clip's shots after the first."""
    n = len(track)
    s = cfg.work_size
    t = track.t
    present = np.asarray(track.arrays["present"], bool)
    faces = present if present.any() else np.ones(n, bool)  # no face anywhere: the whole frames, as before
    lm = track.landmarks_in_crop(s)
    motion = np.zeros(n, np.float32)
    wsum = np.zeros(n, np.float32)
    median = _PixelMedian((s, s))
    prev = None
    with tempfile.TemporaryFile() as spool:
        for lo in range(0, n, CHUNK):
            hi = min(n, lo + CHUNK)
            small = track.crops(range(lo, hi), size=s, gray=True)
            spool.write(small.tobytes())
            median.add(small[faces[lo:hi]])
            gray = small.astype(np.float32) / 255.0
            masks = _region_masks(lm[lo:hi], s)
            wsum[lo:hi] = masks.reshape(hi - lo, -1).sum(axis=1)
            before = gray if prev is None else np.concatenate([prev, gray])
            first = lo if prev is None else lo - 1
            if len(before) > 1:  # frame i against frame i-1, for i in [max(lo, 1), hi)
                diff = np.abs(before[1:] - before[:-1]) * masks[len(masks) - (len(before) - 1) :]
                dt = np.maximum(np.diff(t[first:hi]), 1e-3)
                motion[first + 1 : hi] = diff.reshape(len(diff), -1).sum(axis=1) / wsum[first + 1 : hi] / dt
            prev = gray[-1:]
        neutral = median.median() if median.n else np.zeros((s, s), np.float32)
        expression = np.zeros(n, np.float32)
        spool.seek(0)
        for lo in range(0, n, CHUNK):
            hi = min(n, lo + CHUNK)
            gray = np.frombuffer(spool.read((hi - lo) * s * s), np.uint8).reshape(hi - lo, s, s).astype(np.float32) / 255.0
            masks = _region_masks(lm[lo:hi], s)
            expression[lo:hi] = (np.abs(gray - neutral) * masks).reshape(hi - lo, -1).sum(axis=1) / wsum[lo:hi]
    # the face's own motion only: not into a shot's first frame, nor into or out of a frame without the face
    still = np.zeros(n, bool)
    still[list(b for b in boundaries if 0 < b < n)] = True
    still[1:] |= ~(faces[1:] & faces[:-1])
    motion[still] = 0.0
    expression[~faces] = 0.0
    shots = shot_ranges(n, list(boundaries))
    return {
        "t": t,
        "motion": _smooth_shots(motion, t, cfg.smooth_s, shots).astype(np.float32),
        "expression": _smooth_shots(expression, t, cfg.smooth_s, shots).astype(np.float32),
    }


def _nearest_allowed(t: np.ndarray, target: float, allowed: np.ndarray) -> int:
    order = np.argsort(np.abs(t - target))
    for i in order:
        if allowed[i]:
            return int(i)
    return int(order[0])


def uniform_indices(t: np.ndarray, k: int, allowed: np.ndarray) -> list[int]:
    """K frames at the centres of K equal time slices (time, not index: right under VFR)."""
    t0, t1 = float(t[0]), float(t[-1])
    targets = [t0 + (i + 0.5) * (t1 - t0) / k for i in range(k)]
    return [_nearest_allowed(t, x, allowed) for x in targets]


def apex_indices(t: np.ndarray, curve: np.ndarray, k: int, min_sep: float, allowed: np.ndarray, min_z: float = 3.0,
                 min_rise: float = 0.0) -> list[int]:
    """Up to K local maxima of ``curve``, highest first, at least ``min_sep`` seconds apart.

    Only peaks that stand out from the clip's own baseline count: above the median by more than
    ``min_z`` robust standard deviations (1.4826 x MAD), and by at least ``min_rise``. A still face has no apex.
    """
    n = len(curve)
    if n < 3 or k <= 0:
        return []
    base = curve[allowed] if allowed.any() else curve  # the clip's own baseline: frames that may be chosen
    med = float(np.median(base))
    spread = 1.4826 * float(np.median(np.abs(base - med)))
    floor = med + max(min_z * max(spread, 1e-6 * max(abs(med), 1e-6)), min_rise)
    peak = np.zeros(n, bool)
    peak[1:-1] = (curve[1:-1] >= curve[:-2]) & (curve[1:-1] > curve[2:]) & (curve[1:-1] > floor)
    cands = [i for i in np.argsort(-curve, kind="stable") if peak[i] and allowed[i]]
    chosen: list[int] = []
    for i in cands:
        if all(abs(t[i] - t[j]) >= min_sep for j in chosen):
            chosen.append(int(i))
        if len(chosen) == k:
            break
    return chosen


def choose(t: np.ndarray, curves: dict[str, np.ndarray], cfg: Config, allowed: np.ndarray) -> list[int]:
    """Keyframe indices for one clip, sorted: ``min(k, n_frames)`` of them, fewer when fewer frames are allowed (the
    frames with the face)."""
    n = len(t)
    k = min(cfg.k, n, int(allowed.sum()) if allowed.any() else n)
    if cfg.strategy == "uniform":
        picks = uniform_indices(t, k, allowed)
    elif cfg.strategy == "expression_apex":
        picks = apex_indices(t, curves["intensity"], k, cfg.min_separation_s, allowed, cfg.apex_min_z, INTENSITY_MIN_RISE)
    else:
        n_apex = k if cfg.strategy == "motion_apex" else max(1, k // 2)
        picks = apex_indices(t, curves["expression"], n_apex, cfg.min_separation_s, allowed, cfg.apex_min_z)
    picks = sorted(set(picks))
    # fill with uniform times, away from what is already chosen; finer grids if needed
    grid = k
    while len(picks) < k and grid <= 8 * k:
        for i in uniform_indices(t, grid, allowed if allowed.any() else np.ones(n, bool)):
            if len(picks) >= k:
                break
            if i not in picks and all(abs(t[i] - t[j]) >= cfg.min_separation_s / 2 for j in picks):
                picks.append(i)
        grid *= 2
    for i in range(n):  # last resort for very short clips
        if len(picks) >= k:
            break
        if i not in picks and (allowed[i] or not allowed.any()):
            picks.append(i)
    return sorted(picks)


def gaps(picks: list[int], t: np.ndarray, edge_min_s: float = 0.2, boundaries: list[int] = ()) -> list[dict]:
    """The gaps of a clip in time order: lead-in (first frame to first keyframe, if longer than
    ``edge_min_s``), between each pair of consecutive keyframes, lead-out (last keyframe to last frame, idem);
    ``cuts``: the shot boundaries in a gap (after its first frame, up to its last), only where there are some."""
    last = len(t) - 1
    bounds = [("between", a, b) for a, b in zip(picks[:-1], picks[1:])]
    if picks and t[picks[0]] - t[0] > edge_min_s:
        bounds.insert(0, ("lead_in", 0, picks[0]))
    if picks and t[last] - t[picks[-1]] > edge_min_s:
        bounds.append(("lead_out", picks[-1], last))
    out = []
    for kind, a, b in bounds:
        gap = {
            "kind": kind,
            "start_index": int(a),
            "end_index": int(b),
            "t_start": float(t[a]),
            "t_end": float(t[b]),
            "between": list(range(a + 1, b)),
        }
        cuts = [int(c) for c in boundaries if a < c <= b]
        if cuts:
            gap["cuts"] = cuts
        out.append(gap)
    return out


def allowed_frames(present: np.ndarray, boundaries: list[int], margin: int) -> np.ndarray:
    """Frames a keyframe may be on: the face is there, and no shot boundary is within ``margin`` frames (a frame
    on either side of a boundary counts from it); the frames with the face when that leaves none, every frame
    when no frame has the face."""
    n = len(present)
    if not present.any():
        return np.ones(n, bool)
    ok = present.copy()
    for b in boundaries:
        ok[max(0, b - margin) : min(n, b + margin)] = False
    return ok if ok.any() else present


def intensity_curve(probs: np.ndarray, t: np.ndarray, smooth_s: float, boundaries: list[int] = ()) -> np.ndarray:
    """Expression intensity 1 - p(neutral) per frame from the expression stage's probabilities (N, 7), frames without
    a face (NaN rows) bridged linearly in time (0 when no frame has a face), smoothed like the motion curves (each
    shot on its own)."""
    y = 1.0 - np.asarray(probs, np.float64)[:, CLASSES.index("neutral")]
    seen = np.isfinite(y)
    y = np.interp(t, t[seen], y[seen]) if seen.any() else np.zeros(len(t))
    return _smooth_shots(y, t, smooth_s, shot_ranges(len(t), list(boundaries))).astype(np.float32)


def upstream(cfg: Config) -> tuple[str, ...]:
    """faces, and the expression stage under ``strategy=expression_apex`` only."""
    return ("faces", "expression") if cfg.strategy == "expression_apex" else ("faces",)


def process(job: ClipJob, cfg: Config, resources, out) -> dict:
    track = FaceTrack.of(job)
    n = len(track)
    if n == 0:
        raise StageInputError(f"{job.path}: the faces artifact has no frames")
    cuts = Scene.load(job.upstream["faces"]).boundaries_in(track)
    curves = motion_curves(track, cfg, cuts)
    if cfg.strategy == "expression_apex":
        probs = expression.of(job).probs
        if len(probs) != n:
            raise StageInputError(f"{job.path}: the expression artifact has {len(probs)} frames, the faces artifact {n}")
        curves["intensity"] = intensity_curve(probs, track.t, cfg.smooth_s, cuts)
    present = np.asarray(track.arrays["present"], bool)
    allowed = allowed_frames(present, cuts, cfg.cut_margin) if cfg.avoid_missing else np.ones(n, bool)
    picks = choose(track.t, curves, cfg, allowed)
    out.npz(MOTION_FILE, **curves)
    doc = {
        "strategy": cfg.strategy,
        "indices": picks,
        "timestamps": [float(track.t[i]) for i in picks],
        "gaps": gaps(picks, track.t, cfg.edge_gap_min_s, cuts),
        "n_frames": n,
        "duration_s": track.duration_s,
    }
    if cuts:
        doc["cuts"] = cuts
    out.json(KEYFRAMES_FILE, doc)
    return {"n_keyframes": len(picks), "requested_k": cfg.k}


STAGE = Stage(NAME, VERSION, Config, UPSTREAM, process=process, reads=upstream, per_unit=True)
