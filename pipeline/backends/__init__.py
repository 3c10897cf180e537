"""Model backends: a local transformers model or an OpenAI-compatible server, behind one small interface.

    from pipeline.backends import ModelConfig, Prompt, load_backend, check_model_available

    cfg = ModelConfig(model="HuggingFaceTB/SmolVLM-256M-Instruct")
    check_model_available(cfg)          # cheap; raises ModelUnavailableError / ModelLoadError
    backend = load_backend(cfg)
    scores = backend.score_labels([Prompt([img1, img2, "Which emotion? Answer with one word."])], ["happy", "sad"])
    backend.close()

Heavy imports (torch, transformers, requests) happen inside the functions, so importing this package is cheap.
"""

from __future__ import annotations

from pipeline.backends.base import (
    Backend,
    LabelScore,
    ModelConfig,
    Prompt,
    Video,
)
from pipeline.errors import BackendRequestError, LabelScoringUnsupportedError, ModelLoadError, ModelUnavailableError, VideoInputUnsupportedError


def load_backend(cfg: ModelConfig) -> Backend:
    """Load the model (``transformers``, ``socialfusion``) or connect to the server (``openai``)."""
    if cfg.backend == "transformers":
        from pipeline.backends.hf import TransformersBackend

        return TransformersBackend(cfg)
    if cfg.backend == "openai":
        from pipeline.backends.openai_http import OpenAIBackend

        return OpenAIBackend(cfg)
    if cfg.backend == "socialfusion":
        from pipeline.diagnostics.socialfusion import SocialFusionBackend

        return SocialFusionBackend(cfg)
    raise ValueError(f"unknown backend {cfg.backend!r}")


def check_model_available(cfg: ModelConfig) -> None:
    """Cheap pre-flight before any clip is processed; loads no weights.

    ``transformers``: a local path must exist and hold a ``config.json``; a hub id must be in the local HF cache
    or resolvable on the hub (only ``config.json`` is fetched). ``openai``: the server must answer
    ``GET {server_url}/models`` and list the model. Raises :class:`ModelUnavailableError` or
    :class:`ModelLoadError` with a message that names the model or URL.
    """
    if cfg.backend == "transformers":
        from pipeline.backends.hf import check_hf_available

        check_hf_available(cfg)
    elif cfg.backend == "openai":
        from pipeline.backends.openai_http import check_server_available

        check_server_available(cfg)
    elif cfg.backend == "socialfusion":
        from pipeline.diagnostics.socialfusion import check_socialfusion_available

        check_socialfusion_available(cfg)
    else:
        raise ValueError(f"unknown backend {cfg.backend!r}")


def check_label_scoring(cfg: ModelConfig, labels: list[str]) -> None:
    """Cheap pre-flight: can this backend tell ``labels`` apart? Raises :class:`LabelScoringUnsupportedError`
    naming the labels it cannot (``openai``: labels sharing a first token, see ``openai_http.py``). Backends
    that score every token of a label always can."""
    if cfg.backend == "openai":
        from pipeline.backends.openai_http import check_label_first_tokens

        check_label_first_tokens(cfg, labels)


def check_video_input(cfg: ModelConfig) -> None:
    """Cheap pre-flight for prompts with :class:`Video` parts; loads no weights. Raises
    :class:`VideoInputUnsupportedError` naming the model when it cannot take video: a server (dfer sends servers
    images only), a SocialFusion model, or a transformers checkpoint whose processor has no video processor or
    whose chat template has no video slot. A transformers model whose files are not available here passes
    (its availability is reported by :func:`check_model_available`)."""
    if cfg.backend == "transformers":
        from pipeline.backends.hf import check_hf_video

        check_hf_video(cfg)
        return
    raise VideoInputUnsupportedError(
        f"model {cfg.model!r} (backend {cfg.backend!r}) cannot take video input: only the transformers backend "
        "sends videos, for models whose processor has a video processor (Qwen2-VL, Qwen2.5-VL, ...)"
    )


__all__ = [
    "Backend",
    "BackendRequestError",
    "LabelScore",
    "LabelScoringUnsupportedError",
    "ModelConfig",
    "ModelLoadError",
    "ModelUnavailableError",
    "Prompt",
    "Video",
    "VideoInputUnsupportedError",
    "check_label_scoring",
    "check_model_available",
    "check_video_input",
    "load_backend",
]
