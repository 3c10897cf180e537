"""expression: per-frame facial-expression probabilities from the embedded model, once per clip, for each person.

For the clip's subject and for every other person with a track of their own (the faces artifact's ``subjects``),
every frame whose face is present (detected or interpolated by the faces stage) is scored by
:class:`pipeline.models.mini_xception.ExpressionNet` (mini-Xception, FER2013; about 0.4 ms a frame on one
CPU core), in batches, from the faces stage's crops cut down to ``face_margin`` around the face box.
The crops are decoded straight to grey (the JPEG's luma; see :func:`pipeline.models.expression.preprocess`),
which halves the decoding time. The model is loaded once per worker process.

Output ``expression.npz``:

=========== ========= ==============================================================================
array       shape     meaning
=========== ========= ==============================================================================
probs       (N, 7)    float32 class probabilities per decoded frame, columns in ``classes`` order;
                      NaN rows where the face is missing (``scored`` False)
scored      (N,)      the frame was scored: the faces stage's ``present`` flag
t           (N,)      seconds from the first frame (the faces stage's timestamps)
=========== ========= ==============================================================================

Other people's probabilities: ``expression_K.npz`` (the same arrays) for person K. ``meta.json`` adds ``classes`` (angry, disgust, fear, happy, sad, surprise, neutral), ``model`` and
``weights_sha256`` (the model's identity, also in the cache key), ``n_scored`` (the subject's frames),
``subjects``. A clip without any face (``faces.no_face=full_frame``) gets NaN rows throughout. :func:`load` reads
the artifact, :func:`of` a unit's person.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.core.errors import StageInputError
from stages.faces.facetrack import FaceTrack, subject_of
from stages.faces.segments import window
from pipeline.core.fields import not_in_key
from pipeline.core.jobs import ClipJob
from pipeline.models.expression import CLASSES, FACE_MARGIN, MODEL_ID, reframe, weights_sha256
from stages.base import Stage

NAME = "expression"
VERSION = 1
UPSTREAM: tuple[str, ...] = ("faces",)

PROBS_FILE = "expression.npz"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    face_margin: float = Field(FACE_MARGIN, ge=0.0, le=2.0)
    """Margin around the face box (fraction of its longer side, each side) of the square the model sees; at most the
    faces stage's ``faces.margin``. 0.1 frames faces as the ``fer`` package does."""
    batch_size: int = not_in_key(32, ge=1)
    """Face crops per forward pass."""
    chunk: int = not_in_key(256, ge=1)
    """Crops decoded at a time (bounds memory on long clips)."""


def key_extras(cfg: Config) -> dict:
    return {"model": MODEL_ID, "weights_sha256": weights_sha256()}


def open(cfg: Config):  # noqa: A001 - stage protocol name
    """Load the model once per worker process (an :class:`pipeline.models.mini_xception.ExpressionNet`; imports torch)."""
    from pipeline.models.mini_xception import load_model  # start-up time: torch, in the workers that run it

    return load_model()


def probs_file(subject: int) -> str:
    return PROBS_FILE if subject == 0 else f"expression_{subject}.npz"


def process(job: ClipJob, cfg: Config, net, out) -> dict:
    faces = job.upstream["faces"]
    subjects = faces.meta().get("subjects", [0])
    n = n_scored = 0
    for k in subjects:
        track = FaceTrack.load(faces, k)
        scored = _score(job, cfg, net, out, track, probs_file(k))
        if k == 0:
            n, n_scored = len(track), scored
    return {"classes": list(CLASSES), "model": MODEL_ID, "weights_sha256": weights_sha256(), "n_frames": n,
            "n_scored": n_scored, "subjects": subjects}


def _score(job: ClipJob, cfg: Config, net, out, track: FaceTrack, name: str) -> int:
    """Score one person's present frames into ``name``; returns how many."""
    n = len(track)
    if n == 0:
        raise StageInputError(f"{job.path}: the faces artifact has no frames")
    try:
        crop_margin = float(track.meta["config"]["margin"])
    except KeyError:
        raise StageInputError(f"{job.path}: the faces artifact's meta.json does not say how its crops are framed (config.margin)") from None
    if cfg.face_margin > crop_margin:
        raise StageInputError(
            f"{job.path}: expression.face_margin={cfg.face_margin} is wider than the face crops (faces.margin={crop_margin}); "
            "lower expression.face_margin or raise faces.margin"
        )
    scored = np.asarray(track.arrays["present"], bool)
    probs = np.full((n, len(CLASSES)), np.nan, np.float32)
    idx = np.flatnonzero(scored)
    with track.streamed():  # a chunk of crops in memory at a time, the file checked whole at the end
        for i in range(0, len(idx), cfg.chunk):
            part = idx[i : i + cfg.chunk]
            crops = reframe(track.crops(part, gray=True), crop_margin, cfg.face_margin)  # JPEG luma: see preprocess
            probs[part] = net.predict_proba(crops, batch_size=cfg.batch_size)
    out.npz(name, probs=probs, scored=scored, t=track.t)
    return int(len(idx))


@dataclass
class ExpressionTrack:
    """An expression artifact: ``probs`` (N, 7) with NaN rows where ``scored`` is False, ``t`` (N,), ``classes``."""

    probs: np.ndarray
    scored: np.ndarray
    t: np.ndarray
    classes: tuple[str, ...]


def load(artifact, subject: int = 0) -> ExpressionTrack:
    """Person ``subject``'s probabilities (0: the clip's subject)."""
    arrays = artifact.npz(probs_file(subject))
    return ExpressionTrack(arrays["probs"], arrays["scored"], arrays["t"], tuple(artifact.meta()["classes"]))


def of(job: ClipJob) -> ExpressionTrack:
    """The probabilities of the person a job's unit is about (of its segment's frames only, as
    :meth:`stages.faces.facetrack.FaceTrack.for_unit`)."""
    track = load(job.upstream["expression"], subject_of(job))
    span = window(track.t, job.unit)
    if span is None:
        return track
    a, b = span
    return ExpressionTrack(track.probs[a:b], track.scored[a:b], track.t[a:b], track.classes)


STAGE = Stage(NAME, VERSION, Config, UPSTREAM, process=process, key_extras=key_extras, open=open)
