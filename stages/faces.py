"""faces: stream-decode a clip, detect and track the primary face, write square face crops.

Decoding is streamed (a bounded window of frames is held while detections around it arrive),
timestamps come from pts, and display rotation is applied. MTCNN (facenet-pytorch) runs on
downscaled copies of every ``detect_every``-th frame, in batches; boxes are smoothed over
neighbouring detections and interpolated in time for the frames in between. The primary-face
rule is documented in :mod:`pipeline.tracking`. Output format: :mod:`pipeline.facetrack`.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.devices import resolve_device
from pipeline.errors import DecodeError, NoFaceError
from pipeline.facetrack import CROPS_FILE, TRACK_FILE
from pipeline.fields import not_in_key
from pipeline.jobs import ClipJob
from pipeline.memory import release_free_heap
from pipeline.tracking import PrimaryFaceTracker, Timeline
from pipeline.video import VideoReader, to_rgb
from stages.base import Stage

NAME = "faces"
VERSION = 1
UPSTREAM: tuple[str, ...] = ()


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    detect_every: int = Field(5, ge=1)
    """Run the detector on every Nth decoded frame (6 per second at 30 fps); boxes in between are smoothed and
    interpolated. Measured on 720p30 clips: 3 instead of 5 gives the same median box IoU and is 1.6x slower."""
    detect_max_side: int = Field(360, ge=64)
    """Longest side of the downscaled copy the detector sees (pixels). With ``min_face_size`` it sets the smallest
    face found: 20/360 of the frame's longer side (71 px in a 1280x720 frame). Raise it for small faces (group
    scenes, wide shots); detection time grows about with its square."""
    min_face_size: int = Field(20, ge=8)
    """Smallest face MTCNN looks for, in pixels of the downscaled copy."""
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    """MTCNN P-, R- and O-net thresholds."""
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
    """Give freed heap memory back to the OS after every Nth MTCNN batch (glibc ``malloc_trim``; 0: never). Keeps
    a worker's memory flat on long clips; costs a few percent of speed (``benchmarks/faces_memory.py``)."""
    decoder_threads: int = not_in_key(0, ge=0)
    """FFmpeg decoder threads per worker (0: FFmpeg decides)."""


def open(cfg: Config):  # noqa: A001 - stage protocol name
    """Load MTCNN once per worker process."""
    from facenet_pytorch import MTCNN

    return MTCNN(
        keep_all=True,
        min_face_size=cfg.min_face_size,
        thresholds=list(cfg.thresholds),
        device=resolve_device(cfg.device),
        select_largest=False,
        post_process=False,
    )


def _square_crop(img: np.ndarray, box: np.ndarray | None, margin: float, size: int) -> tuple[np.ndarray, np.ndarray]:
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


class _Writer:
    """Accumulates per-frame rows and streams JPEG crops to disk."""

    def __init__(self, out, cfg: Config):
        self.cfg = cfg
        self.f = (out.path(CROPS_FILE)).open("wb")
        self.offsets = [0]
        self.rows: dict[str, list] = {k: [] for k in ("t", "box", "landmarks", "score", "detected", "interpolated", "present", "crop_box")}

    def add(self, t, rgb, fb, use_box):
        crop, cbox = _square_crop(rgb, fb.box if use_box else None, self.cfg.margin, self.cfg.crop_size)
        ok, enc = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
        if not ok:
            raise RuntimeError("JPEG encoding of a face crop failed")
        self.f.write(enc.tobytes())
        self.offsets.append(self.offsets[-1] + len(enc))
        nan4 = np.full(4, np.nan, np.float32)
        self.rows["t"].append(t)
        self.rows["box"].append(fb.box if fb.box is not None and fb.present else nan4)
        self.rows["landmarks"].append(fb.landmarks if fb.landmarks is not None and fb.present else np.full((5, 2), np.nan, np.float32))
        self.rows["score"].append(fb.score)
        self.rows["detected"].append(fb.detected)
        self.rows["interpolated"].append(fb.interpolated)
        self.rows["present"].append(fb.present)
        self.rows["crop_box"].append(cbox)

    def arrays(self) -> dict[str, np.ndarray]:
        self.f.close()
        r = self.rows
        n = len(r["t"])
        return {
            "t": np.asarray(r["t"], np.float64),
            "box": np.asarray(r["box"], np.float32).reshape(n, 4),
            "landmarks": np.asarray(r["landmarks"], np.float32).reshape(n, 5, 2),
            "score": np.asarray(r["score"], np.float32),
            "detected": np.asarray(r["detected"], bool),
            "interpolated": np.asarray(r["interpolated"], bool),
            "present": np.asarray(r["present"], bool),
            "crop_box": np.asarray(r["crop_box"], np.float32).reshape(n, 4),
            "crop_offsets": np.asarray(self.offsets, np.int64),
        }


def process(job: ClipJob, cfg: Config, mtcnn, out) -> dict:
    """Decode ``job.path``, track the primary face and write ``track.npz`` + crops."""
    tracker = PrimaryFaceTracker(cfg.min_score, max_gap_s=cfg.max_gap_s)
    timeline = Timeline(cfg.smooth, cfg.max_gap_s)  # raw anchors, one per detection frame, smoothed incrementally
    pending: deque = deque()  # (index, t, frame, rotation) awaiting their boxes
    det_queue: list = []  # (index, t, small_rgb, scale)
    writer = _Writer(out, cfg)
    stats = {"faces_seen_max": 0, "batches": 0}

    def run_detector():
        if not det_queue:
            return
        stats["batches"] += 1
        if cfg.release_memory_every and stats["batches"] % cfg.release_memory_every == 0:
            release_free_heap()
        imgs = [d[2] for d in det_queue]
        boxes, probs, lms = mtcnn.detect(imgs, landmarks=True)
        for (idx, t, _, scale), b, p, lm in zip(det_queue, boxes, probs, lms):
            if b is not None:
                b = np.asarray(b, np.float32) / scale
                lm = np.asarray(lm, np.float32) / scale
                p = np.asarray(p, np.float32)
            anchor = tracker.update(idx, t, b, p, lm)
            stats["faces_seen_max"] = max(stats["faces_seen_max"], anchor.n_faces)
            timeline.add(anchor)
        det_queue.clear()

    def flush(final: bool):
        if not pending:
            return
        timeline.settle(final)
        # a frame is final once every anchor that can influence it has been smoothed for good
        horizon = timeline.horizon()
        while pending and (final or pending[0][1] + cfg.max_gap_s <= horizon):
            idx, t, frame, rot = pending.popleft()
            fb = timeline.box_at(t, idx)
            rgb = to_rgb(frame, rot)
            writer.add(t, rgb, fb, use_box=fb.box is not None)

    with VideoReader(job.path, threads=cfg.decoder_threads) as reader:
        info = reader.info
        n = 0
        last_t = 0.0
        rotation = info.rotation
        for n_idx, (t, frame) in enumerate(reader.frames()):
            rotation = reader.frame_rotation(frame)
            pending.append((n_idx, t, frame, rotation))
            if n_idx % cfg.detect_every == 0:
                w, hgt = frame.width, frame.height
                scale = min(1.0, cfg.detect_max_side / max(w, hgt))
                sw, sh = max(2, int(round(w * scale))), max(2, int(round(hgt * scale)))
                small = to_rgb(frame, rotation, sw, sh) if scale < 1.0 else to_rgb(frame, rotation)
                real_scale = small.shape[1] / (hgt if rotation in (90, 270) else w)
                det_queue.append((n_idx, t, small, real_scale))
                if len(det_queue) >= cfg.detect_batch:
                    run_detector()
                    flush(final=False)
            n = n_idx + 1
            last_t = t
        run_detector()
        flush(final=True)
    if n == 0:
        raise DecodeError(f"{job.path}: the video stream has no decodable frames")
    arrays = writer.arrays()
    n_det = int(arrays["detected"].sum())
    full_frame = False
    if n_det == 0:
        if cfg.no_face == "fail":
            raise NoFaceError(
                f"{job.path}: no face found in {n} frames (detector saw every {cfg.detect_every}th frame at "
                f"{cfg.detect_max_side}px; set faces.no_face=full_frame to keep such clips, or lower faces.min_score)"
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
        "max_faces_in_frame": stats["faces_seen_max"],
        "full_frame": full_frame,
    }


STAGE = Stage(NAME, VERSION, Config, UPSTREAM, process=process, open=open)
