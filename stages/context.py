"""context: motion-to-text for the frames between keyframes (MSCE stage 1).

For each gap of ``keyframes.json`` (between two consecutive keyframes, and the lead-in before the first
and lead-out after the last, when the keyframes stage made them), in-between face crops are sampled
evenly in time at a density of at least ``min_frames_per_gap`` frames and ``min_fps`` frames per second
(so a 0.25 s micro-expression is never skipped). The frames that bound the gap (its keyframes; the clip's
first frame for a lead-in, its last for a lead-out) and the sampled frames, in time order, are cut into
captioning windows by :func:`split_windows`: windows of at most ``window_size`` frames, of even sizes
(never fewer than 2), each overlapping the next by one frame, so every pair of consecutive frames is
seen together by one window and the first and last windows hold the bounding frames. Each window is
captioned by the captioner VLM with ``prompts/caption.j2``. The window captions of a gap are then
condensed into one sentence (``prompts/condense.j2``; or joined, with ``condense=join``), and optionally
into one clip-level trajectory sentence (``trajectory.j2``). All prompts of a batch of clips go to the
model together.

Real footage: only frames where the unit's person's face is present are shown (a bounding frame without it is left
out), and a captioning window never spans a shot boundary: a gap over a cut (its ``cuts``) is cut into parts, one
per shot, each captioned and condensed on its own, and its summary says :data:`CUT_TEXT` between them (the jump is
not described as motion). A part with fewer than two frames of the face has no window; a gap without a cut and
without two such frames says :data:`NO_FACE_TEXT`.

``context.model.backend=expression``: the embedded captioner, no language model: each window's sentence is
built from its frames' expression probabilities (the expression stage, then an extra upstream) and landmarks
(:mod:`pipeline.models.motion_text`); a condense prompt carries all the frames of its gap, so the gap's summary
is the same kind of sentence over the whole gap, and the trajectory one over every gap's frames. When
``context.model`` cannot be had here (offline, not in the local cache), the embedded captioner stands in
(``run.fallback=stop`` or ``--strict``: the run stops before this stage instead).

Output ``context.json``::

    {"gaps": [{"kind", "t_start", "t_end", "start_index", "end_index",
               "windows": [{"indices", "timestamps", "caption"}], "summary"}],
     "trajectory": str | null}

A gap over a cut also has ``cuts`` (the first frames of the shots after it) and each of its windows a ``part`` (the
shot it is in, counted from the gap's first).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.backends import backend_class, model_identity
from pipeline.backends.base import Prompt, frame_rate, stage_model
from stages.faces.facetrack import FaceTrack
from pipeline.core.jobs import ClipJob
from stages.templates import PromptRenderer, image_slots, template_hash
from stages import modelstage
from stages.base import Stage

NAME = "context"
VERSION = 3  # 2: overlapping windows with the bounding frames, lead-in/lead-out gaps, gap kinds. 3: only frames with
# the person's face; windows within a shot; a gap over a cut says so
UPSTREAM: tuple[str, ...] = ("faces", "expression", "keyframes")  # the most it reads; see upstream()
CONTEXT_FILE = "context.json"
TEMPLATES = ("caption.j2", "condense.j2", "trajectory.j2")
CUT_TEXT = "Cut to another shot."
NO_FACE_TEXT = "The face is not in view."
CaptionerModel = stage_model(model="HuggingFaceTB/SmolVLM-256M-Instruct", max_new_tokens=40)


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: CaptionerModel = Field(default_factory=dict, validate_default=True)
    """The captioner (any image-text-to-text model), or the embedded captioner (``backend: expression``).
    ``classify.model`` (the words) makes it the classifier itself, whatever model that is: resolved when the config
    is loaded, so the cache key holds the real model."""
    min_frames_per_gap: int = Field(4, ge=1)
    """At least this many in-between frames are captioned per gap (fewer only if the gap has fewer)."""
    min_fps: float = Field(5.0, ge=0)
    """...and at least this many frames per second of gap (0: no rate floor, so every gap gets
    ``min_frames_per_gap`` frames whatever its length, as in ``--preset msce``)."""
    window_size: int = Field(4, ge=2)
    """Most frames in one captioning window (one caption each). A gap's frames (its bounding keyframes and
    the sampled frames between them) are split into windows of even sizes, at least 2 frames each, that
    overlap by one frame."""
    image_size: int = Field(224, ge=32)
    """Side of the face crops sent to the captioner (pixels)."""
    condense: Literal["model", "join"] = "model"
    """How a gap's window captions become one sentence: ask the model, or join them."""
    trajectory: bool = False
    """Also write one clip-level sentence about how the expression develops."""
    prompt_dir: str | None = None
    """Folder with caption.j2 / condense.j2 / trajectory.j2 (default: the built-in prompts/)."""


def upstream(cfg: Config) -> tuple[str, ...]:
    """faces and keyframes, and the stage of the captioner's per-frame inputs (the embedded captioner: expression)."""
    return ("faces",) + modelstage.input_stages(cfg.model) + ("keyframes",)


def key_extras(cfg: Config) -> dict:
    return {
        "model": model_identity(cfg.model),
        "templates": {n: template_hash(cfg.prompt_dir, n) for n in TEMPLATES},
    }


def preflight(cfg: Config) -> str | None:
    slots = image_slots(2)
    stand_ins = {  # a value of every variable each template gets
        "caption.j2": {"frames": [{"t": 0.0, "image": slots[0]}, {"t": 0.2, "image": slots[1]}], "t_start": 0.0,
                       "t_end": 0.2, "fps": 5.0},
        "condense.j2": {"captions": [{"t_start": 0.0, "t_end": 0.1, "text": "x"}], "t_start": 0.0, "t_end": 0.1},
        "trajectory.j2": {"gaps": [{"t_start": 0.0, "t_end": 0.1, "summary": "x"}]},
    }
    if backend_class(cfg.model.backend).reads_prompt:  # the embedded captioner renders no template: none is checked
        for name in TEMPLATES:
            modelstage.check_template(cfg.prompt_dir, name, stand_ins[name])
    return modelstage.preflight_model(cfg.model, f"{NAME}.model")


def sample_gap(t: np.ndarray, gap: dict, min_frames: int, min_fps: float) -> list[int]:
    """In-between frame indices of one gap, at least ``min_frames`` and ``min_fps`` per second (all of them
    if the gap has fewer), nearest to times spaced evenly over the gap, its bounding frames included in the
    spacing (so the step from a keyframe to the first sampled frame is like the others)."""
    between = gap["between"]
    dur = max(gap["t_end"] - gap["t_start"], 0.0)
    want = max(min_frames, math.ceil(dur * min_fps))
    if want >= len(between):
        return list(between)
    tb = t[between]
    targets = np.linspace(gap["t_start"], gap["t_end"], want + 2)[1:-1]
    return sorted({between[int(np.argmin(np.abs(tb - x)))] for x in targets})


def split_windows(n: int, max_size: int) -> list[tuple[int, int]]:
    """Cut a sequence of ``n >= 2`` frames into windows ``(first, last)`` (positions, inclusive) of at most
    ``max_size >= 2`` frames: as few as possible, sizes differing by at most one, each at least 2 frames,
    each window starting on the frame the previous one ended on. So the ``n - 1`` pairs of consecutive
    frames are shared out among the windows, and each pair is seen together by exactly one window."""
    if n < 2 or max_size < 2:
        raise ValueError(f"split_windows needs n >= 2 frames and max_size >= 2, got n={n}, max_size={max_size}")
    pairs = n - 1
    count = math.ceil(pairs / (max_size - 1))
    base, extra = divmod(pairs, count)
    out, start = [], 0
    for k in range(count):
        step = base + (1 if k < extra else 0)
        out.append((start, start + step))
        start += step
    return out


def _part_frames(t: np.ndarray, first: int, last: int, present: np.ndarray, cfg: Config) -> list[int]:
    """The frames one part of a gap (frames ``first``..``last``, one shot) shows: its first and last frame with the
    face and the sampled ones between them (none when fewer than two frames have the face)."""
    faces = [i for i in range(first, last + 1) if present[i]]
    if len(faces) < 2:
        return []
    a, b = faces[0], faces[-1]
    part = {"between": faces[1:-1], "t_start": float(t[a]), "t_end": float(t[b])}
    return [a, *sample_gap(t, part, cfg.min_frames_per_gap, cfg.min_fps), b]


def plan_windows(t: np.ndarray, keyframes: dict, cfg: Config, present: np.ndarray | None = None) -> list[dict]:
    """The gaps with their captioning windows (frame indices and timestamps), no model involved.
    ``t``: the clip's frame timestamps; ``keyframes``: the keyframes stage's ``keyframes.json``; ``present``: the
    frames with the person's face (default: all)."""
    present = np.ones(len(t), bool) if present is None else np.asarray(present, bool)
    gaps = []
    for g in keyframes["gaps"]:
        cuts = list(g.get("cuts", []))
        edges = [g["start_index"], *cuts, g["end_index"] + 1]
        windows = []
        for j, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
            seq = _part_frames(t, a, b - 1, present, cfg)
            for lo, hi in split_windows(len(seq), cfg.window_size) if len(seq) >= 2 else []:
                w = {"indices": seq[lo : hi + 1], "timestamps": [float(t[i]) for i in seq[lo : hi + 1]]}
                if cuts:
                    w["part"] = j
                windows.append(w)
        gap = {"kind": g.get("kind", "between"), **{k: g[k] for k in ("t_start", "t_end", "start_index", "end_index")},
               "windows": windows}
        if cuts:
            gap["cuts"] = cuts
        gaps.append(gap)
    return gaps


def _parts(gap: dict) -> list[list[dict]]:
    """A gap's windows by part (one shot each; one part for a gap without a cut)."""
    n = len(gap.get("cuts", [])) + 1
    return [[w for w in gap["windows"] if w.get("part", 0) == j] for j in range(n)]


def _compose(gap: dict, summaries: list[str | None]) -> str:
    """A gap's summary from its parts' summaries: :data:`CUT_TEXT` where the shot changes."""
    if not gap.get("cuts"):
        return summaries[0] if summaries[0] is not None else NO_FACE_TEXT
    pieces: list[str] = []
    for j, text in enumerate(summaries):
        if j and (not pieces or pieces[-1] != CUT_TEXT):
            pieces.append(CUT_TEXT)
        if text:
            pieces.append(text)
    return " ".join(pieces)


def _frames(gaps: list[dict]) -> list[int]:
    """Every frame index the windows of these gaps show."""
    return sorted({i for g in gaps for w in g["windows"] for i in w["indices"]})


def _caption_prompt(template: PromptRenderer, track: FaceTrack, window: dict, cfg: Config) -> Prompt:
    imgs = modelstage.pil_crops(track, window["indices"], cfg.image_size)
    frames = [{"t": t, "image": s} for t, s in zip(window["timestamps"], image_slots(len(imgs)))]
    ts = window["timestamps"]
    return template.render(imgs, frames=frames, t_start=ts[0], t_end=ts[-1], fps=frame_rate(ts))


def process_batch(jobs: list[ClipJob], cfg: Config, backend) -> list:
    caption_t = PromptRenderer(cfg.prompt_dir, "caption.j2") if backend.reads_prompt else None
    plans, inputs, prompts, windows = [], [], [], []
    for job in jobs:
        track = FaceTrack.of(job)
        plans.append(plan_windows(track.t, job.upstream["keyframes"].json("keyframes.json"), cfg, track.arrays["present"]))
        inputs.append(modelstage.FrameInputs(backend.reads, job, track))
        for gap in plans[-1]:
            for w in gap["windows"]:
                prompt = _caption_prompt(caption_t, track, w, cfg) if backend.reads_prompt else Prompt([])
                prompt.inputs = inputs[-1].of(w["indices"])
                prompts.append(prompt)
                windows.append(w)
    for w, text in zip(windows, backend.generate(prompts, cfg.model.max_new_tokens) if prompts else []):
        w["caption"] = text.strip()
    _condense(plans, inputs, cfg, backend)
    trajectories = _trajectories(plans, inputs, cfg, backend)
    return [_fill(plan, traj) for plan, traj in zip(plans, trajectories)]


def _condense(plans: list[list[dict]], inputs: list, cfg: Config, backend) -> None:
    """Each gap's summary: each part's window captions condensed into one sentence (or joined), the parts joined
    by :func:`_compose`."""
    condense_t = PromptRenderer(cfg.prompt_dir, "condense.j2") if backend.reads_prompt and cfg.condense == "model" else None
    prompts, slots, texts = [], [], {}
    for plan, frames in zip(plans, inputs):
        for gap in plan:
            for j, windows in enumerate(_parts(gap)):
                caps = [{"t_start": w["timestamps"][0], "t_end": w["timestamps"][-1], "text": w["caption"]} for w in windows]
                if not caps:
                    texts[id(gap), j] = None
                elif cfg.condense == "join":
                    texts[id(gap), j] = " ".join(c["text"] for c in caps)
                elif len(caps) == 1:
                    texts[id(gap), j] = caps[0]["text"]  # nothing to condense
                else:
                    t0, t1 = caps[0]["t_start"], caps[-1]["t_end"]
                    if not gap.get("cuts"):
                        t0, t1 = gap["t_start"], gap["t_end"]
                    prompt = condense_t.render([], captions=caps, t_start=t0, t_end=t1) if condense_t else Prompt([])
                    prompt.inputs = frames.of(_frames([{"windows": windows}]))
                    prompts.append(prompt)
                    slots.append((id(gap), j))
    for slot, text in zip(slots, backend.generate(prompts, cfg.model.max_new_tokens) if prompts else []):
        texts[slot] = text.strip()
    for plan in plans:
        for gap in plan:
            gap["summary"] = _compose(gap, [texts[id(gap), j] for j in range(len(gap.get("cuts", [])) + 1)])


def _trajectories(plans: list[list[dict]], inputs: list, cfg: Config, backend) -> list[str | None]:
    if not cfg.trajectory:
        return [None] * len(plans)
    t = PromptRenderer(cfg.prompt_dir, "trajectory.j2") if backend.reads_prompt else None
    prompts = []
    for plan, frames in zip(plans, inputs):
        gaps = [{"t_start": g["t_start"], "t_end": g["t_end"], "summary": g["summary"]} for g in plan]
        prompt = t.render([], gaps=gaps) if backend.reads_prompt else Prompt([])
        prompt.inputs = frames.of(_frames(plan))
        prompts.append(prompt)
    return [s.strip() for s in backend.generate(prompts, cfg.model.max_new_tokens)]


def _fill(plan: list[dict], trajectory: str | None):
    def fill(out):
        out.json(CONTEXT_FILE, {"gaps": plan, "trajectory": trajectory})
        return {"n_gaps": len(plan), "n_windows": sum(len(g["windows"]) for g in plan)}

    return fill


STAGE = Stage(NAME, VERSION, Config, UPSTREAM, process_batch=process_batch, reads=upstream, key_extras=key_extras,
              preflight=preflight, fallback=modelstage.embedded_fallback, open=modelstage.open_model,
              close=modelstage.close_backend, per_unit=True)
