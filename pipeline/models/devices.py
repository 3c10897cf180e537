"""What a ``device`` setting means, in one place (face detector, backends, encoders, training).

Settings: ``auto`` (a GPU when one is visible, else the CPU), ``cpu``, ``cuda``, ``cuda:N``, and for models
that may be spread over several GPUs ``balanced`` (an accelerate ``device_map``; the CPU when no GPU is
visible). torch is imported only when a setting has to be resolved.
"""

from __future__ import annotations

import logging

from pipeline.core.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(setting: str, *, balanced: bool = False) -> str:
    """The device ``setting`` means on this machine: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, or ``"balanced"`` (only
    with ``balanced=True``; without it ``balanced`` means the same as ``auto``). :class:`ConfigError` when a GPU
    is asked for and none is visible."""
    import torch

    has_cuda = torch.cuda.is_available()
    if setting == "balanced":
        if balanced and has_cuda:
            return "balanced"
        if balanced:
            log.warning("device='balanced' but no GPU is visible: loading on cpu")
        setting = "auto"
    if setting == "auto":
        return "cuda" if has_cuda else "cpu"
    if setting.startswith("cuda") and not has_cuda:
        raise ConfigError(f"device={setting!r} was requested but CUDA is not available on this machine")
    return setting
