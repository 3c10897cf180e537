"""classify: interleaved keyframe + motion-summary classification (MSCE stage 2).

The prompt (``prompts/classify.j2``) shows the keyframes as images in time order, interleaved
with the motion summary of each gap (before the first keyframe, between keyframes, after the last),
e.g. ``[0.00–0.48 s] Motion: … [0.48 s] <image> [0.48–1.48 s] Motion: … [1.48 s] <image> …``, then
asks for one label of the label set. Every label is scored by the log-likelihood of its tokens right
after the prompt (closed-set scoring, see ``pipeline/backends/hf_scoring.py``); raw, uncalibrated scores are
stored per clip. Turning scores into predictions (``pipeline/eval/ranking.py``, calibration) happens after
the model, so it never re-runs a model.

Ablation switches (each changes only this stage's key): ``label_order`` (the order of the label list in the prompt:
``fixed``, ``reversed``, or ``shuffled`` per clip, for order effects; see :func:`shown_labels`), ``use_summaries``,
``use_keyframes``,
``shuffle`` (bag-of-frames diagnostic: timeline items in random order and no timestamps, see
:func:`build_timeline`), and ``dense_fps`` (the dense baseline: frames sampled at that rate, on their
own unless ``use_keyframes``/``use_summaries`` are set to true; ``dense_input=video`` sends them as the
model's native video input). ``keyframes.k`` sets the number of keyframes upstream.

``classify.model.backend=expression``: the embedded expression model as a clip-level baseline (mean per-frame
log-probability of each label's class over the frames the prompt shows; see ``pipeline/backends/expression.py``).
It reads the expression stage's probabilities (an extra upstream, :func:`stages.modelstage.input_stages`).
When ``classify.model`` cannot be had here (offline, not in the local cache), the embedded model stands in
(:func:`fallback`; ``run.fallback=stop`` or ``--strict``: the run stops before this stage instead).

``answer``: ``scores`` (default) scores every label as above; ``generate`` lets the model answer in free text
(``max_new_tokens`` of ``classify.model``), parsed to a label when the run's outputs are written
(:mod:`pipeline.eval.answers`: the label's name, its word aliases, then the label file's synonyms; an answer that names
no label, or two, is an abstention). Less exact than scoring (no probabilities, no calibration, and a model that
rambles abstains): for servers or APIs that give no log-probabilities.

Before any clip, the model is tried with a stand-in prompt of this stage (the template rendered with gray images
in place of the face crops): a server that answers without log-probabilities stops the run there
(:meth:`pipeline.backends.base.Backend.check_scoring`).

``adapter``: LoRA adapters trained with ``dfer finetune`` (``pipeline/finetune/``, which renders
its training prompts with :func:`render` and trains on the label tokens this stage scores) are
merged into the model at load time; their content hash joins the cache key.

Output ``scores.json``: ``{"labels": [...], "scores": {label: {"logprob", "n_tokens", "exact",
"end_logprob"}}, "label_matching": str | null, "frame_indices": [...], "prompt_tokens": int, "dense_tokens": int,
"dense_frames": int}`` (``label_matching``: how a server's answer tokens were matched to labels, in words; null for a
backend that scores every label token in this process), and ``"label_order"`` (the labels in the order the prompt
listed them) when ``label_order`` is not ``fixed``. With ``answer=generate``: ``"answer": str`` in place of
``scores`` and ``label_matching``. :func:`pipeline.eval.ranking.decide` reads either.
"""

from __future__ import annotations

import math
import random
import re
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from stages import modelstage
from pipeline.backends import backend_class, check_video_input, model_identity, model_name
from pipeline.backends.adapter import adapter_hash, check_adapter, resolve_adapter_dir
from pipeline.backends.base import Prompt, Video, frame_rate, stage_model
from pipeline.core.errors import (AdapterError, BackendRequestError, LabelScoringUnsupportedError, ModelLoadError,
                                  VideoInputUnsupportedError)
from stages.faces.facetrack import FaceTrack
from pipeline.core.fields import not_in_key
from pipeline.core.jobs import ClipJob
from pipeline.eval.labels import LabelError, load_label_set
from stages.templates import PromptRenderer, image_slots, template_hash, template_path
from stages.base import Fallback, Stage

NAME = "classify"
VERSION = 5  # 2: lead-in/lead-out summaries, shuffled prompts without timestamps, dense frames alone, video input;
# 3: the openai backend matches labels on token ids (no string prefixes), label_matching recorded; answer=generate;
# 4: dense frames only where the person's face is;
# 5: the openai backend scores a label's first token as the chat template writes the answer (the transformers
# backend's rule), not the larger of its bare and space-led forms, where the server renders chats (vLLM)
SCORES_FILE = "scores.json"
ClassifierModel = stage_model(model="Qwen/Qwen2.5-VL-3B-Instruct")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: ClassifierModel = Field(default_factory=dict, validate_default=True)
    """The classifier VLM (hub id or local checkpoint folder), or the embedded expression model
    (``backend: expression``)."""
    labels: str = "dfew"
    """Label set: dfew, ferv39k, mafw, or a path to a YAML label file (see prompts/labels/)."""
    answer: Literal["scores", "generate"] = "scores"
    """How the model gives its answer: ``scores``, the log-probability of every label (exact on the transformers
    backend; a server must return ``logprobs``); ``generate``, a free-text answer parsed to a label (its name, word
    aliases or synonyms of the label file; anything else is an abstention): less exact, for servers and APIs
    without log-probabilities."""
    use_keyframes: bool | None = None
    """Show the keyframes as images (false: text-only prompt from the summaries). Default (null): true, unless
    ``dense_fps`` is set."""
    use_summaries: bool | None = None
    """Put the motion summaries of the gaps (the context stage) in the prompt. Default (null): true, unless
    ``dense_fps`` is set."""
    dense_fps: float | None = Field(None, gt=0)
    """The dense baseline: show frames sampled at this rate over the whole clip. On its own it replaces the
    keyframes and summaries (the prompt shows the dense frames only); set ``use_keyframes``/``use_summaries`` to
    true to add them."""
    dense_input: Literal["images", "video"] = "images"
    """How the dense frames reach the model: ``images`` (one image each, with its timestamp) or ``video`` (the
    model's native video input, told the frame rate measured from the frames' timestamps; transformers backend,
    for processors that take videos: Qwen2-VL, Qwen2.5-VL, ...). A model that cannot take video is an error
    before any clip."""
    label_order: Literal["fixed", "reversed", "shuffled"] = not_in_key("fixed")
    """Order of the label list in the prompt (``Choose one of: ...``): ``fixed`` (the label set's order),
    ``reversed``, or ``shuffled`` (a random order per clip, seeded by ``label_order_seed`` and the clip's content),
    so that order effects of the model can be measured (``dfer report`` shows how often the label at each position is
    predicted). The scores are over the same labels whatever their order; enters the cache key only when not
    ``fixed``."""
    label_order_seed: int = not_in_key(0)
    """Seed of ``label_order=shuffled``."""
    shuffle: bool = False
    """Shuffle the order of frames and summaries (bag-of-frames diagnostic). The shuffled prompt shows no
    timestamps: time-like text is removed from the summaries and the clip-level trajectory sentence is left out,
    since either would let the model put the items back in order."""
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

    @property
    def show_keyframes(self) -> bool:
        """``use_keyframes`` resolved (null: true unless ``dense_fps`` is set)."""
        return self.use_keyframes if self.use_keyframes is not None else self.dense_fps is None

    @property
    def show_summaries(self) -> bool:
        """``use_summaries`` resolved (null: true unless ``dense_fps`` is set)."""
        return self.use_summaries if self.use_summaries is not None else self.dense_fps is None

    @model_validator(mode="after")
    def _something_to_show(self):
        if not (self.show_keyframes or self.show_summaries or self.dense_fps):
            raise ValueError("classify needs keyframes, summaries or dense frames: all are switched off")
        if self.dense_input == "video" and self.dense_fps is None:
            raise ValueError("classify.dense_input=video sends the dense frames as a video: set classify.dense_fps too")
        if self.dense_input == "video" and self.shuffle:
            raise ValueError("classify.shuffle cannot shuffle a video (classify.dense_input=video): use dense_input=images")
        return self


def upstream(cfg: Config) -> tuple[str, ...]:
    """Summaries come from the context stage; without them classify does not depend on it. A backend that reads
    per-frame inputs adds the stage they come from (the embedded model: expression)."""
    ups = ("faces", "keyframes") + modelstage.input_stages(cfg.model)
    return ups + ("context",) if cfg.show_summaries else ups


UPSTREAM: tuple[str, ...] = ("faces", "expression", "keyframes", "context")  # the most it reads; see upstream()


def scored_by(cfg: Config) -> str:
    """How ``predictions.csv``, ``scores.jsonl`` and reports name the model of this section (with its adapter)."""
    return model_name(cfg.model) + (f" + adapter {cfg.adapter}" if cfg.adapter else "")


def fallback(cfg: Config) -> Fallback | None:
    """The embedded model in place of ``classify.model`` (:func:`stages.modelstage.embedded_fallback`), which scores
    labels (``answer=scores``); none for a run with LoRA adapters, which are meant for the model asked for."""
    return None if cfg.adapter is not None else modelstage.embedded_fallback(cfg, answer="scores")


def key_extras(cfg: Config) -> dict:
    extras = {"model": model_identity(cfg.model), "template": template_hash(cfg.prompt_dir, cfg.template),
              "labels": load_label_set(cfg.labels).names}
    if cfg.adapter is not None:  # only when set, so keys of runs without an adapter never change
        extras["adapter"] = adapter_hash(cfg.adapter)
    if cfg.label_order != "fixed":  # likewise: keys of runs with the label set's order never change
        extras["label_order"] = cfg.label_order
        if cfg.label_order == "shuffled":
            extras["label_order_seed"] = cfg.label_order_seed
    return extras


def shown_labels(cfg: Config, job: ClipJob, labels: list[str]) -> list[str]:
    """The labels in the order the prompt of clip ``job`` lists them (``label_order``; shuffled: seeded by
    ``label_order_seed`` and the clip's fingerprint, so one clip always gets the same order)."""
    if cfg.label_order == "reversed":
        return list(reversed(labels))
    if cfg.label_order == "shuffled":
        order = list(labels)
        random.Random(f"labels:{cfg.label_order_seed}:{job.fingerprint}").shuffle(order)
        return order
    return list(labels)


def preflight(cfg: Config) -> str | None:
    try:
        label_set = load_label_set(cfg.labels)
    except LabelError as exc:
        raise modelstage.PreflightError(f"classify.labels: {exc}") from None
    _check_template(cfg, label_set.names)
    message = modelstage.preflight_model(cfg.model, f"{NAME}.model")
    if message is not None:  # weights not here: what follows would need them
        return message
    backend = backend_class(cfg.model.backend)
    if cfg.answer == "generate" and not backend.reads_prompt:
        raise modelstage.PreflightError(f"classify.answer=generate: {scored_by(cfg)} reads no prompt and writes no "
                                        "answer; it scores labels (classify.answer=scores)")
    if cfg.answer == "scores":
        try:
            backend.check_labels(cfg.model, label_set.names)
        except LabelScoringUnsupportedError as exc:
            raise modelstage.PreflightError(f"classify.labels={cfg.labels}: {exc}") from None
    if cfg.dense_input == "video":
        try:
            check_video_input(cfg.model)
        except VideoInputUnsupportedError as exc:
            raise modelstage.PreflightError(f"classify.dense_input=video: {exc}") from None
    if cfg.adapter is not None:
        try:
            check_adapter(cfg.adapter, cfg.model, label_set.names, template_hash(cfg.prompt_dir, cfg.template))
        except AdapterError as exc:
            raise modelstage.PreflightError(str(exc)) from None
    probe = stand_in_prompt(cfg, label_set.names)
    try:
        if cfg.answer == "scores":
            backend.check_scoring(cfg.model, label_set.names, probe)
        else:
            backend.check_generation(cfg.model, probe, cfg.model.max_new_tokens)
    except (LabelScoringUnsupportedError, BackendRequestError, ModelLoadError) as exc:
        raise modelstage.PreflightError(f"classify.model: {exc}") from None
    return None


def _stand_in_timeline(cfg: Config) -> list[dict]:
    """Timeline items of every kind the template may get: a motion summary, a frame, another summary, and a video when
    the dense frames go as one."""
    slots = image_slots(2)
    timeline = [{"kind": "motion", "gap": "lead_in", "t_start": 0.0, "t_end": 0.2, "text": "x"},
                {"kind": "frame", "t": 0.2, "image": slots[0]},
                {"kind": "motion", "gap": "between", "t_start": 0.2, "t_end": 0.5, "text": "x"}]
    if cfg.dense_input == "video":
        timeline.append({"kind": "video", "t": 0.0, "t_start": 0.0, "t_end": 0.5, "fps": 5.0, "video": slots[1]})
    return timeline


def stand_in_prompt(cfg: Config, labels: list[str]) -> Prompt:
    """A prompt like those this stage sends, without a clip: the template with a summary, and two gray face-crop-sized
    images where the stage shows frames (one before and one after the summary). What the preflight request sends."""
    slots = image_slots(2)
    gray = Image.new("RGB", (cfg.image_size, cfg.image_size), (128, 128, 128))
    timeline = [{"kind": "motion", "gap": "between", "t_start": 0.0, "t_end": 0.2,
                 "text": "The face stays still."}] if cfg.show_summaries else []
    if cfg.show_keyframes or cfg.dense_fps is not None:
        timeline = [{"kind": "frame", "t": 0.0, "image": slots[0]}, *timeline, {"kind": "frame", "t": 0.2, "image": slots[1]}]
    images = [gray] * sum(it["kind"] == "frame" for it in timeline)
    return PromptRenderer(cfg.prompt_dir, cfg.template).render(images, timeline=timeline, trajectory=None, labels=labels,
                                                               timestamps=not cfg.shuffle)


def _check_template(cfg: Config, labels: list[str]) -> None:
    """Render the template with stand-in items of every kind it may get, with and without timestamps; with
    ``shuffle``, refuse a template that prints times anyway (the model could undo the shuffle)."""
    timeline = _stand_in_timeline(cfg)
    for timestamps in (True, False):
        modelstage.check_template(cfg.prompt_dir, cfg.template,
                                  {"timeline": timeline, "trajectory": None, "labels": labels, "timestamps": timestamps})
    if cfg.shuffle:  # no video then: one image
        probe = [{**it, "t": 7.89, "t_start": 7.89, "t_end": 8.91} for it in timeline]
        rendered = PromptRenderer(cfg.prompt_dir, cfg.template).render(
            [object()], timeline=probe, trajectory=None, labels=labels, timestamps=False)
        text = "".join(p for p in rendered.parts if isinstance(p, str))
        if "7.89" in text or "8.91" in text:
            raise modelstage.PreflightError(
                f"{template_path(cfg.prompt_dir, cfg.template)}: prints timestamps although classify.shuffle is on "
                "(they would give the order away); print them only inside {% if timestamps %}...{% endif %}")


def open(cfg: Config):  # noqa: A001 - stage protocol name
    backend = modelstage.open_model(cfg)
    if cfg.adapter is not None:
        try:
            backend.apply_adapter(resolve_adapter_dir(cfg.adapter))
        except BaseException:
            modelstage.close_backend(backend)
            raise
    return backend


def dense_indices(t: np.ndarray, fps: float, present: np.ndarray | None = None) -> list[int]:
    """Frames at ``fps`` over the clip (nearest frame to each tick of a regular time grid); with ``present`` (the
    frames with the person's face), the nearest such frame within half a tick, and no frame for a tick without one
    (every frame when no frame has the face)."""
    n_ticks = max(1, int(math.floor((t[-1] - t[0]) * fps)) + 1)
    ticks = t[0] + np.arange(n_ticks) / fps
    if present is None or not np.any(present) or np.all(present):
        return sorted({int(np.argmin(np.abs(t - x))) for x in ticks})
    idx = np.flatnonzero(present)
    near = [int(idx[np.argmin(np.abs(t[idx] - x))]) for x in ticks]
    return sorted({i for i, x in zip(near, ticks) if abs(t[i] - x) <= 0.5 / fps + 1e-9})


_NUM = r"\d+(?:\.\d+)?"
_SECONDS = r"\s*(?:s|secs?|seconds?)\b"
_TIME_TEXT = re.compile(
    rf"\[?\s*(?:(?:between|from|at|after|before|until|to)\s+)?"
    rf"(?:{_NUM}(?:{_SECONDS})?\s*(?:–|-|to|and)\s*)?{_NUM}{_SECONDS}\s*\]?",
    re.IGNORECASE,
)


def strip_times(text: str) -> str:
    """``text`` without time expressions (``0.48 s``, ``[0.48–1.48 s]``, ``between 0.5 s and 1 s``)."""
    return re.sub(r"\s{2,}", " ", _TIME_TEXT.sub(" ", text)).strip()


def _present(track) -> np.ndarray | None:
    arrays = getattr(track, "arrays", None)  # the viewer may pass only the timestamps
    return None if arrays is None else arrays["present"]


def build_timeline(job: ClipJob, cfg: Config, track: FaceTrack) -> tuple[list[dict], list, str | None]:
    """Timeline items (in time order unless shuffled), what each image/video slot shows (a frame index for an
    image, a list of frame indices for a video), and the trajectory sentence.

    Shuffled (``cfg.shuffle``): the items are put in a random order (seeded by ``shuffle_seed`` and the clip),
    the template is told to print no timestamps, time expressions are removed from the summaries and the
    trajectory sentence is dropped: otherwise the model could re-sort the items by time, and the ablation would
    not test order-blindness."""
    kf = job.upstream["keyframes"].json("keyframes.json")
    frames: list[int] = list(kf["indices"]) if cfg.show_keyframes else []
    items: list[dict] = []
    if cfg.dense_fps is not None:
        dense = dense_indices(track.t, cfg.dense_fps, _present(track))
        if cfg.dense_input == "video":
            ts = [float(track.t[i]) for i in dense]
            items.append({"kind": "video", "t": ts[0], "t_start": ts[0], "t_end": ts[-1], "indices": dense,
                          "timestamps": ts, "fps": frame_rate(ts) or cfg.dense_fps})
        else:
            frames = sorted(set(frames) | set(dense))
    trajectory = None
    if cfg.show_summaries:
        ctx = job.upstream["context"].json("context.json")
        items += [{"kind": "motion", "gap": g.get("kind", "between"), "t_start": g["t_start"], "t_end": g["t_end"],
                   "text": g["summary"]} for g in ctx["gaps"]]
        trajectory = ctx.get("trajectory")
    items += [{"kind": "frame", "t": float(track.t[i]), "index": i} for i in frames]
    items.sort(key=lambda it: (it.get("t", it.get("t_start")), it["kind"] == "motion"))
    if cfg.shuffle:
        random.Random(f"{cfg.shuffle_seed}:{job.fingerprint}").shuffle(items)
        trajectory = None
        for it in items:
            if it["kind"] == "motion":
                it["text"] = strip_times(it["text"])
    slots = [it["index"] if it["kind"] == "frame" else it["indices"] for it in items if it["kind"] in ("frame", "video")]
    return items, slots, trajectory


def render(job: ClipJob, cfg: Config, renderer: PromptRenderer, labels: list[str],
           reads: tuple[str, ...] = ()) -> tuple[Prompt, FaceTrack, list[int]]:
    """The classify prompt of one clip, its face track, and the frame indices it shows (in prompt order). ``reads``:
    the per-frame inputs the backend reads (``Backend.reads``), given for the frames shown."""
    track = FaceTrack.of(job)
    items, slots, trajectory = build_timeline(job, cfg, track)
    flat = [i for s in slots for i in (s if isinstance(s, list) else [s])]
    crops = iter(modelstage.pil_crops(track, flat, cfg.image_size))
    names = iter(image_slots(len(slots)))
    media = []
    for it in items:
        if it["kind"] == "frame":
            it["image"] = next(names)
            media.append(next(crops))
        elif it["kind"] == "video":
            it["video"] = next(names)
            media.append(Video([next(crops) for _ in it["indices"]], it["timestamps"]))
    prompt = renderer.render(media, timeline=items, trajectory=trajectory, labels=shown_labels(cfg, job, labels),
                             timestamps=not cfg.shuffle)
    if reads:
        prompt.inputs = modelstage.FrameInputs(reads, job, track).of(flat)
    return prompt, track, flat


def dense_cost(backend, prompt: Prompt, track: FaceTrack, fps: float, image_size: int) -> tuple[int, int]:
    """Prompt tokens if the same clip were shown as dense frames at ``fps`` and the same resolution:
    the prompt's text tokens plus (number of dense frames) x (tokens of one image)."""
    n_dense = len(dense_indices(track.t, fps, _present(track)))
    one = modelstage.pil_crops(track, [0], image_size)[0]
    text_tokens = backend.count_prompt_tokens(Prompt([p for p in prompt.parts if isinstance(p, str)]))
    per_image = backend.count_prompt_tokens(Prompt([one, " "])) - backend.count_prompt_tokens(Prompt([" "]))
    return text_tokens + n_dense * per_image, n_dense


def process_batch(jobs: list[ClipJob], cfg: Config, backend) -> list:
    label_set = load_label_set(cfg.labels)
    renderer = PromptRenderer(cfg.prompt_dir, cfg.template)
    names = label_set.names
    rendered = [render(job, cfg, renderer, names, backend.reads) for job in jobs]
    prompts = [prompt for prompt, _, _ in rendered]
    if cfg.answer == "generate":
        answers = [{"answer": text} for text in backend.generate(prompts, cfg.model.max_new_tokens)]
    else:
        rows = backend.score_labels(prompts, names)
        note = backend.scoring_note(names)
        answers = [{"scores": {lab: row[lab].to_dict() for lab in names}, "label_matching": note} for row in rows]
    fills = []
    for job, (prompt, track, frame_idx), answer in zip(jobs, rendered, answers):
        prompt_tokens = backend.count_prompt_tokens(prompt)
        dense_tokens, n_dense = dense_cost(backend, prompt, track, 5.0, cfg.image_size)
        doc = {"labels": names, **answer, "frame_indices": frame_idx, "prompt_tokens": prompt_tokens,
               "dense_tokens": dense_tokens, "dense_frames": n_dense}
        if cfg.label_order != "fixed":
            doc["label_order"] = shown_labels(cfg, job, names)
        fills.append(_fill(doc))
    return fills


def _fill(doc: dict):
    def fill(out):
        out.json(SCORES_FILE, doc)
        return {"prompt_tokens": doc["prompt_tokens"], "dense_tokens": doc["dense_tokens"]}

    return fill


STAGE = Stage(NAME, VERSION, Config, UPSTREAM, process_batch=process_batch, reads=upstream, key_extras=key_extras,
              preflight=preflight, fallback=fallback, open=open, close=modelstage.close_backend, per_unit=True)
