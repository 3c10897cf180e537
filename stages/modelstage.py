"""What the model stages (context, classify) share: pre-flight checks, the embedded model as a fallback,
loading/freeing a backend once per stage, the per-frame inputs a backend reads, and face crops as PIL images.
(A model's cache identity is :func:`pipeline.backends.model_identity`.)"""

from __future__ import annotations

import gc
import sys

import numpy as np
from PIL import Image

from pipeline.models import hub
from pipeline.backends import ModelConfig, backend_class, check_model_available, load_backend, model_name
from pipeline.core.errors import ModelLoadError, ModelUnavailableError, PreflightError, StageInputError, TemplateError
from stages.faces.facetrack import FaceTrack
from pipeline.core.jobs import ClipJob
from stages import expression
from stages.base import Fallback
from stages.templates import PromptRenderer

INPUT_STAGES = {"expression": "expression", "landmarks": "faces"}
"""The stage each per-frame input of a backend (:data:`pipeline.backends.base.FRAME_INPUTS`) comes from."""


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


def embedded_fallback(section):
    """A model stage's section with the embedded expression model (backend ``expression``) as its model, the other
    settings kept (a :class:`stages.base.Fallback`): what the stage runs when its model cannot be had here (``run.fallback=embedded``). The model
    section is rebuilt from the stage's defaults, as ``--set <stage>.model.backend=expression`` would build it, so
    both give the same cache key."""
    swapped = type(section).model_validate({**section.model_dump(), "model": {"backend": "expression"}})
    return Fallback(swapped, model_name(section.model), model_name(swapped.model))


def input_stages(cfg: ModelConfig) -> tuple[str, ...]:
    """The stages a model stage reads for its backend's per-frame inputs, besides faces (read anyway)."""
    return tuple(dict.fromkeys(INPUT_STAGES[n] for n in backend_class(cfg.backend).reads if INPUT_STAGES[n] != "faces"))


class FrameInputs:
    """One clip's per-frame inputs that a backend reads (``Backend.reads``), to hand to its prompts."""

    def __init__(self, reads: tuple[str, ...], job: ClipJob, track: FaceTrack):
        self.arrays: dict[str, np.ndarray] = {}
        if "landmarks" in reads:
            self.arrays["landmarks"] = track.arrays["landmarks"]
        if "expression" in reads:
            probs = expression.load(job.upstream["expression"]).probs
            if len(probs) != len(track):
                raise StageInputError(f"{job.path}: the expression artifact has {len(probs)} frames, the faces artifact "
                                      f"{len(track)}")
            self.arrays["expression"] = probs

    def of(self, indices) -> dict[str, np.ndarray]:
        """The inputs of frames ``indices`` (in time order), for :attr:`pipeline.backends.Prompt.inputs`."""
        idx = sorted(set(int(i) for i in indices))
        return {name: a[idx] for name, a in self.arrays.items()}


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


def open_model(section):
    """A model stage's ``open``: its section's ``model`` loaded once per process."""
    return load_backend(section.model)


def close_backend(backend) -> None:
    if backend is not None:
        backend.close()
    gc.collect()
    torch = sys.modules.get("torch")  # only a backend that imported torch can have left GPU memory in its cache
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def pil_crops(track: FaceTrack, indices, size: int) -> list[Image.Image]:
    return [Image.fromarray(a) for a in track.crops(list(indices), size=size)]
