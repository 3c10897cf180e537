"""Frozen visual features of face crops or keyframes, from any Hugging Face vision tower, cached per clip.

Encoders (``FeatureConfig.encoder``: a hub id or a local folder, same code path)
    * a **VLM**'s own vision encoder: the checkpoint is loaded with ``AutoModelForImageTextToText`` and its vision
      tower is found (``model.visual`` for Qwen2-VL, ``model.model.vision_model`` for Idefics3/SmolVLM, ...;
      see :func:`find_vision_tower`); the language model is dropped;
    * a **CLIP/SigLIP-family** dual encoder (``CLIPModel``, ``SiglipModel``: its vision half only), or
    * a **vision-only** model (``CLIPVisionModel``, ``SiglipVisionModel``, ViT, DINOv2, ...) through ``AutoModel``,

    each with its ``AutoImageProcessor``. ``trust_remote_code`` stays off unless asked for.

Layers
    Layer ``i`` is ``hidden_states[i]`` of the tower called with ``output_hidden_states=True``: ``0`` is the patch
    embedding (before any block), ``L`` (= ``-1``) the output of the last block, *before* any post-layernorm,
    pooling head or VLM merger/connector. Negative indices count from the end and are stored as absolute
    indices, so ``-1`` and ``L`` share cache entries.

Pooling
    ``mean`` over the tower's tokens of one image (every patch token; the class token too where there is one), or
    ``cls`` (the class token; CLIP-family towers only). Qwen2-VL towers return the patches of all images in one
    flat sequence; they are split per image by the processor's ``image_grid_thw``.

Frames
    ``keyframes`` (the keyframes stage's picks) or ``all`` (frames where a face is present, evenly subsampled to at
    most ``max_frames``). Crops are decoded from the faces artifact at ``image_size`` pixels
    (:meth:`pipeline.facetrack.FaceTrack.crops`) and then given to the encoder's own image processor.

Cache
    One artifact per clip under ``CACHE/features/``: ``features.npz`` (``layer_<i>``: float32 ``(frames, dim)``
    per layer, ``frame_indices``, ``timestamps``) and ``features.json``. Its key is sha256 over the encoder identity
    (hub id + revision, or the content fingerprint of a local folder, never its path), the layers, pooling,
    frame choice, image size and dtype, the upstream faces (and keyframes) artifact keys and the clip fingerprint.
    Checks that need no weights (is it a vision model, are the layers in range) run before anything is loaded or
    extracted; see :func:`check_encoder`.
"""

from __future__ import annotations

import inspect
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, TextIO

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import DiagnosticsError
from pipeline.cache import Cache, artifact_key
from pipeline.config import key_fields
from pipeline.devices import resolve_device
from pipeline.fields import not_in_key
from pipeline.rundir import RunDir

FEATURE_STAGE = "features"
VERSION = 1
FEATURES_FILE = "features.npz"
INFO_FILE = "features.json"


class EncoderError(DiagnosticsError):
    """The encoder is not a usable vision model (or cannot be loaded)."""


class LayerError(DiagnosticsError):
    """A requested layer does not exist in the encoder."""


class FeatureConfig(BaseModel):
    """What features to extract (every field except devices and batch sizes enters the cache key)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    encoder: str
    """Hub id or local folder of a VLM, a CLIP/SigLIP-family model or a vision-only model."""
    revision: str | None = None
    """Hub revision (ignored for local folders)."""
    layers: list[int] = Field(default_factory=lambda: [-1])
    """Hidden-state indices (0 = patch embedding, -1 = last block)."""
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


# ------------------------------------------------------------------------------------------------ encoder checks


@dataclass(frozen=True)
class EncoderInfo:
    """What the config alone says about an encoder."""

    model: str
    kind: str  # "vlm" | "dual" | "vision"
    model_type: str
    n_layers: int
    hidden_size: int | None


def _source(model: str, revision: str | None) -> tuple[str, dict]:
    from pipeline.backends.hf import is_local_path, offline_mode

    if is_local_path(model):
        path = Path(os.path.expanduser(model))
        if not path.is_dir():
            raise EncoderError(f"encoder {model!r}: the local path does not exist (or is not a folder)")
        if not (path / "config.json").is_file():
            raise EncoderError(f"encoder {model!r}: the folder has no config.json, so it is not a transformers checkpoint")
        return str(path), {"local_files_only": True}
    return model, {"revision": revision, "local_files_only": offline_mode()}


def encoder_identity(model: str, revision: str | None) -> dict:
    """Cache identity of an encoder: hub id + revision, or a local folder's content fingerprint (not its path)."""
    from pipeline.backends.hf import _local_fingerprint, is_local_path

    if is_local_path(model):
        return {"local": _local_fingerprint(Path(os.path.expanduser(model)))}
    return {"model": model, "revision": revision}


def _depth(cfg) -> int | None:
    for attr in ("num_hidden_layers", "depth", "num_layers"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _hidden(cfg) -> int | None:
    for attr in ("embed_dim", "hidden_size"):  # Qwen2-VL: embed_dim is the blocks' width, hidden_size the merger's
        v = getattr(cfg, attr, None)
        if isinstance(v, int):
            return v
    return None


def _is_vision_config(cfg) -> bool:
    has_pixels = any(getattr(cfg, a, None) is not None for a in ("num_channels", "in_channels", "in_chans"))
    has_geometry = any(getattr(cfg, a, None) is not None for a in ("image_size", "patch_size"))
    return has_pixels and has_geometry and getattr(cfg, "vocab_size", None) is None


def check_encoder(model: str, revision: str | None = None, trust_remote_code: bool = False) -> EncoderInfo:
    """Read only the encoder's config and say what it is; :class:`EncoderError` if it is not a vision model."""
    from transformers import AutoConfig
    from transformers.models.auto import modeling_auto

    source, common = _source(model, revision)
    try:
        cfg = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **common)
    except Exception as exc:  # noqa: BLE001 - any loading error becomes one message naming the model
        raise EncoderError(f"encoder {model!r}: cannot read its config: {type(exc).__name__}: {exc}") from exc
    mt = getattr(cfg, "model_type", "") or ""
    vision_cfg = getattr(cfg, "vision_config", None)
    if vision_cfg is not None and mt in modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        kind, vcfg = "vlm", vision_cfg
    elif vision_cfg is not None:
        kind, vcfg = "dual", vision_cfg
    elif _is_vision_config(cfg):
        kind, vcfg = "vision", cfg
    else:
        archs = getattr(cfg, "architectures", None) or []
        raise EncoderError(
            f"encoder {model!r} is not a vision model (model_type {mt!r}, architectures {archs}): it has no vision "
            "tower. Give a VLM (its vision encoder is used), a CLIP/SigLIP-family model, or a vision-only model."
        )
    n = _depth(vcfg)
    if n is None:
        raise EncoderError(f"encoder {model!r}: cannot tell how many layers its vision tower has (model_type {mt!r})")
    return EncoderInfo(model, kind, mt, n, _hidden(vcfg))


def resolve_layers(layers: Iterable[int], info: EncoderInfo) -> list[int]:
    """Absolute hidden-state indices (0..n_layers), sorted, duplicates removed; :class:`LayerError` if out of range."""
    n = info.n_layers
    out = set()
    for layer in layers:
        if not isinstance(layer, (int, np.integer)) or isinstance(layer, bool):
            raise LayerError(f"encoder {info.model!r}: layer {layer!r} is not an integer")
        if not -(n + 1) <= layer <= n:
            raise LayerError(
                f"encoder {info.model!r}: layer {layer} is out of range; its vision tower has {n} layers, so layers "
                f"are 0 (patch embedding) .. {n} (last block), or -1 .. -{n + 1} counted from the end"
            )
        out.add(int(layer) % (n + 1))
    if not out:
        raise LayerError(f"encoder {info.model!r}: no layer requested")
    return sorted(out)


def parse_layers(text: str, info: EncoderInfo | None = None) -> list[int]:
    """``"-1"``, ``"4,8,-1"``, ``"all"`` (needs ``info``) into a list of ints."""
    text = text.strip()
    if text == "all":
        if info is None:
            raise LayerError("layers 'all' needs the encoder")
        return list(range(info.n_layers + 1))
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise LayerError(f"layers must be integers separated by commas (or 'all'), got {text!r}") from None


# ------------------------------------------------------------------------------------------------ the encoder

_TOWER_PATHS = ("model.visual", "visual", "model.vision_tower", "vision_tower", "model.vision_model", "vision_model",
                "model.vision_encoder", "vision_encoder", "model.vision", "vision")


def _get_path(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_vision_tower(model):
    """The vision encoder inside a VLM or a dual encoder: the first known attribute path that holds a module
    (``model.visual``, ``model.vision_model``, ``vision_tower``, ...), else the shallowest submodule whose config is
    the model's ``vision_config``; ``None`` if there is none."""
    import torch

    for path in _TOWER_PATHS:
        tower = _get_path(model, path)
        if isinstance(tower, torch.nn.ModuleList):
            tower = tower[0] if len(tower) else None
        if isinstance(tower, torch.nn.Module):
            return tower
    vcfg = getattr(getattr(model, "config", None), "vision_config", None)
    best = None
    for name, mod in model.named_modules():
        if name and vcfg is not None and getattr(mod, "config", None) is vcfg:
            if best is None or name.count(".") < best[0].count("."):
                best = (name, mod)
    return best[1] if best else None


class VisionEncoder:
    """A frozen vision tower plus its image processor. ``encode`` gives pooled features per requested layer."""

    loads = 0  # how many encoders were loaded in this process (tests check that a cached run loads none)

    def __init__(self, model: str, revision: str | None = None, *, device: str = "auto", dtype: str = "float32",
                 trust_remote_code: bool = False):
        import torch
        from transformers import AutoImageProcessor

        self.info = check_encoder(model, revision, trust_remote_code)
        self.model_name = model
        self.revision = revision
        source, common = _source(model, revision)
        common["trust_remote_code"] = trust_remote_code
        self.device = torch.device(resolve_device(device))
        self.dtype = getattr(torch, dtype)
        try:
            self.processor = AutoImageProcessor.from_pretrained(source, **common)
        except Exception as exc:  # noqa: BLE001
            raise EncoderError(
                f"encoder {model!r}: no image processor could be loaded (AutoImageProcessor: "
                f"{type(exc).__name__}: {exc}); the folder needs its preprocessor_config.json"
            ) from exc
        try:
            tower = self._load_tower(source, common)
        except EncoderError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise EncoderError(f"encoder {model!r}: cannot load its weights: {type(exc).__name__}: {exc}") from exc
        self.tower = tower.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        params = inspect.signature(self.tower.forward).parameters
        self._params = set(params)
        self._grid = "grid_thw" in params
        emb = getattr(self.tower, "embeddings", None)
        self.has_cls = getattr(emb, "class_embedding", None) is not None
        VisionEncoder.loads += 1

    def _load_tower(self, source: str, common: dict):
        from transformers import AutoModel, AutoModelForImageTextToText

        kind, mt = self.info.kind, self.info.model_type
        if kind == "vlm":
            full = AutoModelForImageTextToText.from_pretrained(source, dtype=self.dtype, **common)
            tower = find_vision_tower(full)
            if tower is None:
                raise EncoderError(f"encoder {self.model_name!r}: no vision tower found inside the {mt} model")
            del full
            return tower
        if kind == "dual":
            import transformers

            prefix = {"clip": "CLIP", "siglip": "Siglip", "siglip2": "Siglip2"}.get(mt)
            cls = getattr(transformers, f"{prefix}VisionModel", None) if prefix else None
            if cls is not None:
                return cls.from_pretrained(source, dtype=self.dtype, **common)
            full = AutoModel.from_pretrained(source, dtype=self.dtype, **common)
            tower = find_vision_tower(full)
            if tower is None:
                raise EncoderError(f"encoder {self.model_name!r}: no vision tower found inside the {mt} model")
            return tower
        return AutoModel.from_pretrained(source, dtype=self.dtype, **common)

    def identity(self) -> dict:
        return encoder_identity(self.model_name, self.revision)

    def encode(self, images: list, layers: list[int], pooling: str = "mean") -> dict[int, np.ndarray]:
        """Pooled features ``{layer: float32 (len(images), dim)}`` of PIL images (layers already absolute)."""
        import torch

        if pooling == "cls" and not self.has_cls:
            raise EncoderError(f"encoder {self.model_name!r}: pooling 'cls' needs a class token, which this tower has not; use 'mean'")
        if not images:
            return {layer: np.zeros((0, self.info.hidden_size or 0), np.float32) for layer in layers}
        extra = {"do_image_splitting": False} if hasattr(self.processor, "do_image_splitting") else {}
        batch = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt", **extra)
        pv = batch["pixel_values"]
        if pv.ndim == 5:  # (1 sample, N images, C, H, W): Idefics3-style processors
            pv = pv.flatten(0, 1)
        kwargs = {"output_hidden_states": True}
        counts = None
        for k, v in batch.items():
            if k == "pixel_values":
                continue
            name = "grid_thw" if (k == "image_grid_thw" and self._grid) else k
            if name in self._params and isinstance(v, torch.Tensor):
                kwargs[name] = v.to(self.device)
        if self._grid:
            counts = batch["image_grid_thw"].prod(-1).tolist()
        with torch.inference_mode():
            out = self.tower(pv.to(device=self.device, dtype=self.dtype), **kwargs)
        hs = getattr(out, "hidden_states", None)
        if hs is None:
            raise EncoderError(f"encoder {self.model_name!r}: its vision tower returns no hidden states")
        if max(layers) >= len(hs):
            raise LayerError(f"encoder {self.model_name!r}: layer {max(layers)} requested but the tower returned {len(hs)} hidden states")
        feats = {}
        for layer in layers:
            h = hs[layer].float()
            if counts is not None:  # flat (sum of patches, dim)
                parts = torch.split(h, counts, dim=0)
                pooled = torch.stack([p[0] if pooling == "cls" else p.mean(0) for p in parts])
            elif h.ndim == 3:
                pooled = h[:, 0] if pooling == "cls" else h.mean(1)
            elif h.ndim == 4:  # convolutional maps (N, C, H, W)
                pooled = h.mean((2, 3))
            else:
                raise EncoderError(f"encoder {self.model_name!r}: unexpected hidden-state shape {tuple(h.shape)}")
            if pooled.shape[0] != len(images):
                raise EncoderError(f"encoder {self.model_name!r}: got {pooled.shape[0]} feature rows for {len(images)} images")
            feats[layer] = pooled.cpu().numpy().astype(np.float32)
        return feats

    def close(self) -> None:
        for name in ("tower", "processor"):
            if hasattr(self, name):
                delattr(self, name)


# ------------------------------------------------------------------------------------------------ clips and cache


@dataclass(frozen=True)
class ClipRef:
    """One clip as a run directory knows it: id, content fingerprint, upstream artifact keys, label."""

    video: str
    fingerprint: str
    artifacts: dict
    label: str | None = None


def clips_from_run(run_dir: str | Path) -> tuple[list[ClipRef], Cache]:
    """Clips of a run directory (its manifest) and the cache it used."""
    run = RunDir(run_dir)
    clips = [ClipRef(r.video, r.fingerprint, r.artifacts, r.label) for r in run.manifest() if r.fingerprint]
    return clips, run.cache()


@dataclass
class FeatureResult:
    """Where each clip's features are (``keys``: video -> artifact key) and what the extraction did."""

    config: FeatureConfig
    identity: dict
    layers: list[int]
    keys: dict[str, str] = field(default_factory=dict)
    cached: int = 0
    computed: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def line(self) -> str:
        return (f"features [{self.config.encoder}, layers {self.layers}]: {self.cached} cached, {self.computed} computed, "
                f"{len(self.failed)} failed [{self.seconds:.1f} s]")


def upstream_stages(cfg: FeatureConfig) -> tuple[str, ...]:
    return ("faces", "keyframes") if cfg.frames == "keyframes" else ("faces",)


def feature_key(cfg: FeatureConfig, layers: list[int], identity: dict, clip: ClipRef) -> str:
    kcfg = key_fields(cfg)
    kcfg["layers"] = layers
    for name in ("encoder", "revision", "trust_remote_code"):
        kcfg.pop(name, None)  # the encoder is in the key through its identity
    if cfg.frames == "keyframes":
        kcfg.pop("max_frames", None)
    upstream = {u: clip.artifacts[u] for u in upstream_stages(cfg)}
    return artifact_key(FEATURE_STAGE, VERSION, kcfg, upstream, clip.fingerprint, {"encoder": identity})


def _frame_indices(cfg: FeatureConfig, cache: Cache, clip: ClipRef, track) -> list[int]:
    n = len(track)
    if cfg.frames == "keyframes":
        return list(cache.get("keyframes", clip.artifacts["keyframes"]).json("keyframes.json")["indices"])
    present = np.flatnonzero(track.arrays["present"])
    pool = present if len(present) else np.arange(n)
    if len(pool) <= cfg.max_frames:
        return [int(i) for i in pool]
    pick = np.linspace(0, len(pool) - 1, cfg.max_frames).round().astype(int)
    return sorted({int(pool[i]) for i in pick})


def extract_features(clips: list[ClipRef], cfg: FeatureConfig, cache: Cache, *, force: bool = False,
                     log: TextIO | None = None) -> FeatureResult:
    """Features of every clip under ``cfg``, from the cache where present; the encoder is loaded only if a clip
    needs computing. Checks (vision model? layers in range?) run before anything is loaded."""
    from PIL import Image

    from pipeline.facetrack import FaceTrack

    t0 = time.time()
    info = check_encoder(cfg.encoder, cfg.revision, cfg.trust_remote_code)
    layers = resolve_layers(cfg.layers, info)
    identity = encoder_identity(cfg.encoder, cfg.revision)
    res = FeatureResult(cfg, identity, layers)
    todo: list[tuple[ClipRef, str]] = []
    for clip in clips:
        missing = [u for u in upstream_stages(cfg) if u not in clip.artifacts or cache.get(u, clip.artifacts[u]) is None]
        if missing:
            res.failed[clip.video] = f"upstream artifact(s) {missing} missing from the cache (run the pipeline up to them)"
            continue
        key = feature_key(cfg, layers, identity, clip)
        res.keys[clip.video] = key
        if not force and cache.get(FEATURE_STAGE, key) is not None:
            res.cached += 1
        else:
            todo.append((clip, key))
    if todo:
        encoder = VisionEncoder(cfg.encoder, cfg.revision, device=cfg.device, dtype=cfg.dtype,
                                trust_remote_code=cfg.trust_remote_code)
        if cfg.pooling == "cls" and not encoder.has_cls:
            raise EncoderError(f"encoder {cfg.encoder!r}: pooling 'cls' needs a class token, which this tower has not; use 'mean'")
        try:
            group: list[tuple[ClipRef, str, list[int], np.ndarray, list]] = []
            n_images = 0
            for clip, key in todo:
                try:
                    track = FaceTrack.load(cache.get("faces", clip.artifacts["faces"]))
                    idx = _frame_indices(cfg, cache, clip, track)
                    images = [Image.fromarray(a) for a in track.crops(idx, size=cfg.image_size)]
                except Exception as exc:  # noqa: BLE001 - one clip's bad artifact is that clip's failure
                    res.failed[clip.video] = f"{type(exc).__name__}: {exc}"
                    res.keys.pop(clip.video, None)
                    continue
                group.append((clip, key, idx, track.t[idx] if len(idx) else np.zeros(0), images))
                n_images += len(images)
                if n_images >= cfg.batch_size:
                    _flush(group, encoder, cfg, layers, identity, cache, force, res)
                    group, n_images = [], 0
            if group:
                _flush(group, encoder, cfg, layers, identity, cache, force, res)
        finally:
            encoder.close()
    res.seconds = time.time() - t0
    if log is not None:
        print(res.line(), file=log, flush=True)
    return res


def _flush(group, encoder: VisionEncoder, cfg: FeatureConfig, layers, identity, cache: Cache, force, res) -> None:
    images = [im for g in group for im in g[4]]
    feats: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    for start in range(0, len(images), cfg.batch_size):
        part = encoder.encode(images[start:start + cfg.batch_size], layers, cfg.pooling)
        for layer in layers:
            feats[layer].append(part[layer])
    stacked = {layer: np.concatenate(v) for layer, v in feats.items()}
    at = 0
    for clip, key, idx, ts, imgs in group:
        arrays = {f"layer_{layer}": stacked[layer][at:at + len(imgs)] for layer in layers}
        at += len(imgs)
        arrays["frame_indices"] = np.asarray(idx, np.int64)
        arrays["timestamps"] = np.asarray(ts, np.float64)
        doc = {"encoder": identity, "encoder_name": cfg.encoder, "layers": layers, "pooling": cfg.pooling,
               "frames": cfg.frames, "image_size": cfg.image_size, "n_frames": len(imgs),
               "dim": int(stacked[layers[0]].shape[1]) if len(images) else None}
        meta = {"video_id": clip.video, "fingerprint": clip.fingerprint, "stage_version": VERSION,
                "config": key_fields(cfg), "upstream": {u: clip.artifacts[u] for u in upstream_stages(cfg)},
                "extras": {"encoder": identity}}

        def fill(out, arrays=arrays, doc=doc):
            out.npz(FEATURES_FILE, **arrays)
            out.json(INFO_FILE, doc)
            return {"n_frames": doc["n_frames"]}

        cache.write(FEATURE_STAGE, key, meta, fill, replace=force)
        res.computed += 1


@dataclass
class ClipFeatures:
    layers: dict[int, np.ndarray]  # layer -> (frames, dim)
    frame_indices: np.ndarray
    timestamps: np.ndarray


def load_features(cache: Cache, key: str) -> ClipFeatures:
    art = cache.get(FEATURE_STAGE, key)
    if art is None:
        raise DiagnosticsError(f"features artifact {key[:12]} is not in the cache {cache.root}")
    arrays = art.npz(FEATURES_FILE)
    layers = {int(k.split("_", 1)[1]): v for k, v in arrays.items() if k.startswith("layer_")}
    return ClipFeatures(layers, arrays["frame_indices"], arrays["timestamps"])


def clip_level(cache: Cache, result: FeatureResult, layer: int, videos: list[str]) -> np.ndarray:
    """Clip-level features ``(len(videos), dim)``: the **mean over the clip's frames** of one layer's pooled
    features (probes are trained per clip, never per frame)."""
    rows = []
    for v in videos:
        f = load_features(cache, result.keys[v]).layers[layer]
        if len(f) == 0:
            raise DiagnosticsError(f"clip {v!r} has no frames in its features artifact")
        rows.append(f.mean(0))
    return np.stack(rows).astype(np.float32)


def frame_level(cache: Cache, result: FeatureResult, layer: int, videos: list[str]) -> list[np.ndarray]:
    """Per-frame features of one layer, one ``(frames, dim)`` array per clip (what the SocialFusion model reads)."""
    return [load_features(cache, result.keys[v]).layers[layer] for v in videos]


def default_log() -> TextIO:
    return sys.stderr
