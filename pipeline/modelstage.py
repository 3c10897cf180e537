"""What the model stages (context, classify) share: pre-flight checks, loading/freeing a backend once per
stage, and face crops as PIL images. (A model's cache identity is :func:`pipeline.backends.model_identity`.)"""

from __future__ import annotations

import gc

from PIL import Image

from pipeline.errors import PreflightError
from pipeline import hub
from pipeline.backends import ModelConfig, check_model_available, load_backend
from pipeline.errors import ModelLoadError, ModelUnavailableError
from pipeline.facetrack import FaceTrack
from pipeline.errors import TemplateError
from pipeline.prompts import PromptRenderer


def preflight_model(cfg: ModelConfig, setting: str) -> str | None:
    """None if the model can be loaded; a message if its weights are not available here (the run
    stops before the stage); raises :class:`PreflightError` for a model that cannot work at all."""
    try:
        check_model_available(cfg)
    except ModelUnavailableError as exc:
        if cfg.backend == "transformers" and hub.is_local_path(cfg.model):
            # a path the user typed that is not there: their error, not the network's
            raise PreflightError(f"{setting}: {exc}") from None
        return f"{setting}: {exc}"
    except ModelLoadError as exc:
        raise PreflightError(f"{setting}: {exc}") from None
    return None


def check_template(prompt_dir: str | None, name: str, variables: dict) -> None:
    """Render a template once with stand-in values so an unknown variable fails before any clip."""
    try:
        images = [object()] * sum(1 for v in _walk(variables) if type(v).__name__ == "ImageSlot")
        PromptRenderer(prompt_dir, name).render(images, **variables)
    except TemplateError as exc:
        raise PreflightError(str(exc)) from None


def _walk(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _walk(v)
    else:
        yield obj


def open_backend(cfg: ModelConfig):
    return load_backend(cfg)


def close_backend(backend) -> None:
    if backend is not None:
        backend.close()
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def pil_crops(track: FaceTrack, indices, size: int) -> list[Image.Image]:
    return [Image.fromarray(a) for a in track.crops(list(indices), size=size)]
