"""Reading the faces stage's artifact: per-frame track arrays and JPEG face crops of each person, every face, the
shots.

Files:

- ``track.npz`` (arrays below, one row per decoded frame) and ``crops.jpg.bin`` (the JPEG crops concatenated;
  ``track.npz['crop_offsets']`` has N+1 byte offsets): the clip's **subject** (identity 0). ``track_K.npz`` and
  ``crops_K.jpg.bin``: identity K, for every other person seen at least ``faces.min_subject_s`` (``meta.json``'s
  ``subjects`` lists them all, 0 first). Where the person's face is not present, the crop is the whole frame when no
  face was on it at all, else a grey square (someone else is on screen); such frames are never evidence.
- ``faces.npz``: every face on every frame where it is present, one row per (frame, track): ``frame``, ``track``,
  ``identity``, ``box``, ``landmarks``, ``score``, ``detected``, ``interpolated`` (between detections, or held),
  ``held`` (the nearest detection's box, held at a track's end). For ``dfer export --frames``.
- ``scene.json``: ``shots`` (``first``, ``stop`` frames, ``t_start``, ``t_end``, ``start``: start | cut | fade_out
  | fade_in), ``identities`` (``identity``, its ``tracks``, ``seconds`` seen, ``first_t``, median box ``side``,
  ``unit``: has a track of its own), ``tracks`` (``track``, ``identity``, ``shot``, first and last present time,
  ``seconds``, ``detections``), ``subject_rule``, ``linking`` (the embedder, its threshold, tracks embedded, tracks
  that could not be linked for want of an embedder).

A track's arrays:

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

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import cv2
import numpy as np

from pipeline.core.cache import Artifact
from stages.faces.segments import window

TRACK_FILE = "track.npz"
CROPS_FILE = "crops.jpg.bin"
FACES_FILE = "faces.npz"
SCENE_FILE = "scene.json"
FACE_COLUMNS = ("frame", "track", "box", "landmarks", "score", "detected", "interpolated", "held")


def track_file(subject: int) -> str:
    return TRACK_FILE if subject == 0 else f"track_{subject}.npz"


def crops_file(subject: int) -> str:
    return CROPS_FILE if subject == 0 else f"crops_{subject}.jpg.bin"


def subject_of(job) -> int:
    """The person a job's unit is about (0: the clip's subject)."""
    return int(job.unit.get("subject", 0))


@dataclass
class FaceTrack:
    """A faces artifact as read through the cache (every byte checked: :class:`pipeline.core.cache.Artifact`); the
    crops file is read when a crop is first asked for, and a crop that does not decode as the JPEG it should be
    raises :class:`pipeline.core.errors.DamagedArtifactError` naming the artifact, the clip and the crop."""

    arrays: dict[str, np.ndarray]
    artifact: Artifact
    meta: dict
    _crops: bytes | None = field(default=None, repr=False)
    crops_name: str = CROPS_FILE  # the crops file of this person (crops_file(subject))
    first: int = 0  # a segment's track (:meth:`for_unit`): its first frame in the clip; indices count from there
    _offsets: np.ndarray | None = field(default=None, repr=False)  # the whole clip's crop_offsets, for a segment
    _stream: Any = field(default=None, repr=False)  # within streamed(): the crops file read front to back

    @classmethod
    def load(cls, artifact: Artifact, subject: int = 0) -> "FaceTrack":
        """Person ``subject``'s track (0: the clip's subject)."""
        name = track_file(subject)
        track = cls(artifact.npz(name), artifact, artifact.meta(), crops_name=crops_file(subject))
        off = track.arrays.get("crop_offsets")
        if off is None or off.ndim != 1 or len(off) != len(track) + 1 or (len(off) and (off[0] != 0 or (np.diff(off) < 0).any())):
            raise artifact.damaged(name, "its crop_offsets do not fit its frames")
        return track

    @classmethod
    def for_unit(cls, artifact: Artifact, unit: dict) -> "FaceTrack":
        """The track of the person a unit is about; for a segment (:mod:`stages.faces.segments`) only its frames,
        indexed from the segment's first frame (timestamps stay the clip's), its crops read from the crops file by
        byte range rather than whole."""
        track = cls.load(artifact, int(unit.get("subject", 0)))
        span = window(track.t, unit)
        if span is None:
            return track
        first, stop = span
        arrays = {k: (v if k == "crop_offsets" else v[first:stop]) for k, v in track.arrays.items()}
        arrays["crop_offsets"] = track.arrays["crop_offsets"][first:stop + 1] - track.arrays["crop_offsets"][first]
        return cls(arrays, artifact, track.meta, crops_name=track.crops_name, first=first,
                   _offsets=track.arrays["crop_offsets"])

    @classmethod
    def of(cls, job) -> "FaceTrack":
        """The track of the person a job's unit is about (of its segment's frames only: :meth:`for_unit`)."""
        return cls.for_unit(job.upstream["faces"], job.unit)

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

    def _crop_file(self) -> bytes:
        if self._crops is None and self._offsets is not None:  # a segment: its crops' bytes only
            a, b = int(self._offsets[self.first]), int(self._offsets[self.first + len(self)])
            self._crops = self.artifact.byte_range(self.crops_name, a, b)
        if self._crops is None:
            data = self.artifact.bytes(self.crops_name)
            if len(data) != int(self.arrays["crop_offsets"][-1]):
                raise self.artifact.damaged(self.crops_name, f"has {len(data)} bytes, its crop_offsets end at "
                                                        f"{int(self.arrays['crop_offsets'][-1])}")
            self._crops = data
        return self._crops

    def crop_bytes(self, indices) -> list[bytes]:
        off = self.arrays["crop_offsets"]
        if self._stream is not None:
            return [self._stream.take(int(off[i]), int(off[i + 1])) for i in indices]
        data = self._crop_file()
        return [data[int(off[i]) : int(off[i + 1])] for i in indices]

    @contextmanager
    def streamed(self) -> Iterator["FaceTrack"]:
        """Within it, crops are read from the crops file front to back (indices in ascending order across calls),
        the file hashed as it goes and checked whole at the end (:meth:`pipeline.core.cache.Artifact.sequential`):
        a pass over every frame of a long clip holds one chunk of crops, not the whole file."""
        if self._offsets is not None or self._crops is not None:  # a segment (read by range), or read already
            yield self
            return
        self._stream = self.artifact.sequential(self.crops_name)
        try:
            yield self
            stream, self._stream = self._stream, None
            stream.close()
        finally:
            if self._stream is not None:  # the pass stopped on an error
                self._stream.abandon()
                self._stream = None

    def crops(self, indices, size: int | None = None, gray: bool = False) -> np.ndarray:
        """Decode crops ``indices`` as uint8 RGB (K, S, S, 3) or gray (K, S, S)."""
        flag = cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR
        indices = list(indices)
        imgs = []
        for i, data in zip(indices, self.crop_bytes(indices)):
            img = cv2.imdecode(np.frombuffer(data, np.uint8), flag) if data[:2] == b"\xff\xd8" else None
            if img is None:
                raise self.artifact.damaged(self.crops_name, f"crop {i} (frame {i}) is not a JPEG that decodes")
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


def check(artifact: Artifact) -> None:
    """Decode every crop of every person's track in a faces artifact (what ``dfer cache verify`` and the runner
    check beyond the hashes, and all they can check of an artifact written before hashes were recorded). Raises
    :class:`pipeline.core.errors.DamagedArtifactError`."""
    for subject in artifact.meta().get("subjects", [0]):
        track = FaceTrack.load(artifact, subject)
        for start in range(0, len(track), 256):
            track.crops(range(start, min(len(track), start + 256)))


def clip_duration(t: np.ndarray, avg_fps: float | None = None) -> float:
    """See :attr:`FaceTrack.duration_s` (``t``: frame timestamps from the first frame, seconds)."""
    n = len(t)
    if n == 0:
        return 0.0
    if n > 1:
        return float(t[-1] + (t[-1] - t[-2]))
    return float(t[0]) + (1.0 / avg_fps if avg_fps else 0.0)


@dataclass
class Scene:
    """``scene.json``: the shots, identities and tracks of a clip (see the module docstring)."""

    shots: list[dict]
    identities: list[dict]
    tracks: list[dict]
    doc: dict

    @classmethod
    def load(cls, artifact: Artifact) -> "Scene":
        doc = artifact.json(SCENE_FILE)
        return cls(doc["shots"], doc["identities"], doc["tracks"], doc)

    @property
    def boundaries(self) -> list[int]:
        """First frames of every shot but the first."""
        return [int(s["first"]) for s in self.shots[1:]]

    def boundaries_in(self, track: FaceTrack) -> list[int]:
        """The shot boundaries inside ``track``'s frames (a segment's), as its indices."""
        return [b - track.first for b in self.boundaries if track.first < b < track.first + len(track)]

    def shot_ids(self, n: int) -> np.ndarray:
        """The shot of each of the clip's ``n`` frames."""
        out = np.zeros(n, np.int32)
        for k, s in enumerate(self.shots):
            out[int(s["first"]) : int(s["stop"])] = k
        return out
