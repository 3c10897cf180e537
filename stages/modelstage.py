"""What the model stages (context, classify) share: pre-flight checks, the embedded model as a fallback and the rule
of when it may stand in, loading/freeing a backend once per stage, the per-frame inputs a backend reads, and face
crops as PIL images. (A model's cache identity is :func:`pipeline.backends.model_identity`.)

The fallback rule (:func:`embedded_fallback`, :func:`check_fallbacks`): a model stage whose model cannot be had here
(offline, not in the local Hugging Face cache) runs the embedded expression model instead, loudly, unless
``run.fallback=stop`` or ``--strict``. One exception: the embedded model never writes the captions of a
vision-language classifier by default. Its captions are its own reading of the face ("Motion: happy weakens from
1.00 to 0.46"), so a VLM reading them would be handed another classifier's answer as "context". When only the
captioner would fall back and classify runs a model that reads the prompt with the summaries in it, the run stops
before any clip and says how to go on (:func:`check_fallbacks`); asking for the embedded captioner by name
(``context.model.backend=expression``) is no fallback and runs.
"""

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
        if (cfg.backend == "transformers" and hub.is_local_path(cfg.model)) or cfg.backend == "openai":
            # a path the user typed that is not there, or a server that serves other models: their error, not the
            # network's
            raise PreflightError(f"{setting}: {exc}") from None
        return f"{setting}: {exc}"
    except ModelLoadError as exc:
        raise PreflightError(f"{setting}: {exc}") from None
    return None


def embedded_fallback(section, **settings):
    """A model stage's section with the embedded expression model (backend ``expression``) as its model, the other
    settings kept but for ``settings`` (a :class:`stages.base.Fallback`): what the stage runs when its model cannot be
    had here (``run.fallback=embedded``). The model section is rebuilt from the stage's defaults, as ``--set
    <stage>.model.backend=expression`` would build it, so both give the same cache key."""
    swapped = type(section).model_validate({**section.model_dump(), **settings, "model": {"backend": "expression"}})
    return Fallback(swapped, model_name(section.model), model_name(swapped.model))


def check_fallbacks(fell_back: dict[str, dict], section, stages: list[str], blocked: str | None) -> None:
    """The fallback rule (module docstring): raise :class:`PreflightError` when the captioner (stage ``context``) falls
    back to the embedded model while classify, which the run reaches, runs a model that reads the prompt with the
    summaries in it. ``fell_back``: stage -> {asked, ran, reason}; ``section(name)``: the section a stage runs with;
    ``blocked``: the stage the run stops before, if any."""
    if "context" not in fell_back or "classify" not in stages:
        return
    if blocked is not None and stages.index(blocked) <= stages.index("classify"):
        return  # classify does not run
    cls = section("classify")
    if not cls.show_summaries or not backend_class(cls.model.backend).reads_prompt:
        return
    fb = fell_back["context"]
    raise PreflightError(
        f"{fb['reason']}\nThe embedded expression model would stand in for the captioner {fb['asked']} and write its "
        f"own reading of each face (e.g. 'Motion: happy weakens from 1.00 to 0.46') into the prompt of the classifier "
        f"{model_name(cls.model)}: another classifier's answer as its context. Stopped before any clip. To go on, "
        "make the captioner available here (a local folder: --set context.model.model=/path/to/model), or caption "
        "with the classifier itself (--set context.model=classify.model), or ask for the embedded captioner by name "
        "(--set context.model.backend=expression), or leave the summaries out (--set classify.use_summaries=false).")


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
            probs = expression.of(job).probs
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
