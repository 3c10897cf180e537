"""Model backends behind one small interface, picked by name from :mod:`pipeline.backends.registry`.

    from pipeline.backends import ModelConfig, Prompt, load_backend, check_model_available

    cfg = ModelConfig(model="HuggingFaceTB/SmolVLM-256M-Instruct")
    check_model_available(cfg)          # cheap; raises ModelUnavailableError / ModelLoadError
    backend = load_backend(cfg)
    scores = backend.score_labels([Prompt([img1, img2, "Which emotion? Answer with one word."])], ["happy", "sad"])
    backend.close()

Heavy imports (torch, transformers, requests) happen when a backend is used, so importing this package is cheap.
"""

from __future__ import annotations

from pipeline.backends.base import Backend, LabelScore, ModelConfig, Prompt, Video, model_name
from pipeline.backends.registry import BACKENDS, backend_class


def load_backend(cfg: ModelConfig) -> Backend:
    """Load the model (``transformers``, ``socialfusion``, ``expression``) or connect to the server (``openai``)."""
    return backend_class(cfg.backend)(cfg)


def check_model_available(cfg: ModelConfig) -> None:
    """Cheap pre-flight before any clip is processed; loads no weights (see ``Backend.check_available``)."""
    backend_class(cfg.backend).check_available(cfg)


def check_video_input(cfg: ModelConfig) -> None:
    """Cheap pre-flight for prompts with :class:`Video` parts; loads no weights. Raises
    :class:`pipeline.core.errors.VideoInputUnsupportedError` naming the model when it cannot take video
    (``Backend.check_video``)."""
    backend_class(cfg.backend).check_video(cfg)


def model_identity(cfg: ModelConfig) -> dict:
    """The model's identity in cache keys: the backend name plus what that backend says identifies it (hub id +
    revision, a local folder's content fingerprint, a served model's name), never a path or a URL."""
    return {"backend": cfg.backend, **backend_class(cfg.backend).identity(cfg)}


__all__ = ["BACKENDS", "Backend", "LabelScore", "ModelConfig", "Prompt", "Video", "backend_class",
           "check_model_available", "check_video_input", "load_backend", "model_identity", "model_name"]
