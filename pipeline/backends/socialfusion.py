"""The ``socialfusion`` backend: a saved SocialFusion model (:mod:`pipeline.models.socialfusion`) as a classify model.

``classify.model.backend=socialfusion``, ``classify.model.model=<saved folder>``. It uses the prompt's **images
only** (in order) and replaces the prompt's text by its own training prompt for ``default_task``; a label's score
is log P(label tokens) and ``end_logprob`` log P(EOS | label). Give it the crops it was trained on:
``classify.image_size`` equal to the model's ``image_size`` and the same keyframes settings; the motion summaries
are not read (``classify.use_summaries=false`` saves the captioner).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np

from pipeline.models import hub
from pipeline.backends.base import Backend, LabelScore, ModelConfig
from pipeline.models.devices import resolve_device
from pipeline.core.errors import EncoderError, ModelLoadError, SocialFusionError
from pipeline.models.socialfusion import SocialFusionModel, read_config
from pipeline.models.vision import VisionEncoder

log = logging.getLogger(__name__)


class SocialFusionBackend(Backend):
    """A saved SocialFusion model behind the backend interface (see the module docstring)."""

    @classmethod
    def check_available(cls, cfg: ModelConfig) -> None:
        """The folder must hold a SocialFusion model (loads no weights)."""
        folder = Path(os.path.expanduser(cfg.model))
        if not folder.is_dir():
            raise ModelLoadError(f"SocialFusion model {cfg.model!r}: no such folder")
        try:
            read_config(folder)
        except (SocialFusionError, ValueError) as exc:
            raise ModelLoadError(f"SocialFusion model {cfg.model!r}: {exc}") from None

    @classmethod
    def identity(cls, cfg: ModelConfig) -> dict:
        """Always a local folder: its content fingerprint, never its path."""
        return hub.folder_identity(cfg.model)

    def __init__(self, cfg: ModelConfig):
        self.check_available(cfg)
        self.cfg = cfg
        self._lock = threading.RLock()
        try:
            self.model = SocialFusionModel.load(cfg.model, device=resolve_device(cfg.device))
        except (SocialFusionError, EncoderError) as exc:
            raise ModelLoadError(f"SocialFusion model {cfg.model!r}: {exc}") from exc
        self._encoder: VisionEncoder | None = None
        self._warned: set[str] = set()

    def _encoder_(self) -> VisionEncoder:
        if self._encoder is None:
            c = self.model.cfg
            current = hub.model_identity(c.encoder, c.encoder_revision)
            if c.encoder_identity and current != c.encoder_identity:
                raise ModelLoadError(f"SocialFusion model {self.cfg.model!r}: the encoder {c.encoder!r} is not the one it "
                                     f"was trained with (identity {current} != {c.encoder_identity})")
            self._encoder = VisionEncoder(c.encoder, c.encoder_revision, device=str(self.model.device))
        return self._encoder

    def features(self, prompt) -> np.ndarray:
        """Per-frame features ``(images, dim)`` of a prompt's images, as the model was trained on."""
        from PIL import Image

        if not prompt.images:
            raise ValueError("the SocialFusion backend needs at least one image in the prompt (it reads frames, not text)")
        size = self.model.cfg.image_size
        fixed = []
        for im in prompt.images:
            im = im.convert("RGB")
            if im.size != (size, size):
                if "size" not in self._warned:
                    self._warned.add("size")
                    log.warning("SocialFusion model %s was trained on %dx%d crops; resizing %dx%d images (set "
                                "classify.image_size=%d to avoid it)", self.cfg.model, size, size, *im.size, size)
                im = im.resize((size, size), Image.Resampling.BICUBIC)
            fixed.append(im)
        layer = self.model.cfg.layer
        return self._encoder_().encode(fixed, [layer], self.model.cfg.pooling)[layer]

    def score_labels(self, prompts: list, labels: list[str]) -> list[dict]:
        task = self.model.cfg.default_task
        unknown = [lab for lab in labels if lab not in self.model.cfg.tasks[task] and lab not in self._warned]
        if unknown:
            self._warned.update(unknown)
            log.warning("SocialFusion model %s was not trained to answer %s for task %r (its labels: %s)",
                        self.cfg.model, unknown, task, self.model.cfg.tasks[task])
        with self._lock:
            feats = [self.features(p) for p in prompts]
            rows = self.model.label_scores(feats, labels, task, batch_rows=max(1, self.cfg.batch_size) * len(labels))
        return [{lab: LabelScore(logprob=r[lab][0], n_tokens=r[lab][1], exact=True, end_logprob=r[lab][2])
                 for lab in labels} for r in rows]

    def generate(self, prompts: list, max_new_tokens: int | None = None) -> list[str]:
        with self._lock:
            return [self.model.generate(self.features(p), max_new_tokens=max_new_tokens or self.cfg.max_new_tokens)
                    for p in prompts]

    def count_prompt_tokens(self, prompt) -> int:
        return self.model.n_prompt_tokens(len(prompt.images))

    def close(self) -> None:
        with self._lock:
            if self._encoder is not None:
                self._encoder.close()
                self._encoder = None
            self.model = None
