"""``dfer inspect``: one PNG that shows what the pipeline made of a clip.

Top: the keyframes as thumbnails of the upright frame with the person's face box (the clip's subject, or the
subject a unit id such as ``clip.mp4#subject=1`` names) and timestamp.
Bottom: the facial motion and expression curves over time, the chosen keyframes as vertical
lines, interpolated stretches shaded grey, stretches without the person's face shaded red, and shot boundaries
(cuts, fades) as red dotted lines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.errors import CacheError, RunDirError
from pipeline.core.files import save_figure
from pipeline.core.paths import output_file, shown
from stages.faces.facetrack import FaceTrack, Scene
from pipeline.engine.rundir import MANIFEST, RunDir
from pipeline.core.video import VideoReader, to_rgb


def _spans(mask: np.ndarray, t: np.ndarray) -> list[tuple[float, float]]:
    """``(first, last)`` time of every run of True in ``mask``."""
    edges = np.flatnonzero(np.diff(np.r_[0, np.asarray(mask, int), 0]))
    return [(t[a], t[b - 1]) for a, b in zip(edges[::2], edges[1::2])]


def _plain(name: str) -> str:
    """A clip id as figure text: bytes that are not UTF-8 as ``\\xNN``, ``$`` not read as math."""
    return shown(name).replace("$", r"\$")


def _frames_at(path: Path, indices: list[int]) -> dict[int, np.ndarray]:
    want, got = set(indices), {}
    with VideoReader(path) as reader:
        for i, (_, frame) in enumerate(reader.frames()):
            if i in want:
                got[i] = to_rgb(frame, reader.frame_rotation(frame))
                if len(got) == len(want):
                    break
    return got


def inspect_clip(run_dir: str | Path, video: str, output: Path | None = None) -> Path:
    """Draw the clip ``video`` of a run (as :meth:`RunDir.find` finds it: id, path, same file, part of an id) into a
    PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    run = RunDir(run_dir)
    row = run.find(video)
    if output is None:
        run.claim()  # RUN/inspect/ is the run directory's (an earlier dfer's run is taken over)
        output = run.inspect_figure(row.id)
    else:
        output = output_file(output, "-o")
    cache = run.cache()
    arts = row.artifacts
    faces, kf = (cache.get(stage, arts[stage]) if arts.get(stage) else None for stage in ("faces", "keyframes"))
    if kf is None and not row.unit and "keyframes" not in arts:
        parts = [r.id for r in run.manifest() if r.video == row.video and "segment" in r.unit]
        if parts:  # a segmented run scores segments, not the whole clip
            raise RunDirError(f"{row.video} was scored segment by segment (--segments): inspect one of its "
                              f"{len(parts)} segments, e.g. '{parts[0]}' (their ids are in {run.path / MANIFEST})")
    if faces is None or kf is None:
        raise CacheError(f"{row.video}: faces/keyframes artifacts are not in {cache.root} (did the clip fail? see failures.jsonl)")
    subject = int(row.unit.get("subject", 0))
    track = FaceTrack.for_unit(faces, row.unit)  # a segment's frames only (its indices count from its first frame)
    scene = Scene.load(faces)
    keyframes = kf.json("keyframes.json")
    curves = kf.npz("motion.npz")
    idx = keyframes["indices"]
    decoded = _frames_at(Path(row.path), [i + track.first for i in idx])
    frames = {i: decoded.get(i + track.first) for i in idx}

    k = max(1, len(idx))
    fig = plt.figure(figsize=(max(8, 2.4 * k), 6.2), dpi=110)
    gs = fig.add_gridspec(2, k, height_ratios=[1.25, 1])
    for j, i in enumerate(idx):
        ax = fig.add_subplot(gs[0, j])
        img = frames.get(i)
        if img is not None:
            ax.imshow(img)
            box = track.arrays["box"][i]
            if np.isfinite(box).all():
                color = "lime" if track.arrays["detected"][i] else "orange"
                ax.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False, lw=2, ec=color))
        ax.set_title(f"#{i}  {track.t[i]:.2f} s", fontsize=10)
        ax.axis("off")
    ax = fig.add_subplot(gs[1, :])
    t = curves["t"]
    face = track.arrays["present"] if track.arrays["present"].any() else np.ones(len(t), bool)
    for name, color in (("expression", "tab:blue"), ("motion", "tab:green")):
        y = np.where(face, curves[name].astype(float), np.nan)  # no curve where the person's face is not
        lo, rng = np.nanmin(y), np.nanmax(y) - np.nanmin(y)
        ax.plot(t, (y - lo) / rng if rng > 0 else y * 0, color=color, label=f"{name} (normalised)")
    # shade interpolation only where the detector missed the face (runs longer than the stride)
    stride = int(track.meta.get("config", {}).get("detect_every", 1))
    for a, b in _spans(track.arrays["interpolated"] & track.arrays["present"], t):
        if np.sum((t >= a) & (t <= b)) >= stride:
            ax.axvspan(a, b, color="0.85", lw=0, zorder=0)
    det_t = t[track.arrays["detected"]]
    ax.plot(det_t, np.full(len(det_t), -0.04), "|", color="0.3", ms=6, label="face detected")
    for a, b in _spans(~track.arrays["present"], t):
        ax.axvspan(a, b, color="tab:red", alpha=0.25, lw=0, zorder=0)
    for i in idx:
        ax.axvline(track.t[i], color="k", ls="--", lw=1)
    for shot in (s for s in scene.shots[1:] if 0 <= int(s["first"]) - track.first < len(track)):
        ax.axvline(track.t[int(shot["first"]) - track.first], color="tab:red", ls=":", lw=1.5)
        ax.text(track.t[int(shot["first"]) - track.first], 1.02, shot["start"].replace("_", " "), color="tab:red", fontsize=7,
                ha="center", va="bottom", transform=ax.get_xaxis_transform())
    ax.set_xlabel("time (s)")
    ax.set_xlim(float(t[0]), float(t[-1]) if len(t) > 1 else 1.0)
    handles, _ = ax.get_legend_handles_labels()
    handles += [Patch(color="0.85", label="box interpolated"), Patch(color="tab:red", alpha=0.25, label="face missing")]
    if len(scene.shots) > 1:
        handles.append(Line2D([], [], color="tab:red", ls=":", label="shot boundary"))
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    n_det = int(track.arrays["detected"].sum())
    people = len(scene.identities)
    who = (f", {len(scene.shots)} shots, {people} people" + (f", subject {subject}" if subject else "")) if people > 1 or \
        len(scene.shots) > 1 else ""
    fig.suptitle(
        f"{_plain(row.id)} — {len(track)} frames, {n_det} detected{who}, strategy {keyframes['strategy']}"
        + ("  [no face: full frame]" if track.meta.get("full_frame") else ""),
        fontsize=11,
    )
    fig.tight_layout()
    try:
        save_figure(fig, output)
    finally:
        plt.close(fig)
    return output
