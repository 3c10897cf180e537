"""Frozen vision encoders: any Hugging Face vision tower as a feature extractor (hub id or local folder).

Encoders
    * a **VLM**'s own vision encoder: the checkpoint is loaded with ``AutoModelForImageTextToText`` and its vision
      tower is found (``model.visual`` for Qwen2-VL, ``model.model.vision_model`` for Idefics3/SmolVLM, ...;
      see :func:`find_vision_tower`); the language model is dropped;
    * a **CLIP/SigLIP-family** dual encoder (``CLIPModel``, ``SiglipModel``: its vision half only), or
    * a **vision-only** model (``CLIPVisionModel``, ``SiglipVisionModel``, ViT, DINOv2, ...) through ``AutoModel``,

    each with its ``AutoImageProcessor``. ``trust_remote_code`` stays off unless asked for.

Layers
    Layer ``i`` is ``hidden_states[i]`` of the tower called with ``output_hidden_states=True``: ``0`` is the patch
    embedding (before any block), ``L`` (= ``-1``) the output of the last block, *before* any post-layernorm,
    pooling head or VLM merger/connector. Negative indices count from the end; :func:`resolve_layers` makes them
    absolute, so ``-1`` and ``L`` are the same layer.

Pooling
    ``mean`` over the tower's tokens of one image (every patch token; the class token too where there is one), or
    ``cls`` (the class token; CLIP-family towers only). Qwen2-VL towers return the patches of all images in one
    flat sequence; they are split per image by the processor's ``image_grid_thw``.

Checks that need no weights (is it a vision model, are the layers in range) read only the config:
:func:`check_encoder`. Used by the ``features`` stage and by the SocialFusion backend.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from pipeline.models import hub
from pipeline.models.devices import resolve_device
from pipeline.core.errors import EncoderError, LayerError


@dataclass(frozen=True)
class EncoderInfo:
    """What the config alone says about an encoder."""

    model: str
    kind: str  # "vlm" | "dual" | "vision"
    model_type: str
    n_layers: int
    hidden_size: int | None


def _int_attr(cfg, attrs: tuple[str, ...], positive: bool = False) -> int | None:
    """The first of ``attrs`` that ``cfg`` holds as an int (a positive one with ``positive``), else None."""
    return next((v for a in attrs if isinstance(v := getattr(cfg, a, None), int) and (v > 0 or not positive)), None)


def _is_vision_config(cfg) -> bool:
    has_pixels = any(getattr(cfg, a, None) is not None for a in ("num_channels", "in_channels", "in_chans"))
    has_geometry = any(getattr(cfg, a, None) is not None for a in ("image_size", "patch_size"))
    return has_pixels and has_geometry and getattr(cfg, "vocab_size", None) is None


def check_encoder(model: str, revision: str | None = None, trust_remote_code: bool = False) -> EncoderInfo:
    """Read only the encoder's config and say what it is; :class:`EncoderError` if it is not a vision model."""
    from transformers import AutoConfig
    from transformers.models.auto import modeling_auto

    source, common = hub.source(model, revision, "Encoder", trust_remote_code=trust_remote_code, error=EncoderError)
    try:
        cfg = AutoConfig.from_pretrained(source, **common)
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
    n = _int_attr(vcfg, ("num_hidden_layers", "depth", "num_layers"), positive=True)
    if n is None:
        raise EncoderError(f"encoder {model!r}: cannot tell how many layers its vision tower has (model_type {mt!r})")
    # Qwen2-VL: embed_dim is the blocks' width, hidden_size the merger's
    return EncoderInfo(model, kind, mt, n, _int_attr(vcfg, ("embed_dim", "hidden_size")))


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
        source, common = hub.source(model, revision, "Encoder", trust_remote_code=trust_remote_code, error=EncoderError)
        self.device = torch.device(resolve_device(device))
        self.dtype = getattr(torch, dtype)
        try:
            self.processor = AutoImageProcessor.from_pretrained(source, **common)
        except Exception as exc:  # noqa: BLE001
            raise EncoderError(f"encoder {model!r}: no image processor could be loaded (AutoImageProcessor: "
                               f"{type(exc).__name__}: {exc}); the folder needs its preprocessor_config.json") from exc
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
        if kind == "vision":
            return AutoModel.from_pretrained(source, dtype=self.dtype, **common)
        if kind == "dual":
            import transformers

            prefix = {"clip": "CLIP", "siglip": "Siglip", "siglip2": "Siglip2"}.get(mt)
            cls = getattr(transformers, f"{prefix}VisionModel", None) if prefix else None
            if cls is not None:
                return cls.from_pretrained(source, dtype=self.dtype, **common)
        full = (AutoModelForImageTextToText if kind == "vlm" else AutoModel).from_pretrained(source, dtype=self.dtype, **common)
        tower = find_vision_tower(full)  # the rest of the model is dropped on return
        if tower is None:
            raise EncoderError(f"encoder {self.model_name!r}: no vision tower found inside the {mt} model")
        return tower

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
        for k, v in batch.items():
            if k == "pixel_values":
                continue
            name = "grid_thw" if (k == "image_grid_thw" and self._grid) else k
            if name in self._params and isinstance(v, torch.Tensor):
                kwargs[name] = v.to(self.device)
        counts = batch["image_grid_thw"].prod(-1).tolist() if self._grid else None
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
