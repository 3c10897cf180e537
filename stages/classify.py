"""classify: interleaved keyframe + motion-summary classification (MSCE stage 2).

The prompt (``prompts/classify.j2``) shows the keyframes as images in time order, interleaved
with the motion summary of each gap between them, e.g.
``[0.00 s] <image> [0.00–0.50 s] Motion: … [0.50 s] <image> …``, then asks for one label of the
label set. Every label is scored by the log-likelihood of its tokens right after the prompt
(closed-set scoring, see ``pipeline/backends/hf.py``); raw, uncalibrated scores are stored per
clip. Turning scores into predictions (length normalisation, calibration) happens after the
model, so it never re-runs a model.

Ablation switches (each changes only this stage's key): ``use_summaries``, ``use_keyframes``,
``shuffle`` (bag-of-frames diagnostic: timeline items in random order, timestamps kept), and
``dense_fps`` (dense frames at that rate instead of summaries). ``keyframes.k`` sets the number
of keyframes upstream.

``adapter``: LoRA adapters trained with ``dfer finetune`` (``pipeline/finetune/``, which renders
its training prompts with :func:`render` and trains on the label tokens this stage scores) are
merged into the model at load time; their content hash joins the cache key.

Output ``scores.json``: ``{"labels": [...], "scores": {label: {"logprob", "n_tokens", "exact",
"end_logprob"}}, "prompt_tokens": int, "dense_tokens": int, "dense_frames": int}``.
"""

from __future__ import annotations

import math
import random
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline import modelstage
from pipeline.backends.base import ModelConfig, Prompt
from pipeline.facetrack import FaceTrack
from pipeline.fields import not_in_key
from pipeline.jobs import ClipJob
from pipeline.labels import LabelError, load_label_set
from pipeline.prompts import PromptRenderer, image_slots, template_hash

NAME = "classify"
VERSION = 1
SCORES_FILE = "scores.json"


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: ModelConfig = Field(default_factory=lambda: ModelConfig(model="Qwen/Qwen2.5-VL-3B-Instruct"))
    """The classifier VLM (hub id or local checkpoint folder)."""
    labels: str = "dfew"
    """Label set: dfew, ferv39k, mafw, or a path to a YAML label file (see prompts/labels/)."""
    use_keyframes: bool = True
    """Show the keyframes as images (off: text-only prompt from the summaries)."""
    use_summaries: bool = True
    """Put the motion summaries of the gaps between the keyframes (the context stage) in the prompt."""
    dense_fps: float | None = Field(None, gt=0)
    """Instead of summaries, show dense frames sampled at this rate (the paper's dense baseline)."""
    shuffle: bool = False
    """Shuffle the order of frames and summaries (bag-of-frames diagnostic); timestamps are kept."""
    shuffle_seed: int = 0
    """Seed of the shuffle."""
    image_size: int = Field(224, ge=32)
    """Side of the face crops shown to the model (pixels)."""
    template: str = "classify.j2"
    """Template file name in the prompt folder."""
    prompt_dir: str | None = None
    """Folder with the classification template (default: the built-in prompts/)."""
    length_norm: Literal["sum", "mean"] = not_in_key("sum")
    """How a multi-token label's log-probability becomes its score: the sum over its tokens, or the
    per-token mean. Applied after the model (changing it recomputes nothing)."""
    adapter: str | None = not_in_key(None)
    """LoRA adapters from ``dfer finetune`` (its output folder or the adapter folder in it), merged into
    ``classify.model`` when it is loaded (transformers backend). Not the path but the adapter's content hash
    is part of the cache key; an adapter made for another base model is an error before any clip."""

    @model_validator(mode="after")
    def _something_to_show(self):
        if not self.use_keyframes and not (self.use_summaries or self.dense_fps):
            raise ValueError("classify needs keyframes, summaries or dense frames: all are switched off")
        return self


def upstream(cfg: Config) -> tuple[str, ...]:
    """Summaries come from the context stage; without them classify does not depend on it."""
    ups = ("faces", "keyframes")
    return ups + ("context",) if cfg.use_summaries and cfg.dense_fps is None else ups


UPSTREAM: tuple[str, ...] = ("faces", "keyframes", "context")  # the most it reads; see upstream()


def key_extras(cfg: Config) -> dict:
    label_set = load_label_set(cfg.labels)
    extras = {
        "model": modelstage.model_identity(cfg.model),
        "template": template_hash(cfg.prompt_dir, cfg.template),
        "labels": label_set.names,
    }
    if cfg.adapter is not None:  # only when set, so keys of runs without an adapter never change
        from pipeline.finetune.adapter import adapter_hash

        extras["adapter"] = adapter_hash(cfg.adapter)
    return extras


def preflight(cfg: Config) -> str | None:
    try:
        label_set = load_label_set(cfg.labels)
    except LabelError as exc:
        raise modelstage.PreflightError(f"classify.labels: {exc}") from None
    slot = image_slots(1)[0]
    modelstage.check_template(
        cfg.prompt_dir,
        cfg.template,
        {
            "timeline": [{"kind": "frame", "t": 0.0, "image": slot}, {"kind": "motion", "t_start": 0.0, "t_end": 0.5, "text": "x"}],
            "trajectory": None,
            "labels": label_set.names,
        },
    )
    message = modelstage.preflight_model(cfg.model, f"{NAME}.model")
    if cfg.adapter is not None and message is None:
        from pipeline.finetune.adapter import AdapterError, check_adapter

        try:
            check_adapter(cfg.adapter, cfg.model, label_set.names, template_hash(cfg.prompt_dir, cfg.template))
        except AdapterError as exc:
            raise modelstage.PreflightError(str(exc)) from None
    return message


def open(cfg: Config):  # noqa: A001 - stage protocol name
    backend = modelstage.open_backend(cfg.model)
    if cfg.adapter is not None:
        from pipeline.finetune.adapter import resolve_adapter_dir

        try:
            backend.apply_adapter(resolve_adapter_dir(cfg.adapter))
        except BaseException:
            modelstage.close_backend(backend)
            raise
    return backend


def close(backend) -> None:
    modelstage.close_backend(backend)


def dense_indices(t: np.ndarray, fps: float) -> list[int]:
    """Frames at ``fps`` over the clip (nearest frame to each tick of a regular time grid)."""
    n_ticks = max(1, int(math.floor((t[-1] - t[0]) * fps)) + 1)
    ticks = t[0] + np.arange(n_ticks) / fps
    return sorted({int(np.argmin(np.abs(t - x))) for x in ticks})


def build_timeline(job: ClipJob, cfg: Config, track: FaceTrack) -> tuple[list[dict], list[int], str | None]:
    """Timeline items (in time order unless shuffled) and the frame index of each image slot."""
    kf = job.upstream["keyframes"].json("keyframes.json")
    frames: list[int] = list(kf["indices"]) if cfg.use_keyframes else []
    motions: list[dict] = []
    trajectory = None
    if cfg.dense_fps is not None:
        frames = sorted(set(frames) | set(dense_indices(track.t, cfg.dense_fps)))
    elif cfg.use_summaries:
        ctx = job.upstream["context"].json("context.json")
        motions = [{"kind": "motion", "t_start": g["t_start"], "t_end": g["t_end"], "text": g["summary"]} for g in ctx["gaps"]]
        trajectory = ctx.get("trajectory")
    items = [{"kind": "frame", "t": float(track.t[i]), "index": i} for i in frames] + motions
    items.sort(key=lambda it: (it.get("t", it.get("t_start")), it["kind"] == "motion"))
    if cfg.shuffle:
        random.Random(f"{cfg.shuffle_seed}:{job.fingerprint}").shuffle(items)
    return items, [it["index"] for it in items if it["kind"] == "frame"], trajectory


def render(job: ClipJob, cfg: Config, renderer: PromptRenderer, labels: list[str]) -> tuple[Prompt, FaceTrack, list[int]]:
    track = FaceTrack.load(job.upstream["faces"])
    items, frame_idx, trajectory = build_timeline(job, cfg, track)
    slots = iter(image_slots(len(frame_idx)))
    for it in items:
        if it["kind"] == "frame":
            it["image"] = next(slots)
    images = modelstage.pil_crops(track, frame_idx, cfg.image_size)
    return renderer.render(images, timeline=items, trajectory=trajectory, labels=labels), track, frame_idx


def dense_cost(backend, prompt: Prompt, track: FaceTrack, fps: float, image_size: int) -> tuple[int, int]:
    """Prompt tokens if the same clip were shown as dense frames at ``fps`` and the same resolution:
    the prompt's text tokens plus (number of dense frames) x (tokens of one image)."""
    n_dense = len(dense_indices(track.t, fps))
    one = modelstage.pil_crops(track, [0], image_size)[0]
    text_only = Prompt([p for p in prompt.parts if isinstance(p, str)])
    text_tokens = backend.count_prompt_tokens(text_only)
    per_image = backend.count_prompt_tokens(Prompt([one, " "])) - backend.count_prompt_tokens(Prompt([" "]))
    return text_tokens + n_dense * per_image, n_dense


def process_batch(jobs: list[ClipJob], cfg: Config, backend) -> list:
    label_set = load_label_set(cfg.labels)
    renderer = PromptRenderer(cfg.prompt_dir, cfg.template)
    rendered = [render(job, cfg, renderer, label_set.names) for job in jobs]
    prompts = [r[0] for r in rendered]
    scores = backend.score_labels(prompts, label_set.names)
    fills = []
    for (prompt, track, frame_idx), row in zip(rendered, scores):
        prompt_tokens = backend.count_prompt_tokens(prompt)
        dense_tokens, n_dense = dense_cost(backend, prompt, track, 5.0, cfg.image_size)
        doc = {
            "labels": label_set.names,
            "scores": {lab: row[lab].to_dict() for lab in label_set.names},
            "frame_indices": frame_idx,
            "prompt_tokens": prompt_tokens,
            "dense_tokens": dense_tokens,
            "dense_frames": n_dense,
        }
        fills.append(_fill(doc))
    return fills


def _fill(doc: dict):
    def fill(out):
        out.json(SCORES_FILE, doc)
        return {"prompt_tokens": doc["prompt_tokens"], "dense_tokens": doc["dense_tokens"]}

    return fill
