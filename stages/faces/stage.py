"""faces: stream-decode a clip, detect and track the primary face, write square face crops.

Decoding is streamed (a bounded window of frames is held while detections around it arrive),
timestamps come from pts, and display rotation is applied. MTCNN (facenet-pytorch) runs on
every ``detect_every``-th frame, in batches: the whole cascade on a downscaled copy of the whole
frame every ``full_frame_every_s`` seconds and, in between, only its output network on a small crop
where the primary face is expected (:mod:`stages.faces.face_refine`). Boxes are smoothed over
neighbouring detections and interpolated in time for the frames in between. Only the crop's region
of a frame is converted from YUV to RGB (:class:`pipeline.core.video.FramePixels`), and memory stays flat
in the clip's length: per-frame rows live in compact arrays and the tracker forgets what no frame
still needs. The primary-face rule is documented in :mod:`stages.faces.tracking`. Output format:
:mod:`stages.faces.facetrack`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.models.devices import resolve_device
from pipeline.core.errors import DecodeError, NoFaceError
from stages.faces.facetrack import CROPS_FILE, TRACK_FILE, check
from pipeline.core.fields import not_in_key
from pipeline.core.jobs import ClipJob
from stages.faces.memory import release_free_heap
from stages.faces.face_refine import expected_box, refine
from stages.faces.tracking import PrimaryFaceTracker, Timeline, iou
from pipeline.core.video import FramePixels, VideoReader, to_rgb
from stages.base import Stage

NAME = "faces"
VERSION = 2  # 2: region detections between full-frame ones (boxes differ slightly); a face that moved fast is followed;
# no box held across a detection frame without the face (a cut to the face)
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
    decoder_threads: int = not_in_key(0, ge=0)
    """FFmpeg decoder threads per worker (0: FFmpeg decides)."""


def open(cfg: Config):  # noqa: A001 - stage protocol name
    """Load MTCNN once per worker process."""
    import torch
    from facenet_pytorch import MTCNN

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


_ROW_FIELDS = {
    "t": ((), np.float64),
    "box": ((4,), np.float32),
    "landmarks": ((5, 2), np.float32),
    "score": ((), np.float32),
    "detected": ((), bool),
    "interpolated": ((), bool),
    "present": ((), bool),
    "crop_box": ((4,), np.float32),
    "crop_end": ((), np.int64),
}
_NAN_BOX = np.full(4, np.nan, np.float32)
_NAN_LANDMARKS = np.full((5, 2), np.nan, np.float32)


class _Writer:
    """Streams JPEG crops to disk and keeps the per-frame rows in blocks of compact arrays."""

    BLOCK = 4096

    def __init__(self, out, cfg: Config):
        self.cfg = cfg
        self.f = (out.path(CROPS_FILE)).open("wb")
        self.blocks: list[dict[str, np.ndarray]] = []
        self.n = 0
        self.bytes = 0

    def add(self, t, pixels, fb, use_box):
        crop, cbox = _square_crop(pixels, fb.box if use_box else None, self.cfg.margin, self.cfg.crop_size)
        ok, enc = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
        if not ok:
            raise RuntimeError("JPEG encoding of a face crop failed")
        self.f.write(enc.tobytes())
        self.bytes += len(enc)
        i = self.n % self.BLOCK
        if i == 0:
            self.blocks.append({k: np.empty((self.BLOCK, *shape), dt) for k, (shape, dt) in _ROW_FIELDS.items()})
        row = self.blocks[-1]
        has = fb.box is not None and fb.present
        row["t"][i] = t
        row["box"][i] = fb.box if has else _NAN_BOX
        row["landmarks"][i] = fb.landmarks if fb.landmarks is not None and fb.present else _NAN_LANDMARKS
        row["score"][i] = fb.score
        row["detected"][i] = fb.detected
        row["interpolated"][i] = fb.interpolated
        row["present"][i] = fb.present
        row["crop_box"][i] = cbox
        row["crop_end"][i] = self.bytes
        self.n += 1

    def arrays(self) -> dict[str, np.ndarray]:
        self.f.close()
        out = {}
        for k, (shape, dt) in _ROW_FIELDS.items():
            parts = [b[k] for b in self.blocks]
            if parts:
                parts[-1] = parts[-1][: self.n - self.BLOCK * (len(parts) - 1)]
            out[k] = np.concatenate(parts) if parts else np.empty((0, *shape), dt)
        out["crop_offsets"] = np.concatenate([np.zeros(1, np.int64), out.pop("crop_end")])
        return out


@dataclass
class _Slot:
    """A detection frame waiting for its detections (in upright frame pixels)."""

    index: int
    t: float
    pixels: FramePixels
    full: bool
    boxes: np.ndarray | None = None
    probs: np.ndarray | None = None
    landmarks: np.ndarray | None = None


class _Detector:
    """Schedules MTCNN over the detection frames: whole-frame detections at ``full_frame_every_s``, O-net
    refinements of the expected box in between (from the whole-frame detections on both sides), whole-frame
    again where the face is not where expected. Feeds the tracker in frame order."""

    def __init__(self, cfg: Config, mtcnn, tracker: PrimaryFaceTracker, timeline: Timeline):
        self.cfg, self.mtcnn, self.tracker, self.timeline = cfg, mtcnn, tracker, timeline
        self.regions = cfg.full_frame_every_s > 0
        self.slots: list[_Slot] = []
        self.last_full_t: float | None = None
        self.anchor_before: tuple[float, np.ndarray] | None = None  # likely primary at the last processed full slot
        self.counts = {"full": 0, "region": 0, "region_missed": 0}
        self.faces_seen_max = 0
        self.calls = 0

    def add(self, index: int, t: float, pixels: FramePixels) -> bool:
        """Queue a detection frame; returns whether that ran a round (new anchors for the timeline)."""
        full = not self.regions or self.last_full_t is None or t - self.last_full_t >= self.cfg.full_frame_every_s - 1e-6
        if full:
            self.last_full_t = t
        self.slots.append(_Slot(index, t, pixels, full))
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

    def _detect_regions(self, work: list[tuple[_Slot, np.ndarray]]) -> list[_Slot]:
        """O-net refinements of the expected boxes; returns the slots where it did not find the face."""
        if not work:
            return []
        self._called()
        boxes, probs, lms = refine(self.mtcnn.onet, [(s.pixels, expected) for s, expected in work])
        missed = []
        for i, (s, expected) in enumerate(work):
            self.counts["region"] += 1
            if probs[i] < max(self.cfg.min_score, self.cfg.thresholds[2]) or iou(expected, boxes[i : i + 1])[0] < self.tracker.iou_min:
                self.counts["region_missed"] += 1
                missed.append(s)
                continue
            s.boxes, s.probs, s.landmarks = boxes[i : i + 1], probs[i : i + 1], lms[i : i + 1]
        return missed

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
        # where the primary face is likely to be on each whole-frame detection (the tracker's own rule)
        known: list[tuple[float, np.ndarray | None]] = []
        ref_t, ref = self.anchor_before if self.anchor_before else (self.tracker.last_t, self.tracker.last_box)
        for s in batch:
            if s.full:
                box = self.tracker.likely_primary(s.boxes, s.probs, ref, None if ref_t is None else s.t - ref_t)
                known.append((s.t, box))
                if box is not None:
                    ref_t, ref = s.t, box
        work, fallback = [], []
        before, k = self.anchor_before, 0
        for s in batch:
            if s.full:
                before, k = known[k], k + 1
                continue
            after = known[k] if k < len(known) else None  # None: end of the clip, hold the last box
            if before is None or before[1] is None or (after is not None and after[1] is None):
                fallback.append(s)
            elif after is None:
                work.append((s, before[1]))
            else:
                work.append((s, expected_box(s.t, before[0], before[1], after[0], after[1])))
        if known:
            self.anchor_before = known[-1] if known[-1][1] is not None else None
        fallback += self._detect_regions(work)
        self._detect_full(fallback)
        for s in batch:
            anchor = self.tracker.update(s.index, s.t, s.boxes, s.probs, s.landmarks)
            self.faces_seen_max = max(self.faces_seen_max, anchor.n_faces)
            self.timeline.add(anchor)


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


def process(job: ClipJob, cfg: Config, mtcnn, out) -> dict:
    """Decode ``job.path``, track the primary face and write ``track.npz`` + crops."""
    tracker = PrimaryFaceTracker(cfg.min_score, max_gap_s=cfg.max_gap_s)
    timeline = Timeline(cfg.smooth, cfg.max_gap_s)  # raw anchors, one per detection frame, smoothed incrementally
    detector = _Detector(cfg, mtcnn, tracker, timeline)
    pending: deque = deque()  # (index, t, FramePixels) awaiting their boxes
    writer = _Writer(out, cfg)
    too_small = None

    def flush(final: bool):
        if not pending:
            return
        timeline.settle(final)
        # a frame is final once every anchor that can influence it has been smoothed for good
        horizon = timeline.horizon()
        while pending and (final or pending[0][1] + cfg.max_gap_s <= horizon):
            idx, t, pixels = pending.popleft()
            fb = timeline.box_at(t, idx)
            writer.add(t, pixels, fb, use_box=fb.box is not None)
        if pending:
            timeline.forget_before(pending[0][1])

    with VideoReader(job.path, threads=cfg.decoder_threads) as reader:
        info = reader.info
        n = 0
        last_t = 0.0
        rotation = info.rotation
        for n_idx, (t, frame) in enumerate(reader.frames()):
            rotation = reader.frame_rotation(frame)
            pixels = FramePixels(frame, rotation)
            if n_idx == 0:
                too_small = _too_small(job, cfg, pixels.shape[1], pixels.shape[0])
                if too_small and cfg.no_face == "fail":
                    raise NoFaceError(too_small)
            pending.append((n_idx, t, pixels))
            if n_idx % cfg.detect_every == 0 and not too_small:
                if detector.add(n_idx, t, pixels):
                    flush(final=False)
            n = n_idx + 1
            last_t = t
        detector.run(final=True)
        flush(final=True)
    if n == 0:
        raise DecodeError(f"{job.path}: the video stream has no decodable frames")
    arrays = writer.arrays()
    n_det = int(arrays["detected"].sum())
    full_frame = False
    if n_det == 0:
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
    out.npz(TRACK_FILE, **arrays)
    dw, dh = (info.height, info.width) if rotation in (90, 270) else (info.width, info.height)
    return {
        "video": {**info.to_json(), "rotation": rotation, "display_width": dw, "display_height": dh},
        "n_frames": n,
        "duration_s": last_t,
        "fps_measured": fps_est,
        "n_detected": n_det,
        "n_interpolated": int(arrays["interpolated"].sum()),
        "n_missing": int((~arrays["present"]).sum()),
        "max_faces_in_frame": detector.faces_seen_max,
        "detections": dict(detector.counts),
        "full_frame": full_frame,
    }


STAGE = Stage(NAME, VERSION, Config, UPSTREAM, process=process, open=open, reads_video=True, check=check)
