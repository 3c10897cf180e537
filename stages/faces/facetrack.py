"""Reading the faces stage's artifact: per-frame track arrays and JPEG face crops.

Files: ``track.npz`` (arrays below, one row per decoded frame) and ``crops.jpg.bin`` (the JPEG
crops concatenated; ``track.npz['crop_offsets']`` has N+1 byte offsets).

=============== ========== ===========================================================
array           shape      meaning
=============== ========== ===========================================================
t               (N,)       seconds from the first frame (from pts; variable rate is right)
box             (N, 4)     primary face box x1, y1, x2, y2 in upright frame pixels (NaN: none)
landmarks       (N, 5, 2)  eyes (left, right), nose, mouth corners (left, right); NaN: none
score           (N,)       MTCNN probability on detection frames, 0 elsewhere
detected        (N,)       the face was detected on this frame (not interpolated)
interpolated    (N,)       box interpolated or held from neighbouring detections
present         (N,)       a face is there (detected or interpolated); False: missing stretch
crop_box        (N, 4)     the square region that was cropped (may extend past the frame)
crop_offsets    (N+1,)     byte offsets of each JPEG in crops.jpg.bin
=============== ========== ===========================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pipeline.core.cache import Artifact

TRACK_FILE = "track.npz"
CROPS_FILE = "crops.jpg.bin"


@dataclass
class FaceTrack:
    arrays: dict[str, np.ndarray]
    crops_path: Path
    meta: dict

    @classmethod
    def load(cls, artifact: Artifact) -> "FaceTrack":
        return cls(artifact.npz(TRACK_FILE), artifact.path(CROPS_FILE), artifact.meta())

    def __len__(self) -> int:
        return int(self.arrays["t"].shape[0])

    @property
    def t(self) -> np.ndarray:
        return self.arrays["t"]

    @property
    def duration_s(self) -> float:
        """The clip's duration: the last frame's timestamp plus its display time, taken as the interval
        before it (exact at a constant frame rate; the pts of a frame after the last do not exist). A
        one-frame clip lasts one frame at the header's average rate, or 0 without one."""
        return clip_duration(self.t, ((self.meta.get("video") or {}).get("avg_fps")))

    def crop_bytes(self, indices) -> list[bytes]:
        off = self.arrays["crop_offsets"]
        out = []
        with open(self.crops_path, "rb") as f:
            for i in indices:
                f.seek(int(off[i]))
                out.append(f.read(int(off[i + 1] - off[i])))
        return out

    def crops(self, indices, size: int | None = None, gray: bool = False) -> np.ndarray:
        """Decode crops ``indices`` as uint8 RGB (K, S, S, 3) or gray (K, S, S)."""
        flag = cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR
        imgs = []
        for data in self.crop_bytes(indices):
            img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
            if img is None:
                raise ValueError(f"corrupt JPEG crop in {self.crops_path}")
            if not gray:
                img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
            if size and img.shape[0] != size:
                img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
            imgs.append(img)
        if not imgs:
            shape = (0, size or 0, size or 0) if gray else (0, size or 0, size or 0, 3)
            return np.zeros(shape, np.uint8)
        return np.stack(imgs)

    def landmarks_in_crop(self, size: int) -> np.ndarray:
        """Landmarks mapped into crop pixel coordinates at crop size ``size`` (N, 5, 2)."""
        cb = self.arrays["crop_box"]
        side = (cb[:, 2] - cb[:, 0])[:, None]
        lm = self.arrays["landmarks"]
        return (lm - cb[:, None, :2]) / side[:, :, None] * size


def clip_duration(t: np.ndarray, avg_fps: float | None = None) -> float:
    """See :attr:`FaceTrack.duration_s` (``t``: frame timestamps from the first frame, seconds)."""
    n = len(t)
    if n == 0:
        return 0.0
    if n > 1:
        return float(t[-1] + (t[-1] - t[-2]))
    return float(t[0]) + (1.0 / avg_fps if avg_fps else 0.0)
