"""The faces stage's output while a clip streams: every face's crop and row, assembled per identity at the end.

Which person is the clip's subject is known only once the whole clip has been seen (the subject rule looks at all
of it), while frames are converted and cropped as they stream by and are then forgotten. So every present face of
every track gets its crop as its frame passes (JPEG, into a temporary file) and a row (frame, track, box,
landmarks, score, flags, where its crop is); a frame with no face at all gets a crop of the whole frame instead.
At the end, :meth:`Spool.write_track` copies one identity's crops, frame by frame, into the per-frame format of
:mod:`stages.faces.facetrack`: the crop of its face where it is present, else the frame's whole-frame crop where no
face was there at all, else a plain grey square (another person is on screen: their face is not this identity's
evidence). Memory stays flat in the clip's length: rows live in compact blocks of arrays.
"""

from __future__ import annotations

import tempfile

import cv2
import numpy as np

GREY = 128

_FIELDS = {
    "frame": ((), np.int64),
    "track": ((), np.int32),  # -1: the whole frame (no face on it)
    "box": ((4,), np.float32),
    "landmarks": ((5, 2), np.float32),
    "score": ((), np.float32),
    "detected": ((), bool),
    "interpolated": ((), bool),
    "held": ((), bool),
    "crop_box": ((4,), np.float32),
    "crop_start": ((), np.int64),
    "crop_end": ((), np.int64),
}
_NAN_BOX = np.full(4, np.nan, np.float32)
_NAN_LANDMARKS = np.full((5, 2), np.nan, np.float32)


class _Blocks:
    """Rows of fixed fields appended one at a time into blocks of preallocated arrays."""

    BLOCK = 4096

    def __init__(self, fields: dict):
        self.fields, self.blocks, self.n = fields, [], 0

    def row(self) -> tuple[dict, int]:
        i = self.n % self.BLOCK
        if i == 0:
            self.blocks.append({k: np.empty((self.BLOCK, *shape), dt) for k, (shape, dt) in self.fields.items()})
        self.n += 1
        return self.blocks[-1], i

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for k, (shape, dt) in self.fields.items():
            parts = [b[k] for b in self.blocks]
            if parts:
                parts[-1] = parts[-1][: self.n - self.BLOCK * (len(parts) - 1)]
            out[k] = np.concatenate(parts) if parts else np.empty((0, *shape), dt)
        return out


class Spool:
    def __init__(self, crop, jpeg_quality: int, crop_size: int):
        """``crop(pixels, box or None) -> (RGB crop, crop box)``: how the stage cuts a crop."""
        self.crop, self.quality, self.size = crop, jpeg_quality, crop_size
        self.f = tempfile.TemporaryFile()
        self.bytes = 0
        self.rows = _Blocks(_FIELDS)
        self.times = _Blocks({"t": ((), np.float64)})
        self._grey: bytes | None = None
        self.all: dict[str, np.ndarray] | None = None

    def _encode(self, crop: np.ndarray) -> bytes:
        ok, enc = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise RuntimeError("JPEG encoding of a face crop failed")
        return enc.tobytes()

    def frame(self, t: float) -> None:
        """Frame ``len(self)`` passed, at ``t`` seconds (call once per frame, after its faces)."""
        b, i = self.times.row()
        b["t"][i] = t

    def __len__(self) -> int:
        return self.times.n

    def add(self, index: int, track: int, pixels, fb=None) -> None:
        """The crop and row of ``track``'s face on frame ``index`` (``fb``: its :class:`FrameBox`), or of the whole
        frame (``track=-1``, no ``fb``)."""
        crop, cbox = self.crop(pixels, None if fb is None else fb.box)
        data = self._encode(crop)
        self.f.write(data)
        b, i = self.rows.row()
        b["frame"][i], b["track"][i] = index, track
        b["box"][i] = _NAN_BOX if fb is None else fb.box
        b["landmarks"][i] = _NAN_LANDMARKS if fb is None or fb.landmarks is None else fb.landmarks
        b["score"][i] = 0.0 if fb is None else fb.score
        b["detected"][i] = fb is not None and fb.detected
        b["interpolated"][i] = fb is not None and fb.interpolated
        b["held"][i] = fb is not None and fb.held
        b["crop_box"][i] = cbox
        b["crop_start"][i], b["crop_end"][i] = self.bytes, self.bytes + len(data)
        self.bytes += len(data)

    def finish(self) -> dict[str, np.ndarray]:
        """Every row (``frame``, ``track``, ...), and ``t`` of every frame."""
        self.f.flush()
        self.all = {**self.rows.arrays(), "t": self.times.arrays()["t"]}
        return self.all

    def crop_bytes(self, row: int) -> bytes:
        a = self.all
        self.f.seek(int(a["crop_start"][row]))
        return self.f.read(int(a["crop_end"][row] - a["crop_start"][row]))

    def face(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The crop of row ``row`` (RGB) and the face box in its pixels."""
        img = cv2.cvtColor(cv2.imdecode(np.frombuffer(self.crop_bytes(row), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        cb = self.all["crop_box"][row]
        scale = img.shape[0] / float(cb[2] - cb[0])
        box = (self.all["box"][row] - np.tile(cb[:2], 2)) * scale
        return img, box

    def grey(self) -> bytes:
        if self._grey is None:
            self._grey = self._encode(np.full((self.size, self.size, 3), GREY, np.uint8))
        return self._grey

    def rows_of(self, tracks) -> np.ndarray:
        """Per frame, the row of the face of one of ``tracks`` on it (-1: none). The tracks never share a frame."""
        a = self.all
        out = np.full(len(a["t"]), -1, np.int64)
        sel = np.flatnonzero(np.isin(a["track"], list(tracks)))
        out[a["frame"][sel]] = sel
        return out

    def write_track(self, crops_path, tracks) -> dict[str, np.ndarray]:
        """Write the crops of the identity made of ``tracks`` to ``crops_path``, one per frame (see the module
        docstring), and return its per-frame arrays (:mod:`stages.faces.facetrack`'s ``track.npz``)."""
        a = self.all
        n = len(a["t"])
        rows = self.rows_of(tracks)
        whole = self.rows_of([-1])
        present = rows >= 0
        src = np.where(present, rows, whole)
        pick = np.maximum(src, 0)
        out = {
            "t": a["t"],
            "box": np.where(present[:, None], a["box"][pick], np.nan).astype(np.float32),
            "landmarks": np.where(present[:, None, None], a["landmarks"][pick], np.nan).astype(np.float32),
            "score": np.where(present, a["score"][pick], 0).astype(np.float32),
            "detected": present & a["detected"][pick],
            "interpolated": present & a["interpolated"][pick],
            "present": present,
            "crop_box": np.where((src >= 0)[:, None], a["crop_box"][pick], np.nan).astype(np.float32),
        }
        if n == 0:
            out = {k: v[:0] for k, v in out.items()}
        offsets = np.zeros(n + 1, np.int64)
        # the faces stage passes out.path(...): a file of the artifact's temporary folder
        with open(crops_path, "wb") as f:  # (in a folder renamed into place)
            for i in range(n):
                data = self.crop_bytes(int(src[i])) if src[i] >= 0 else self.grey()
                f.write(data)
                offsets[i + 1] = offsets[i] + len(data)
        out["crop_offsets"] = offsets
        return out

    def close(self) -> None:
        self.f.close()
