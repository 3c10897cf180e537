"""The ``expression`` backend: the embedded facial-expression model (:mod:`pipeline.models.expression`) as a clip
classifier and as a deterministic motion-to-text captioner.

``classify.model.backend=expression`` / ``context.model.backend=expression`` (``model`` is then
``fer-mini-xception-fer2013``, the only one). It reads per-frame inputs (:attr:`Prompt.inputs`: the expression
stage's cached class probabilities and the faces stage's landmarks of the frames a prompt is about), never the
prompt's text or images, and loads no weights: the expression stage scored every frame once per clip.

* :meth:`score_labels`: a clip-level baseline. A label's score is the mean, over the prompt's frames that have a
  face, of the log-probability of its class; the frames are those classify shows (its keyframes, or the dense
  frames at ``classify.dense_fps``). A label is one of the model's classes through its word
  (:func:`pipeline.models.expression.class_indices`); :meth:`check_labels` refuses a label set with a label the model
  has no class for (MAFW's contempt, anxiety, helplessness, disappointment) before any clip.
* :meth:`generate`: one sentence for the prompt's frames (:func:`pipeline.models.motion_text.describe`): a window's
  caption, a gap's summary (the condense prompt carries all the gap's frames), or the clip's trajectory.

Identity in cache keys: the model id and the sha256 of its weights file. It is available when the weights file is
there (package data of dfer).
"""

from __future__ import annotations

import numpy as np

from pipeline.backends.base import Backend, LabelScore, ModelConfig, Prompt
from pipeline.core.errors import LabelScoringUnsupportedError, ModelLoadError, ModelUnavailableError, StageInputError
from pipeline.eval.labels import LabelSet
from pipeline.models.expression import CLASSES, MODEL_ID, WEIGHTS_FILE, class_indices, weights_sha256
from pipeline.models.motion_text import describe

LOG_FLOOR = 1e-12
"""Probabilities are clipped to this before the log (a class the model rules out scores log(1e-12), not -inf)."""


def label_classes(labels: list[str]) -> dict[str, int]:
    """Each label's class index; :class:`LabelScoringUnsupportedError` naming the labels the model has no class for,
    or the labels that would share one class (they would always tie)."""
    mapping, unknown = class_indices(LabelSet.from_names("labels", labels))
    if unknown:
        raise LabelScoringUnsupportedError(
            f"the embedded expression model ({MODEL_ID}) has no class for {', '.join(unknown)}: it knows "
            f"{', '.join(CLASSES)} (and the spellings the built-in label sets give them). Score these labels with a "
            "VLM, or use a label set of these classes (dfew, ferv39k)")
    by_class: dict[int, list[str]] = {}
    for label, i in mapping.items():
        by_class.setdefault(i, []).append(label)
    shared = [f"{' and '.join(names)} (both {CLASSES[i]})" for i, names in by_class.items() if len(names) > 1]
    if shared:
        raise LabelScoringUnsupportedError(f"the embedded expression model cannot tell {'; '.join(shared)} apart")
    return mapping


class ExpressionBackend(Backend):
    """The embedded expression model behind the backend interface (see the module docstring)."""

    reads = ("expression", "landmarks")
    reads_prompt = False
    default_model = MODEL_ID

    @classmethod
    def check_available(cls, cfg: ModelConfig) -> None:
        """The model id must be the embedded model's, and its weights file must be installed."""
        if cfg.model != MODEL_ID:
            raise ModelLoadError(f"backend 'expression' runs the embedded model {MODEL_ID!r} only, not {cfg.model!r} "
                                 f"(leave the model setting out, or set it to {MODEL_ID})")
        if not WEIGHTS_FILE.is_file():
            raise ModelUnavailableError(f"the embedded expression model's weights {WEIGHTS_FILE} are missing: dfer was "
                                        "installed without its package data; reinstall it")

    @classmethod
    def identity(cls, cfg: ModelConfig) -> dict:
        return {"model": MODEL_ID, "weights_sha256": weights_sha256()}

    @classmethod
    def check_labels(cls, cfg: ModelConfig, labels: list[str]) -> None:
        label_classes(labels)

    @classmethod
    def check_video(cls, cfg: ModelConfig) -> None:
        """Video parts are fine: the frames are what it reads (:attr:`Prompt.inputs`), whatever form the prompt gives them."""

    def __init__(self, cfg: ModelConfig):
        self.check_available(cfg)
        self.cfg = cfg

    @staticmethod
    def _input(prompt: Prompt, name: str) -> np.ndarray:
        if name not in prompt.inputs:
            raise ValueError(f"backend 'expression' reads the per-frame input {name!r}, which this prompt does not carry: "
                             "it runs inside the context and classify stages, which supply it")
        return np.asarray(prompt.inputs[name])

    def score_labels(self, prompts: list[Prompt], labels: list[str]) -> list[dict[str, LabelScore]]:
        classes = label_classes(labels)
        out = []
        for prompt in prompts:
            probs = self._input(prompt, "expression")
            seen = probs[np.isfinite(probs).all(axis=1)]
            if not len(seen):
                raise StageInputError(f"none of the {len(probs)} frames shown to the embedded expression model has a face "
                                      "(the expression stage's probabilities are NaN on all of them)")
            mean_log = np.log(np.clip(seen, LOG_FLOOR, 1.0)).mean(axis=0)
            out.append({lab: LabelScore(logprob=float(mean_log[i]), n_tokens=1) for lab, i in classes.items()})
        return out

    def generate(self, prompts: list[Prompt], max_new_tokens: int | None = None) -> list[str]:
        return [describe(self._input(p, "expression"), self._input(p, "landmarks"), CLASSES) for p in prompts]

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        """No tokens: the model reads per-frame probabilities, not the prompt."""
        return 0

    def close(self) -> None:
        """Nothing to free (no weights are loaded)."""
