"""features: frozen visual features of a clip's face crops from any Hugging Face vision tower.

A tool stage: ``dfer run`` does not run it; ``dfer probe`` (once per encoder) and SocialFusion training run it
through the runner (``until="features"`` with a ``features`` section), so it gets the cache, ``failures.jsonl``,
the reasons for recomputing and the executors like every other stage.

Frames: ``keyframes`` (the keyframes stage's picks) or ``all`` (frames where a face is present, evenly
subsampled to at most ``max_frames``). Crops are decoded from the faces artifact at ``image_size`` pixels and
handed to the encoder's own image processor; encoders, layers and pooling are described in
:mod:`pipeline.models.vision`. The model is loaded once per process; the images of a batch of clips go through
it ``batch_size`` at a time.

Cache key: the encoder's identity (hub id + revision, or a local folder's content fingerprint, never its path)
and the *absolute* layers (``-1`` and ``L`` share artifacts) come from :func:`key_extras`; pooling, frame choice,
image size and dtype from the section. Output: ``features.npz`` (``layer_<i>``: float32 ``(frames, dim)`` per
layer, ``frame_indices``, ``timestamps``) and ``features.json``; read it with :func:`load`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.models import hub
from pipeline.core.cache import Artifact
from pipeline.core.errors import EncoderError, StageInputError
from stages.faces.facetrack import FaceTrack
from pipeline.core.fields import not_in_key
from pipeline.core.jobs import ClipJob
from pipeline.models.vision import VisionEncoder, check_encoder, resolve_layers
from stages.base import Stage

NAME = "features"
VERSION = 1
UPSTREAM: tuple[str, ...] = ("faces", "keyframes")
FEATURES_FILE = "features.npz"
INFO_FILE = "features.json"


class Config(BaseModel):
    """What features to extract."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    encoder: str = not_in_key()
    """Hub id or local folder of a VLM, a CLIP/SigLIP-family model or a vision-only model (in the key through its
    identity)."""
    revision: str | None = not_in_key(None)
    """Hub revision (ignored for local folders)."""
    layers: list[int] = Field(default_factory=lambda: [-1], json_schema_extra={"cache_key": False})
    """Hidden-state indices (0 = patch embedding, -1 = last block; in the key as absolute indices)."""
    pooling: Literal["mean", "cls"] = "mean"
    """Token pooling per image."""
    frames: Literal["keyframes", "all"] = "keyframes"
    """Which frames of a clip: the keyframes, or every frame with a face (subsampled to ``max_frames``)."""
    max_frames: int = Field(16, ge=1)
    """With ``frames=all``: at most this many frames, evenly spaced."""
    image_size: int = Field(224, ge=8)
    """Side of the square face crops handed to the image processor (pixels)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Encoder weights dtype (features are stored as float32)."""
    trust_remote_code: bool = False
    """Allow the checkpoint's own Python code."""
    device: str = not_in_key("auto")
    """``auto``, ``cpu``, ``cuda``, ``cuda:1``."""
    batch_size: int = not_in_key(32, ge=1)
    """Images per forward pass."""


def reads(cfg: Config) -> tuple[str, ...]:
    return ("faces", "keyframes") if cfg.frames == "keyframes" else ("faces",)


def layers_of(cfg: Config) -> list[int]:
    """The absolute layer indices ``cfg.layers`` means for its encoder (reads only the encoder's config)."""
    return resolve_layers(cfg.layers, check_encoder(cfg.encoder, cfg.revision, cfg.trust_remote_code))


def key_extras(cfg: Config) -> dict:
    return {"encoder": hub.model_identity(cfg.encoder, cfg.revision), "layers": layers_of(cfg)}


def preflight(cfg: Config) -> None:
    """Is it a vision model, are the layers in range: before anything is loaded or any clip is processed."""
    layers_of(cfg)


def open(cfg: Config):  # noqa: A001 - stage interface name
    encoder = VisionEncoder(cfg.encoder, cfg.revision, device=cfg.device, dtype=cfg.dtype,
                            trust_remote_code=cfg.trust_remote_code)
    if cfg.pooling == "cls" and not encoder.has_cls:
        encoder.close()
        raise EncoderError(f"encoder {cfg.encoder!r}: pooling 'cls' needs a class token, which this tower has not; use 'mean'")
    return encoder


def frame_indices(cfg: Config, job: ClipJob, track: FaceTrack) -> list[int]:
    if cfg.frames == "keyframes":
        return list(job.upstream["keyframes"].json("keyframes.json")["indices"])
    present = np.flatnonzero(track.arrays["present"])
    pool = present if len(present) else np.arange(len(track))
    if len(pool) <= cfg.max_frames:
        return [int(i) for i in pool]
    pick = np.linspace(0, len(pool) - 1, cfg.max_frames).round().astype(int)
    return sorted({int(pool[i]) for i in pick})


def process_batch(jobs: list[ClipJob], cfg: Config, encoder) -> list:
    from PIL import Image

    layers = resolve_layers(cfg.layers, encoder.info)
    clips = []
    for job in jobs:
        track = FaceTrack.of(job)
        idx = frame_indices(cfg, job, track)
        if not idx:
            raise StageInputError(f"{job.path}: no frame to encode")
        clips.append((idx, track.t[idx], [Image.fromarray(a) for a in track.crops(idx, size=cfg.image_size)]))
    images = [im for _, _, ims in clips for im in ims]
    parts = [encoder.encode(images[a:a + cfg.batch_size], layers, cfg.pooling) for a in range(0, len(images), cfg.batch_size)]
    stacked = {layer: np.concatenate([p[layer] for p in parts]) for layer in layers}
    fills, at, identity = [], 0, hub.model_identity(cfg.encoder, cfg.revision)
    for idx, ts, ims in clips:
        arrays = {f"layer_{layer}": stacked[layer][at:at + len(ims)] for layer in layers}
        at += len(ims)
        arrays["frame_indices"] = np.asarray(idx, np.int64)
        arrays["timestamps"] = np.asarray(ts, np.float64)
        doc = {"encoder": identity, "encoder_name": cfg.encoder, "layers": layers,
               "pooling": cfg.pooling, "frames": cfg.frames, "image_size": cfg.image_size, "n_frames": len(ims),
               "dim": int(stacked[layers[0]].shape[1])}

        def fill(out, arrays=arrays, doc=doc):
            out.npz(FEATURES_FILE, **arrays)
            out.json(INFO_FILE, doc)
            return {"n_frames": doc["n_frames"]}

        fills.append(fill)
    return fills


@dataclass
class ClipFeatures:
    layers: dict[int, np.ndarray]  # layer -> (frames, dim)
    frame_indices: np.ndarray
    timestamps: np.ndarray


def load(artifact: Artifact) -> ClipFeatures:
    """A features artifact as arrays."""
    arrays = artifact.npz(FEATURES_FILE)
    layers = {int(k.split("_", 1)[1]): v for k, v in arrays.items() if k.startswith("layer_")}
    return ClipFeatures(layers, arrays["frame_indices"], arrays["timestamps"])


STAGE = Stage(NAME, VERSION, Config, UPSTREAM, process_batch=process_batch, reads=reads, key_extras=key_extras,
              preflight=preflight, open=open, close=VisionEncoder.close)
