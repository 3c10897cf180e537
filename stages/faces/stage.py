"""faces: stream-decode a clip once: its shots, every face tracked within its shot, who is who across shots, and
square face crops of each person.

Decoding is streamed (a bounded window of frames is held while detections around it arrive),
timestamps come from pts, and display rotation is applied. Every decoded frame feeds the shot detector
(:mod:`stages.faces.shots`: hard cuts and fades to and from black, on a luma thumbnail). MTCNN (facenet-pytorch)
runs on every ``detect_every``-th frame and on the first frame of every shot, in batches: the whole cascade on a
downscaled copy of the whole frame every ``full_frame_every_s`` seconds and at each shot's start and, in between,
only its output network on small crops where the faces are expected (:mod:`stages.faces.face_refine`). Every face
is tracked within its shot (:mod:`stages.faces.tracking`: a track never crosses a shot boundary); its boxes are
smoothed over neighbouring detections and interpolated in time for the frames in between. At the end the tracks are
linked into identities by appearance and the clip's subject is chosen (:mod:`stages.faces.identity`). Only the crops'
regions of a frame are converted from YUV to RGB (:class:`pipeline.core.video.FramePixels`), and memory stays flat
in the clip's length (:mod:`stages.faces.spool`). Output format: :mod:`stages.faces.facetrack`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal, Union

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.models.devices import resolve_device
from pipeline.core.errors import DecodeError, NoFaceError, ThinEvidenceError
from stages.faces import identity
from stages.faces import segments as seg
from stages.faces.facetrack import FACE_COLUMNS, FACES_FILE, SCENE_FILE, FaceTrack, Scene, check, crops_file, track_file
from pipeline.core.fields import not_in_key
from pipeline.core.jobs import ClipJob
from stages.faces.identity import TrackInfo
from stages.faces.memory import LONG_RECORDING_S, map_large_blocks, release_free_heap
from stages.faces.face_refine import expected_box, refine
from stages.faces.shots import ShotDetector
from stages.faces.spool import Spool
from stages.faces.tracking import FaceTracker, confident, iou, match
from pipeline.core.video import FramePixels, VideoReader, to_rgb
from stages.base import Stage

NAME = "faces"
VERSION = 3  # 2: region detections between full-frame ones (boxes differ slightly); a face that moved fast is followed;
# no box held across a detection frame without the face (a cut to the face). 3: shots; every face tracked within its
# shot, never across a boundary; identities across shots and the subject by a rule (a clip with one face and no cut
# keeps its track and crops byte for byte); the table of every face, the scene, other subjects' tracks
UPSTREAM: tuple[str, ...] = ()


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    detect_every: int = Field(2, ge=1)
    """Detect the face on every Nth decoded frame (15 per second at 30 fps); boxes in between are smoothed and
    interpolated. Most of these detections are cheap O-net refinements (``full_frame_every_s``). Measured on the
    720p pan/zoom, fast-pan, two-face and VFR clips of ``benchmarks/faces_throughput.py``: median box IoU as with
    whole-frame detection every 5th frame, minimum IoU much higher, about twice as fast."""
    detect_max_side: int = Field(360, ge=64)
    """Longest side of the downscaled copy the detector sees (pixels). With ``min_face_size`` it sets the smallest
    face found: 20/360 of the frame's longer side (71 px in a 1280x720 frame). Raise it for small faces (group
    scenes, wide shots); detection time grows about with its square."""
    min_face_size: int = Field(20, ge=8)
    """Smallest face MTCNN looks for, in pixels of the downscaled copy."""
    full_frame_every_s: float = Field(0.5, ge=0.0, le=10.0)
    """Run the whole detector on the whole frame at this interval (seconds). The detection frames in between look
    only where the primary face is expected (interpolated between the whole-frame detections before and after
    them; :mod:`stages.faces.face_refine`) and fall back to the whole frame when the face is not there. New faces
    are found at this interval. 0: every detection on the whole frame. Frames wait in memory for about this long."""
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    """MTCNN P-, R- and O-net thresholds (each in [0, 1])."""

    @field_validator("thresholds")
    @classmethod
    def _shares(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(0.0 <= v <= 1.0 for v in value):
            raise ValueError("each threshold must be in [0, 1]")
        return value
    min_score: float = Field(0.9, ge=0.0, le=1.0)
    """Detections below this probability are ignored."""
    smooth: int = Field(3, ge=1)
    """Window (in detections) of the centred moving average over the primary face box."""
    max_gap_s: float = Field(1.0, gt=0)
    """Longest stretch without a detection that is bridged by interpolation; longer is 'missing'."""
    crop_size: int = Field(224, ge=32)
    """Side of the square face crops (pixels)."""
    margin: float = Field(0.2, ge=0.0, le=2.0)
    """Added on each side of the face box, as a fraction of its larger side."""
    jpeg_quality: int = Field(92, ge=50, le=100)
    """Quality of the stored JPEG crops."""
    no_face: Literal["fail", "full_frame"] = "fail"
    """No face in the whole clip: 'fail' records a failure; 'full_frame' crops the whole frame (flagged in meta)."""
    allow_truncated: bool = False
    """Accept clips that end well before the duration their header states (otherwise a failure)."""
    device: str = not_in_key("auto")
    """Detector device: 'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1'."""
    detect_batch: int = not_in_key(16, ge=1)
    """Frames per MTCNN batch."""
    release_memory_every: int = not_in_key(4, ge=0)
    """Give freed heap memory back to the OS after every Nth detector call (glibc ``malloc_trim``; 0: never), against
    heap fragmentation by MTCNN's variable-size activations. Measured with whole-frame detection every 0.5 s: peak
    memory the same for 0, 1 and 4; 1 costs 23% of the speed, 4 nothing measurable (``benchmarks/faces_memory.py``,
    ``faces_throughput.py``)."""
    flat_heap: Union[bool, Literal["auto"]] = not_in_key("auto")
    """Serve heap blocks of 512 KiB and more (MTCNN's activations) from memory maps of their own, for the rest of the
    worker process (glibc ``mallopt``), so that memory stays flat on long recordings. true, false or 'auto': from the first
    recording of 5 minutes or more (its header's duration, else once that much is decoded). Measured on CPU,
    320x240 at 2 fps (``benchmarks/timeline_memory.py --heap``): a 60-minute recording's segmented run peaked at
    1.30x a 10 s clip's memory without it, 1.03x with it; it costs 1.54x the faces stage's time there (every block
    mapped and unmapped), hence not for short clips."""
    decoder_threads: int = not_in_key(0, ge=0)
    """FFmpeg decoder threads per worker (0: FFmpeg decides)."""
    cut_threshold: float = Field(27.0, ge=0.0, le=255.0)
    """A hard cut: a frame whose luma differs from the previous frame's by at least this much on average (0-255 scale,
    on a thumbnail; PySceneDetect's ContentDetector threshold). 0: no cut detection. See :mod:`stages.faces.shots`."""
    dark_threshold: float = Field(12.0, ge=0.0, le=255.0)
    """A frame whose mean luma is below this (0-255 above black) is dark; where darkness begins and ends is a shot
    boundary (a fade to or from black). 0: none."""
    min_shot_s: float = Field(0.5, ge=0.0)
    """No hard cut is found within this many seconds after the last shot boundary (a flash is not two cuts)."""
    identity: Literal["auto", "facenet", "dlib", "none"] = "auto"
    """The face embedder that links tracks into people across shots (:mod:`stages.faces.identity`): ``auto`` takes
    facenet-pytorch's VGGFace2 network when its weights are on this machine, else dlib's face descriptor when
    ``dfer-pipeline[identity]`` is installed, else none (each track a person of its own, and the run says so where
    it mattered). Nothing is downloaded."""
    identity_threshold: float | None = Field(None, gt=0.0)
    """Largest mean embedding distance between two groups of tracks that are linked as one person (default: the
    embedder's, :data:`stages.faces.identity.THRESHOLDS`)."""
    embed_samples: int = Field(3, ge=1, le=32)
    """Detections embedded per track (when it could be linked to another)."""
    subject: Literal["longest", "largest", "first"] = "longest"
    """The clip's subject: the person seen longest, with the largest face, or seen first. Its face alone gives the
    crops, expression curves, keyframes and captions."""
    min_subject_s: float = Field(1.0, ge=0.0)
    """Other people seen at least this long get a track and crops of their own (the units of ``subjects=all``)."""
    subjects: Literal["one", "all"] = not_in_key("one")
    """``one``: one prediction per clip, for its subject. ``all``: one per person seen at least ``min_subject_s``,
    each scored as its own unit (``predictions.csv`` gains a ``subject`` column, 0 being the clip's subject)."""
    min_presence: float = not_in_key(0.25, ge=0.0, le=1.0)
    """Thin evidence: a clip whose subject's face is on less than this share of its frames is warned about (or failed,
    ``thin_evidence=fail``). Checked on cached artifacts too."""
    thin_evidence: Literal["warn", "fail"] = not_in_key("warn")
    """What thin evidence does: a warning in the run's output and ``status.json``, or a failure row."""
    segments: str | None = not_in_key(None)
    """Timelines (``dfer run --segments``, ``docs/timelines.md``): ``LENGTH[:STRIDE]`` seconds (``4s``, ``4s:2s``) or
    ``shots``. Each segment of each clip is then a unit of keyframes, context and classify (faces and expression still
    run once per file), written to ``timeline.csv`` and ``timeline_summary.csv``; the whole clip is not scored.
    None: one prediction per clip."""
    segment_min_face: float = not_in_key(0.5, ge=0.0, le=1.0)
    """A segment where the person's face is on less than this share of its frames is not scored: ``timeline.csv`` lists
    it with no prediction, ``scored=too_little_face`` and the share."""

    @field_validator("segments", mode="before")
    @classmethod
    def _segments(cls, value):
        spec = seg.parse_segments(value)
        return None if spec is None else str(spec)


def open(cfg: Config):  # noqa: A001 - stage protocol name
    """Load MTCNN once per worker process."""
    import torch
    from facenet_pytorch import MTCNN

    if cfg.flat_heap is True:
        map_large_blocks()

    device = resolve_device(cfg.device)
    mtcnn = MTCNN(
        keep_all=True,
        min_face_size=cfg.min_face_size,
        thresholds=list(cfg.thresholds),
        device=device,
        select_largest=False,
        post_process=False,
    )
    if device == "cpu":  # torch's CPU max-pooling is several times faster on channels-last tensors (boxes move < 1e-4 px)
        for net in (mtcnn.pnet, mtcnn.rnet, mtcnn.onet):
            net.to(memory_format=torch.channels_last)
    return mtcnn


def _square_crop(img: "np.ndarray | FramePixels", box: np.ndarray | None, margin: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Square crop around ``box`` (or the whole frame, padded, when None), resized to ``size``."""
    h, w = img.shape[:2]
    if box is None:
        side = float(max(w, h))
        cx, cy = w / 2, h / 2
    else:
        bw, bh = box[2] - box[0], box[3] - box[1]
        side = float(max(bw, bh)) * (1 + 2 * margin)
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(side, 2.0)
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = int(round(side))
    x1, y1 = x0 + s, y0 + s
    roi = img[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)]
    pad = (max(0, -y0), max(0, y1 - h), max(0, -x0), max(0, x1 - w))
    if any(pad):
        roi = cv2.copyMakeBorder(roi, *pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    crop = cv2.resize(roi, (size, size), interpolation=interp)
    return crop, np.array([x0, y0, x1, y1], np.float32)


@dataclass
class _Slot:
    """A detection frame waiting for its detections (in upright frame pixels)."""

    index: int
    t: float
    pixels: FramePixels
    full: bool
    shot: int
    boxes: np.ndarray | None = None
    probs: np.ndarray | None = None
    landmarks: np.ndarray | None = None


@dataclass
class _Known:
    """The confident faces of a whole-frame detection slot (where region slots around it expect faces)."""

    t: float
    shot: int
    boxes: np.ndarray


class _Detector:
    """Schedules MTCNN over the detection frames: whole-frame detections at ``full_frame_every_s`` and on the first
    frame of every shot, O-net refinements of the expected boxes in between (from the whole-frame detections on both
    sides, within the shot), whole-frame again where the faces are not where expected or where the faces on the two
    sides do not pair up. Feeds the tracker in frame order."""

    def __init__(self, cfg: Config, mtcnn, tracker: FaceTracker):
        self.cfg, self.mtcnn, self.tracker = cfg, mtcnn, tracker
        self.regions = cfg.full_frame_every_s > 0
        self.slots: list[_Slot] = []
        self.last_full_t: float | None = None
        self.known_before: _Known | None = None  # the faces at the last processed whole-frame slot
        self.counts = {"full": 0, "region": 0, "region_missed": 0}
        self.faces_seen_max = 0
        self.calls = 0
        self.fed: deque = deque(maxlen=max(0, cfg.smooth // 2) + 1)  # times of the last detection frames fed

    def horizon(self) -> float:
        """Time of the last detection frame whose smoothed boxes are final (-inf before there is one)."""
        return self.fed[0] if len(self.fed) == self.fed.maxlen else -np.inf

    def add(self, index: int, t: float, pixels: FramePixels, shot: int, shot_start: bool) -> bool:
        """Queue a detection frame; returns whether that ran a round (new anchors for the tracks)."""
        full = (not self.regions or shot_start or self.last_full_t is None
                or t - self.last_full_t >= self.cfg.full_frame_every_s - 1e-6)
        if full:
            self.last_full_t = t
        self.slots.append(_Slot(index, t, pixels, full, shot))
        if len(self.slots) >= self.cfg.detect_batch and full:
            self.run(final=False)
            return True
        return False

    # --- the detector calls --------------------------------------------------------------------
    def _called(self) -> None:
        """Count a detector call; every ``release_memory_every``-th gives freed heap memory back to the OS."""
        self.calls += 1
        if self.cfg.release_memory_every and self.calls % self.cfg.release_memory_every == 0:
            release_free_heap()

    def _detect(self, images: list[np.ndarray]):
        self._called()
        return self.mtcnn.detect(images, landmarks=True)

    def _detect_full(self, slots: list[_Slot]) -> None:
        """Whole-frame MTCNN on the downscaled copies (one batch per image shape)."""
        groups: dict[tuple, list] = {}
        for s in slots:
            frame, rotation = s.pixels.frame, s.pixels.rotation
            h, w = s.pixels.shape[:2]
            scale = min(1.0, self.cfg.detect_max_side / max(w, h))
            if scale < 1.0:
                sw, sh = max(2, int(round(frame.width * scale))), max(2, int(round(frame.height * scale)))
                small = to_rgb(frame, rotation, sw, sh)
            else:
                small = to_rgb(frame, rotation)
            groups.setdefault(small.shape, []).append((s, small, small.shape[1] / w))
        for group in groups.values():
            boxes, probs, lms = self._detect([g[1] for g in group])
            for (s, _, scale), b, p, lm in zip(group, boxes, probs, lms):
                if b is not None:
                    s.boxes, s.probs, s.landmarks = np.asarray(b, np.float32) / scale, np.asarray(p, np.float32), np.asarray(lm, np.float32) / scale
            self.counts["full"] += len(group)

    def _detect_regions(self, work: list[tuple[_Slot, list[np.ndarray]]]) -> list[_Slot]:
        """O-net refinements of the expected boxes; returns the slots where it did not find every face expected."""
        items = [(s, e) for s, expected in work for e in expected]
        if not items:
            return []
        self._called()
        boxes, probs, lms = refine(self.mtcnn.onet, [(s.pixels, e) for s, e in items])
        missed, k = [], 0
        for s, expected in work:
            ok = True
            for j, e in enumerate(expected):
                i = k + j
                self.counts["region"] += 1
                if probs[i] < max(self.cfg.min_score, self.cfg.thresholds[2]) or iou(e, boxes[i : i + 1])[0] < self.tracker.iou_min:
                    ok = False
            if ok:
                s.boxes, s.probs, s.landmarks = boxes[k : k + len(expected)], probs[k : k + len(expected)], lms[k : k + len(expected)]
            else:
                self.counts["region_missed"] += 1
                missed.append(s)
            k += len(expected)
        return missed

    def _known(self, s: _Slot) -> _Known:
        boxes, _, _ = confident(s.boxes, s.probs, None, self.cfg.min_score)
        return _Known(s.t, s.shot, boxes)

    def _expected(self, s: _Slot, before: _Known | None, after: _Known | None) -> list[np.ndarray] | None:
        """Where the faces of region slot ``s`` are expected (None: look at the whole frame): interpolated between
        the whole-frame detections on both sides when both are in its shot and their faces pair up one to one,
        held from the one side that is in its shot (the clip's end, a cut), else nowhere."""
        before = before if before is not None and before.shot == s.shot else None
        at_end = after is None
        after = after if after is not None and after.shot == s.shot else None
        if before is not None and after is not None:
            if not len(before.boxes) or len(before.boxes) != len(after.boxes):
                return None
            pairs = match(list(before.boxes), after.boxes, [after.t - before.t] * len(before.boxes), self.tracker.iou_min)
            left = [k for k in range(len(before.boxes)) if k not in pairs]
            free = [j for j in range(len(after.boxes)) if j not in pairs.values()]
            for k, j in zip(sorted(left, key=lambda k: _area(before.boxes[k])), sorted(free, key=lambda j: _area(after.boxes[j]))):
                pairs[k] = j  # faces the rule does not pair: paired by size (the refinement checks them)
            return [expected_box(s.t, before.t, before.boxes[k], after.t, after.boxes[j]) for k, j in sorted(pairs.items())]
        side = before if before is not None and (at_end or after is None) else after
        if side is None or not len(side.boxes) or (before is None and at_end):
            return None
        return list(side.boxes)

    # --- one round -------------------------------------------------------------------------------
    def run(self, final: bool) -> None:
        """Detect every queued slot up to the last whole-frame one (all of them when ``final``), then feed
        the tracker in order."""
        if not self.slots:
            return
        if final:
            batch, self.slots = self.slots, []
        else:
            last_full = max(i for i, s in enumerate(self.slots) if s.full)
            batch, self.slots = self.slots[: last_full + 1], self.slots[last_full + 1 :]
        self._detect_full([s for s in batch if s.full])
        known = [self._known(s) for s in batch if s.full]
        work, fallback = [], []
        before, k = self.known_before, 0
        for s in batch:
            if s.full:
                before, k = known[k], k + 1
                continue
            expected = self._expected(s, before, known[k] if k < len(known) else None)
            if expected is None:
                fallback.append(s)
            else:
                work.append((s, expected))
        if known:
            self.known_before = known[-1]
        fallback += self._detect_regions(work)
        self._detect_full(fallback)
        for s in batch:
            n = self.tracker.update(s.index, s.t, s.shot, s.boxes, s.probs, s.landmarks)
            self.faces_seen_max = max(self.faces_seen_max, n)
            self.fed.append(s.t)


def _area(box: np.ndarray) -> float:
    return float((box[2] - box[0]) * (box[3] - box[1]))


def _too_small(job: ClipJob, cfg: Config, w: int, h: int) -> str | None:
    """Why no face can be found in a ``w`` x ``h`` frame (None when one can)."""
    scale = min(1.0, cfg.detect_max_side / max(w, h))
    side = min(w, h) * scale
    if side >= cfg.min_face_size:
        return None
    at = f" at the detector's scale (faces.detect_max_side={cfg.detect_max_side})" if scale < 1.0 else ""
    return (
        f"{job.path}: the frames are {w}x{h} pixels, smaller than the smallest face the detector finds "
        f"(faces.min_face_size={cfg.min_face_size} px{at}); set faces.no_face=full_frame to keep such clips as whole frames"
    )


def _shot_thresholds(cfg: Config) -> ShotDetector:
    return ShotDetector(cfg.cut_threshold, cfg.dark_threshold, cfg.min_shot_s)


def process(job: ClipJob, cfg: Config, mtcnn, out) -> dict:
    """Decode ``job.path`` once: shots, every face tracked within its shot, identities across shots; write the
    subject's (and each other identity's) per-frame track and crops, the table of every face, and the scene."""
    tracker = FaceTracker(cfg.min_score, max_gap_s=cfg.max_gap_s, smooth=cfg.smooth)
    shots = _shot_thresholds(cfg)
    detector = _Detector(cfg, mtcnn, tracker)
    pending: deque = deque()  # (index, t, FramePixels, shot) awaiting their boxes
    spool = Spool(lambda px, box: _square_crop(px, box, cfg.margin, cfg.crop_size), cfg.jpeg_quality, cfg.crop_size)
    live: list = []  # tracks that frames still waiting may show
    started = [0]  # how many of the tracker's tracks are in live (or were)
    too_small = None
    reach = cfg.max_gap_s / 2 + 1e-6

    def flush(final: bool):
        if not pending:
            return
        live.extend(tracker.tracks[started[0]:])  # tracks started since the last flush
        started[0] = len(tracker.tracks)
        for tr in live:
            tr.timeline.settle(final or tr.ended)
        # a frame is final once every anchor that can influence it has been smoothed for good
        horizon = detector.horizon()
        while pending and (final or pending[0][1] + cfg.max_gap_s <= horizon):
            idx, t, pixels, shot = pending.popleft()
            seen = False
            for tr in live:
                if tr.shot == shot and tr.first_t - reach <= t <= tr.last_t + reach:
                    fb = tr.timeline.box_at(t, idx)
                    if fb.present:
                        spool.add(idx, tr.id, pixels, fb)
                        seen = True
            if not seen:
                spool.add(idx, -1, pixels)
            spool.frame(t)
        if pending:
            t0, shot0 = pending[0][1], pending[0][3]
            done = [tr for tr in live if tr.shot < shot0 or (tr.ended and tr.last_t + reach < t0)]
            for tr in done:  # no frame still waiting shows it: its anchors can go (memory stays flat)
                tr.timeline = None
            live[:] = [tr for tr in live if tr.timeline is not None]
            for tr in live:
                tr.timeline.forget_before(t0)

    try:
        with VideoReader(job.path, threads=cfg.decoder_threads) as reader:
            info = reader.info
            n = 0
            last_t = 0.0
            rotation = info.rotation
            last_shot = -1
            long_recording = cfg.flat_heap == "auto" and (info.header_duration or 0) >= LONG_RECORDING_S
            if long_recording:
                map_large_blocks()
            for n_idx, (t, frame) in enumerate(reader.frames()):
                rotation = reader.frame_rotation(frame)
                pixels = FramePixels(frame, rotation)
                if n_idx == 0:
                    too_small = _too_small(job, cfg, pixels.shape[1], pixels.shape[0])
                    if too_small and cfg.no_face == "fail":
                        raise NoFaceError(too_small)
                if cfg.flat_heap == "auto" and not long_recording and t >= LONG_RECORDING_S:
                    map_large_blocks()  # no duration in the header: from the moment it is known to be long
                    long_recording = True
                shot = shots.add(n_idx, t, frame)
                pending.append((n_idx, t, pixels, shot))
                if (n_idx % cfg.detect_every == 0 or shot != last_shot) and not too_small:
                    if detector.add(n_idx, t, pixels, shot, shot_start=shot != last_shot):
                        flush(final=False)
                last_shot = shot
                n = n_idx + 1
                last_t = t
            detector.run(final=True)
            tracker.finish()
            flush(final=True)
        if n == 0:
            raise DecodeError(f"{job.path}: the video stream has no decodable frames")
        rows = spool.finish()
        return _write(job, cfg, out, spool, rows, tracker, shots.shots(rows["t"]), detector, info, rotation, n, last_t)
    finally:
        spool.close()


def _write(job, cfg: Config, out, spool: Spool, rows, tracker: FaceTracker, shot_list, detector, info, rotation, n, last_t) -> dict:
    t = rows["t"]
    dur = np.diff(np.r_[t, t[-1] + (t[-1] - t[-2] if n > 1 else 0.0)])  # each frame's display time
    infos = []
    for tr in tracker.tracks:
        mine = np.flatnonzero(rows["track"] == tr.id)
        frames = rows["frame"][mine]
        if not len(frames):  # a track always shows its detection frames; were one to show none, it is no one
            continue
        infos.append(TrackInfo(tr.id, tr.shot, float(t[frames].min()), float(t[frames].max()), float(dur[frames].sum()),
                               float(np.median(tr.sides)), identity.samples(tr.detections, cfg.embed_samples)))

    def faces_of(tid: int, frames: list[int]) -> list:
        return [spool.face(int(r)) for r in np.flatnonzero((rows["track"] == tid) & np.isin(rows["frame"], frames))]

    embedder = identity.resolve(cfg.identity, cfg.identity_threshold) if len(infos) > 1 else None
    groups, how = identity.link(infos, embedder, faces_of, cfg.subject)
    ident = np.full(len(rows["track"]), -1, np.int32)
    for k, g in enumerate(groups):
        ident[np.isin(rows["track"], g)] = k
    seconds = [sum(infos[i].seconds for i in g) for g in groups]
    subjects = [k for k in range(len(groups)) if k == 0 or seconds[k] >= cfg.min_subject_s] if groups else [0]
    for k in subjects:
        tracks = groups[k] if groups else []
        arrays = spool.write_track(out.path(crops_file(k)), tracks)
        out.npz(track_file(k), **arrays)
        if k == 0:
            subject = arrays
    face_rows = rows["track"] >= 0
    out.npz(FACES_FILE, **{name: rows[name][face_rows] for name in FACE_COLUMNS}, identity=ident[face_rows])
    out.json(SCENE_FILE, {
        "shots": [s.to_json() for s in shot_list],
        "identities": [{"identity": k, "tracks": g, "seconds": round(seconds[k], 4),
                        "first_t": min(infos[i].first_t for i in g), "side": float(np.median([infos[i].side for i in g])),
                        "unit": k in subjects} for k, g in enumerate(groups)],
        "tracks": [{"track": i.id, "identity": int(ident[rows["track"] == i.id][0]), "shot": i.shot, "first_t": i.first_t,
                    "last_t": i.last_t, "seconds": round(i.seconds, 4), "detections": len(tracker.tracks[i.id].detections)}
                   for i in infos],
        "subject_rule": cfg.subject,
        "linking": how,
    })
    n_det = int(subject["detected"].sum())
    full_frame = False
    if not infos:
        if cfg.no_face == "fail":
            raise NoFaceError(
                f"{job.path}: no face found in {n} frames (the detector looked at "
                f"{'every frame' if cfg.detect_every == 1 else f'one frame in {cfg.detect_every}'} at {cfg.detect_max_side}px; set faces.no_face=full_frame to keep such clips, or lower faces.min_score)"
            )
        full_frame = True
    fps_est = (n - 1) / last_t if last_t > 0 else None
    if info.header_duration and not cfg.allow_truncated and n > 1:
        frame_dur = last_t / (n - 1)
        if last_t + 2 * frame_dur < 0.9 * info.header_duration - 0.25:
            raise DecodeError(
                f"{job.path}: decoding stopped at {last_t:.2f} s but the header says {info.header_duration:.2f} s; "
                "the file looks truncated or damaged (set faces.allow_truncated=true to keep what decodes)"
            )
    dw, dh = (info.height, info.width) if rotation in (90, 270) else (info.width, info.height)
    present = int(subject["present"].sum())
    return {
        "video": {**info.to_json(), "rotation": rotation, "display_width": dw, "display_height": dh},
        "n_frames": n,
        "duration_s": last_t,
        "fps_measured": fps_est,
        "n_detected": n_det,
        "n_interpolated": int(subject["interpolated"].sum()),
        "n_missing": n - present,
        "max_faces_in_frame": detector.faces_seen_max,
        "detections": dict(detector.counts),
        "full_frame": full_frame,
        "n_shots": len(shot_list),
        "n_tracks": len(infos),
        "n_identities": len(groups),
        "subjects": subjects,
        "presence": round(present / n, 6),
        "linking": how,
    }


def assess(cfg: Config, artifact) -> list[str]:
    """Thin evidence (``faces.min_presence``, ``faces.thin_evidence``) and what the clip's identities could not be
    (tracks not linked for want of an embedder): warnings, or :class:`ThinEvidenceError` under ``thin_evidence=fail``.
    Run on every clip's artifact, cached or new (these settings are not in the key)."""
    meta = artifact.meta()
    where = meta.get("video", {}).get("path") or meta.get("video_id", "?")
    notes = []
    n, presence = int(meta.get("n_frames", 0)), float(meta.get("presence", 1.0))
    if meta.get("full_frame"):
        notes.append(f"{where}: no face found: whole frames stand in for the face (faces.no_face=full_frame)")
    elif presence < cfg.min_presence:
        msg = (f"{where}: thin evidence: the subject's face is on {presence:.0%} of the frames "
               f"({n - int(meta.get('n_missing', 0))} of {n}), below faces.min_presence={cfg.min_presence:g}")
        if cfg.thin_evidence == "fail":
            raise ThinEvidenceError(msg + " (faces.thin_evidence=fail; set it to warn to score such clips)")
        notes.append(msg)
    unlinked = (meta.get("linking") or {}).get("unlinked", 0)
    if unlinked and cfg.identity == "auto":  # faces.identity=none: the user's choice, said once in the docs
        notes.append(f"{where}: {unlinked} face tracks were not linked into people across shots, for want of a face "
                     f"embedder here ({identity.INSTALL_HINT}): each counts as a person of its own")
    return notes


def unit_fields(cfg: Config) -> dict:
    """``faces.subjects=all``: clips are split into one unit per subject (``subject``: 0 is the clip's own);
    ``faces.segments``: into segments (``segment``, ``start_s``, ``end_s``), per subject under ``subjects=all``."""
    fields = {"subject": 0} if cfg.subjects == "all" else {}
    if cfg.segments:
        fields.update(segment=None, start_s=None, end_s=None)
    return fields


def keeps_clip(cfg: Config) -> bool:
    """A segmented clip is its segments only (the whole clip is not a unit)."""
    return not cfg.segments


def units(cfg: Config, artifact) -> list[dict]:
    """The units beyond the clip's own: under ``faces.subjects=all`` every other identity seen at least
    ``faces.min_subject_s``; under ``faces.segments`` each segment (of each of them) with enough face
    (:func:`segment_rows`)."""
    if cfg.segments:
        return [row["part"] for row in segment_rows(cfg, artifact) if row["enough"]]
    return [{"subject": k} for k in artifact.meta().get("subjects", [0]) if k != 0]


def subjects_of(cfg: Config, artifact) -> list[int]:
    """The people a run scores: the clip's subject, and every other under ``faces.subjects=all``."""
    return list(artifact.meta().get("subjects", [0])) if cfg.subjects == "all" else [0]


def segment_rows(cfg: Config, artifact) -> list[dict]:
    """Every segment of a clip under ``faces.segments``, per person scored (:func:`subjects_of`), in time order:
    ``subject``, ``segment``, ``start_s``, ``end_s``, ``face_share`` (share of its frames with the person's face),
    ``enough`` (at least ``faces.segment_min_face``) and its unit ``part``."""
    spec = seg.parse_segments(cfg.segments)
    if spec is None:
        return []
    scene = Scene.load(artifact) if spec.shots else None
    rows = []
    for k in subjects_of(cfg, artifact):
        track = FaceTrack.load(artifact, k)
        present = np.asarray(track.arrays["present"], bool)
        for i, (a, b) in enumerate(seg.spans(spec, track.t, track.duration_s, scene.shots if scene else None)):
            p = seg.part(i, a, b, k)
            first, stop = seg.window(track.t, p)
            share = float(present[first:stop].mean()) if stop > first else 0.0
            rows.append({"subject": k, "segment": i, "start_s": a, "end_s": b, "face_share": round(share, 4),
                         "enough": stop > first and share >= cfg.segment_min_face and share > 0, "part": p})
    return rows


def key_extras(cfg: Config) -> dict:
    """The face embedder that links tracks into people (its weights' content), when one is used."""
    emb = identity.resolve(cfg.identity, cfg.identity_threshold)
    return {"identity": emb.identity() if emb else None}


def preflight(cfg: Config) -> None:
    identity.resolve(cfg.identity, cfg.identity_threshold)  # raises when the embedder asked for by name is missing


STAGE = Stage(NAME, VERSION, Config, UPSTREAM, process=process, open=open, reads_video=True, check=check,
              key_extras=key_extras, preflight=preflight, assess=assess, units=units, unit_fields=unit_fields,
              keeps_clip=keeps_clip)
