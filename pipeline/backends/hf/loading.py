"""Loading a transformers image-text-to-text model.

A hub id and a local folder go through the same ``from_pretrained`` calls (``revision`` and ``trust_remote_code``
passed through). ``dtype``/``device`` become ``dtype=`` and an accelerate ``device_map`` (``{"": "cpu"}``,
``{"": "cuda:1"}``, or ``"balanced"`` over all GPUs). Offline (``HF_HUB_OFFLINE=1``) or with the hub unreachable,
loading is local-files-only and a model that is not cached raises :class:`ModelUnavailableError`; something that
exists but is not an image-text-to-text checkpoint raises :class:`ModelLoadError`.
"""

from __future__ import annotations

from pipeline.backends.base import ModelConfig
from pipeline.core.errors import ModelLoadError, ModelUnavailableError
from pipeline.models import hub
from pipeline.models.devices import resolve_device


def is_unavailable(exc: BaseException) -> bool:
    """Does this loading error (or anything in its chain) mean "files not available here"?"""
    names = {
        "LocalEntryNotFoundError",
        "OfflineModeIsEnabled",
        "RepositoryNotFoundError",
        "GatedRepoError",
        "RevisionNotFoundError",
        "HFValidationError",
    }
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ in names:
            return True
        text = str(e)
        if "couldn't connect to" in text or "Cannot find the requested files" in text:
            return True
        e = e.__cause__ or e.__context__


def device_map_for(setting: str):
    """``ModelConfig.device`` as ``(device_map, input_device)`` for ``from_pretrained``; ``input_device`` is None for
    ``balanced`` (known once the model is placed)."""
    import torch

    device = resolve_device(setting, balanced=True)
    if device == "balanced":
        return "balanced", None
    dev = torch.device("cuda:0" if device == "cuda" else device)
    return {"": str(dev)}, dev


def resolve_dtype(dtype: str, input_device):
    import torch

    if dtype == "auto":
        on_cpu = input_device is not None and input_device.type == "cpu"
        return torch.float32 if on_cpu else "auto"
    return getattr(torch, dtype)


def load_pretrained(cfg: ModelConfig):
    """``(processor, model, input_device)`` of ``cfg`` (see the module docstring); the model in eval mode, the
    input device where its embeddings are when the model is spread over several GPUs."""
    from transformers import AutoModelForImageTextToText, AutoProcessor  # start-up time: torch and transformers

    source, common = hub.source(cfg.model, cfg.revision, trust_remote_code=cfg.trust_remote_code)
    local_only = common["local_files_only"]
    device_map, input_device = device_map_for(cfg.device)
    dtype = resolve_dtype(cfg.dtype, input_device)
    try:
        processor = AutoProcessor.from_pretrained(source, **common)
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype, device_map=device_map, **common)
    except Exception as exc:
        if is_unavailable(exc):
            raise ModelUnavailableError(
                f"Model {cfg.model!r}{hub.revision_note(cfg.revision)} is not available here ({'offline, ' if local_only else ''}"
                f"no usable local copy): {exc}. " + hub.how_to_point_at_local_model(cfg.model)
            ) from exc
        raise ModelLoadError(
            f"Model {cfg.model!r}{hub.revision_note(cfg.revision)} could not be loaded as an image-text-to-text model "
            f"(AutoProcessor + AutoModelForImageTextToText): {type(exc).__name__}: {exc}"
        ) from exc
    model.eval()
    if input_device is None:  # device_map over several GPUs: inputs go where the embeddings are
        input_device = model.get_input_embeddings().weight.device
    return processor, model, input_device
