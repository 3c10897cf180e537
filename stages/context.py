"""context: motion-to-text for the frames between keyframes (MSCE stage 1).

For each gap between two consecutive keyframes, in-between face crops are sampled evenly in time
at a density of at least ``min_frames_per_gap`` frames and ``min_fps`` frames per second (so a
0.25 s micro-expression is never skipped), grouped into windows of ``window_size`` frames, and
each window is captioned by the captioner VLM with ``prompts/caption.j2``. The window captions of
a gap are then condensed into one timestamped sentence (``prompts/condense.j2``; or joined, with
``condense=join``), and optionally into one clip-level trajectory sentence (``trajectory.j2``).
All prompts of a batch of clips go to the model together.

Output ``context.json``::

    {"gaps": [{"t_start", "t_end", "start_index", "end_index",
               "windows": [{"indices", "timestamps", "caption"}], "summary"}],
     "trajectory": str | null}
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.backends.base import ModelConfig
from pipeline.facetrack import FaceTrack
from pipeline.jobs import ClipJob
from pipeline.prompts import PromptRenderer, image_slots, template_hash
from pipeline import modelstage

NAME = "context"
VERSION = 1
UPSTREAM: tuple[str, ...] = ("faces", "keyframes")
CONTEXT_FILE = "context.json"
TEMPLATES = ("caption.j2", "condense.j2", "trajectory.j2")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    model: ModelConfig = Field(default_factory=lambda: ModelConfig(model="HuggingFaceTB/SmolVLM-256M-Instruct", max_new_tokens=40))
    """The captioner (any image-text-to-text model; may be the classifier itself)."""
    min_frames_per_gap: int = Field(4, ge=1)
    """At least this many in-between frames are captioned per gap (fewer only if the gap has fewer)."""
    min_fps: float = Field(5.0, gt=0)
    """...and at least this many frames per second of gap."""
    window_size: int = Field(4, ge=1)
    """Frames per captioning window (one caption each)."""
    image_size: int = Field(224, ge=32)
    """Side of the face crops sent to the captioner (pixels)."""
    condense: Literal["model", "join"] = "model"
    """How a gap's window captions become one sentence: ask the model, or join them."""
    trajectory: bool = False
    """Also write one clip-level sentence about how the expression develops."""
    prompt_dir: str | None = None
    """Folder with caption.j2 / condense.j2 / trajectory.j2 (default: the built-in prompts/)."""


def key_extras(cfg: Config) -> dict:
    return {
        "model": modelstage.model_identity(cfg.model),
        "templates": {n: template_hash(cfg.prompt_dir, n) for n in TEMPLATES},
    }


def preflight(cfg: Config) -> str | None:
    for n in TEMPLATES:
        modelstage.check_template(cfg.prompt_dir, n, _dummy_variables(n))
    return modelstage.preflight_model(cfg.model, f"{NAME}.model")


def _dummy_variables(name: str) -> dict:
    if name == "caption.j2":
        return {"frames": [{"t": 0.0, "image": image_slots(1)[0]}], "t_start": 0.0, "t_end": 0.1}
    if name == "condense.j2":
        return {"captions": [{"t_start": 0.0, "t_end": 0.1, "text": "x"}], "t_start": 0.0, "t_end": 0.1}
    return {"gaps": [{"t_start": 0.0, "t_end": 0.1, "summary": "x"}]}


def open(cfg: Config):  # noqa: A001 - stage protocol name
    return modelstage.open_backend(cfg.model)


def close(backend) -> None:
    modelstage.close_backend(backend)


def sample_gap(t: np.ndarray, gap: dict, min_frames: int, min_fps: float) -> list[int]:
    """In-between frame indices of one gap, evenly spaced in time, dense enough for ``min_fps``."""
    between = gap["between"] or [gap["start_index"], gap["end_index"]]
    dur = max(gap["t_end"] - gap["t_start"], 0.0)
    want = max(min_frames, math.ceil(dur * min_fps))
    if want >= len(between):
        return list(between)
    tb = t[between]
    targets = np.linspace(tb[0], tb[-1], want)
    picks = sorted({between[int(np.argmin(np.abs(tb - x)))] for x in targets})
    return picks


def plan_windows(track: FaceTrack, keyframes: dict, cfg: Config) -> list[dict]:
    """The gaps with their captioning windows (frame indices and timestamps), no model involved."""
    gaps = []
    for g in keyframes["gaps"]:
        idx = sample_gap(track.t, g, cfg.min_frames_per_gap, cfg.min_fps)
        windows = [idx[i : i + cfg.window_size] for i in range(0, len(idx), cfg.window_size)]
        gaps.append(
            {
                "t_start": g["t_start"],
                "t_end": g["t_end"],
                "start_index": g["start_index"],
                "end_index": g["end_index"],
                "windows": [{"indices": w, "timestamps": [float(track.t[i]) for i in w]} for w in windows],
            }
        )
    return gaps


def process_batch(jobs: list[ClipJob], cfg: Config, backend) -> list:
    caption_t = PromptRenderer(cfg.prompt_dir, "caption.j2")
    plans, prompts, owners = [], [], []
    for j, job in enumerate(jobs):
        track = FaceTrack.load(job.upstream["faces"])
        plan = plan_windows(track, job.upstream["keyframes"].json("keyframes.json"), cfg)
        plans.append(plan)
        for gi, gap in enumerate(plan):
            for wi, w in enumerate(gap["windows"]):
                imgs = modelstage.pil_crops(track, w["indices"], cfg.image_size)
                slots = image_slots(len(imgs))
                frames = [{"t": t, "image": s} for t, s in zip(w["timestamps"], slots)]
                prompts.append(caption_t.render(imgs, frames=frames, t_start=w["timestamps"][0], t_end=w["timestamps"][-1]))
                owners.append((j, gi, wi))
    captions = backend.generate(prompts, cfg.model.max_new_tokens) if prompts else []
    for (j, gi, wi), text in zip(owners, captions):
        plans[j][gi]["windows"][wi]["caption"] = text.strip()
    _condense(plans, cfg, backend)
    trajectories = _trajectories(plans, cfg, backend)
    return [_fill(plan, traj) for plan, traj in zip(plans, trajectories)]


def _condense(plans: list[list[dict]], cfg: Config, backend) -> None:
    if cfg.condense == "join":
        for plan in plans:
            for gap in plan:
                gap["summary"] = " ".join(w["caption"] for w in gap["windows"])
        return
    condense_t = PromptRenderer(cfg.prompt_dir, "condense.j2")
    prompts, owners = [], []
    for j, plan in enumerate(plans):
        for gi, gap in enumerate(plan):
            caps = [{"t_start": w["timestamps"][0], "t_end": w["timestamps"][-1], "text": w["caption"]} for w in gap["windows"]]
            if len(caps) == 1:
                gap["summary"] = caps[0]["text"]  # nothing to condense
                continue
            prompts.append(condense_t.render([], captions=caps, t_start=gap["t_start"], t_end=gap["t_end"]))
            owners.append((j, gi))
    outs = backend.generate(prompts, cfg.model.max_new_tokens) if prompts else []
    for (j, gi), text in zip(owners, outs):
        plans[j][gi]["summary"] = text.strip()


def _trajectories(plans: list[list[dict]], cfg: Config, backend) -> list[str | None]:
    if not cfg.trajectory:
        return [None] * len(plans)
    t = PromptRenderer(cfg.prompt_dir, "trajectory.j2")
    prompts = [t.render([], gaps=[{"t_start": g["t_start"], "t_end": g["t_end"], "summary": g["summary"]} for g in plan]) for plan in plans]
    return [s.strip() for s in backend.generate(prompts, cfg.model.max_new_tokens)]


def _fill(plan: list[dict], trajectory: str | None):
    def fill(out):
        out.json(CONTEXT_FILE, {"gaps": plan, "trajectory": trajectory})
        return {"n_gaps": len(plan), "n_windows": sum(len(g["windows"]) for g in plan)}

    return fill
