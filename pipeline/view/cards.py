"""One card per clip: the timeline the classifier saw, its label probabilities, the outcome.

The timeline comes from :func:`stages.classify.build_timeline` (so ablations such as
``use_summaries=false``, ``dense_fps`` or ``shuffle`` show what the prompt really held), with the
keyframes as small inline JPEG thumbnails of the cached face crops. Probabilities are the softmax
of the scores in ``scores.jsonl`` after the calibration that :func:`pipeline.report.build_report`
applied (its recorded prior and tau).
"""

from __future__ import annotations

import base64
from types import SimpleNamespace
from typing import Callable

import cv2
import numpy as np

from pipeline.backends.base import model_name
from pipeline.core.errors import CacheError
from pipeline.eval.calibration import softmax
from stages.faces.facetrack import FaceTrack
from pipeline.core.jobs import ClipJob
from pipeline.core.paths import shown
from pipeline.eval.longtail import logit_adjust
from pipeline.view.collect import Clip, RunData
from stages import classify

MAX_IMAGES = 12  # frames per card (a 2,000-clip run with 4 keyframes makes a ~24 MB page at 80 px)
ORDINARY_GAPS = {None, "", "gap", "between", "inner", "motion"}


Thumbs = Callable[[str, FaceTrack, list[int]], list[str]]
"""Where a card's images come from: ``thumbs(faces key, track, frame indices)`` -> one ``src`` per frame (inline
``data:`` URIs, :func:`inline_thumbs`, or files beside the page, :class:`pipeline.view.page.ThumbFiles`)."""


def jpegs(track: FaceTrack, indices: list[int], size: int, quality: int) -> list[bytes]:
    """Face crops ``indices`` as JPEG files, ``size`` pixels square."""
    out = []
    for img in track.crops(indices, size=size):
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError(f"could not encode a thumbnail of a face crop of {track.artifact.clip()}")
        out.append(buf.tobytes())
    return out


def inline_thumbs(size: int, quality: int) -> Thumbs:
    """Thumbnails as ``data:image/jpeg`` URIs inside the page."""
    def thumbs(key: str, track: FaceTrack, indices: list[int]) -> list[str]:
        return ["data:image/jpeg;base64," + base64.b64encode(b).decode("ascii") for b in jpegs(track, indices, size, quality)]

    return thumbs


def _spread(n: int, k: int) -> list[int]:
    return list(range(n)) if n <= k else sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


def _timeline(clip: Clip, run: RunData, thumbs: Thumbs) -> tuple[list[dict], str | None, list[str]]:
    """Timeline entries, the clip-level trajectory sentence, and notes about what is missing."""
    notes: list[str] = []
    arts = clip.artifacts
    failed_at = (clip.failure or {}).get("stage")  # a clip that failed at a stage has its key but no artifact
    gone = [s for s in ("faces", "keyframes", "context") if s in clip.keys and arts.get(s) is None and s != failed_at]
    if gone and run.cache_root is not None:
        notes.append(f"{', '.join(gone)} artifact(s) of this clip are no longer in the cache {run.cache_root}"
                     + ("; its face crops are gone" if "faces" in gone else "")
                     + ": re-run `dfer run` with the same settings to rebuild them")
    kf = arts.get("keyframes")
    if kf is None:
        return [], None, notes
    track = None
    if arts.get("faces") is not None:
        try:
            track = FaceTrack.for_unit(arts["faces"], clip.unit)  # a segment's frames only, as its stages saw them
        except CacheError as exc:
            notes.append(f"the face crops of this clip are gone from the cache ({exc}); re-run `dfer run` to rebuild them")
    times = track if track is not None else SimpleNamespace(t=kf.npz("motion.npz")["t"])
    cfg = run.config.classify if run.config is not None else classify.Config()
    ctx = arts.get("context")
    if ctx is None and cfg.show_summaries:
        cfg = cfg.model_copy(update={"use_summaries": False})
    upstream = {s: a for s, a in arts.items() if a is not None}
    job = ClipJob(clip.video, clip.path, clip.fingerprint or "", clip.label, upstream, dict(clip.unit))
    items, slots, trajectory = classify.build_timeline(job, cfg, times)
    frame_idx = [i for slot in slots for i in (slot if isinstance(slot, list) else [slot])]

    kf_gaps = kf.json("keyframes.json")["gaps"]
    kinds = {(g["t_start"], g["t_end"]): g.get("kind") for g in kf_gaps}
    cuts = {(g["t_start"], g["t_end"]): [round(float(times.t[c]), 3) for c in g["cuts"]] for g in kf_gaps if g.get("cuts")}
    windows = {(g["t_start"], g["t_end"]): g.get("windows", []) for g in (ctx.json("context.json")["gaps"] if ctx else [])}
    shown = {frame_idx[j] for j in _spread(len(frame_idx), MAX_IMAGES)}
    images: dict[int, str] = {}
    if track is not None and shown:
        try:
            images = dict(zip(sorted(shown), thumbs(clip.keys.get("faces", ""), track, sorted(shown))))
        except CacheError as exc:  # the crops file is read when the first crop is asked for
            notes.append(f"the face crops of this clip are gone from the cache or damaged ({exc}); re-run `dfer run` "
                         "to rebuild them")
        except (ValueError, OSError) as exc:
            notes.append(f"the face crops of this clip could not be read ({exc})")
    out = []
    for it in items:
        if it["kind"] == "video":  # dense frames sent as one video: shown as its frames, with a note
            notes.append(f"the classifier saw {len(it['indices'])} frames as one video at {it['fps']:.2f} fps")
            out += [{"type": "frame", "t": round(float(t), 3), "index": int(i), "src": images.get(i)}
                    for i, t in zip(it["indices"], it["timestamps"]) if i in shown]
            continue
        if it["kind"] == "frame":
            if it["index"] in shown:  # beyond MAX_IMAGES, frames are left out (the note says how many)
                out.append({"type": "frame", "t": round(float(it["t"]), 3), "index": int(it["index"]),
                            "src": images.get(it["index"])})
            continue
        span = (it["t_start"], it["t_end"])
        kind = it.get("gap") or kinds.get(span)
        gap = {"type": "gap", "t_start": round(float(it["t_start"]), 3), "t_end": round(float(it["t_end"]), 3),
               "text": it.get("text"), "kind": None if kind in ORDINARY_GAPS else str(kind),
               "captions": [{"t_start": w["timestamps"][0], "t_end": w["timestamps"][-1], "text": w.get("caption")}
                            for w in windows.get(span, []) if w.get("timestamps")]}
        if span in cuts:  # shot boundaries inside the gap (real footage): marked on the page
            gap["cuts"] = cuts[span]
        out.append(gap)
    if len(frame_idx) > len(shown):
        notes.append(f"the classifier saw {len(frame_idx)} frames; {len(shown)} of them, evenly spread, are shown here")
    return out, trajectory, notes


def _model_name(clip: Clip, run: RunData) -> str | None:
    row = clip.score or {}
    if row.get("model"):
        return str(row["model"])
    if run.config is None or clip.score is None:
        return None
    return model_name(run.config.classify.model) + (f" + adapter {run.config.classify.adapter}" if run.config.classify.adapter else "")


def _probabilities(clip: Clip, labels: list[str], calibration: dict) -> tuple[list[float] | None, list[str]]:
    row = clip.score
    if row is None or not labels:
        return None, []
    if row.get("scored") == "none":  # no label scored: the values are bounds, not probabilities
        return None, []
    raw = row.get("scores") or {}
    try:  # None: a label without a score (a free-text answer named another): probability 0
        s = np.array([-np.inf if raw[lab] is None else float(raw[lab]) for lab in labels])
    except (KeyError, TypeError, ValueError):
        return None, []
    if not np.isfinite(s).any() or np.isnan(s).any():
        return None, []
    prior = calibration.get("prior")
    if calibration.get("method", "none") != "none" and prior:
        s = logit_adjust(s, [prior[lab] for lab in labels], float(calibration["tau"]))
    inexact = [lab for lab in labels if (row.get("raw") or {}).get(lab, {}).get("exact") is False]
    return [round(float(p), 5) for p in softmax(s)], inexact


def _text(value):
    return shown(value) if isinstance(value, str) else value


def build_card(clip: Clip, run: RunData, labels: list[str], thumbs: Thumbs) -> dict:
    """The card of one clip (ids and messages as :func:`pipeline.core.paths.shown` shows names)."""
    rep = run.report or {}
    try:
        timeline, trajectory, notes = _timeline(clip, run, thumbs)
    except (CacheError, OSError, ValueError, KeyError) as exc:  # a damaged artifact costs its card's timeline only
        timeline, trajectory, notes = [], None, [f"this clip's cached artifacts could not be read: {exc!r}"]
    probs, inexact = _probabilities(clip, labels, rep.get("calibration") or {})
    failed = {f["video"]: f for f in rep.get("failed_clips", [])}
    failure = failed.get(clip.video) or (clip.failure if clip.score is None else None)
    pred = (rep.get("predictions") or {}).get(clip.video)
    true = (rep.get("true_labels") or {}).get(clip.video)
    if true is None and not rep:
        true = clip.label
    abstained = (rep.get("abstained_clips") or {}).get(clip.video) if clip.score is not None else None
    outcome = ("failed" if failure is not None else "abstained" if abstained else "unscored" if pred is None
               else "unlabelled" if true is None else "correct" if pred == true else "incorrect")
    if abstained and failure is None:
        notes.append(f"No prediction ({abstained}): counted as an error in the metrics")
    conf = margin = None
    if probs is not None and failure is None:
        top = sorted(probs, reverse=True)
        conf, margin = top[0], top[0] - (top[1] if len(top) > 1 else 0.0)
    return {
        "id": shown(clip.video), "true": true, "pred": pred if failure is None else None, "outcome": outcome,
        "probs": probs if failure is None else None, "inexact": inexact,
        "conf": None if conf is None else round(conf, 5), "margin": None if margin is None else round(margin, 5),
        "model": _model_name(clip, run), "timeline": timeline, "trajectory": trajectory,
        "failure": None if failure is None else {k: _text(failure.get(k)) for k in ("stage", "error", "message")},
        "notes": notes,
    }
