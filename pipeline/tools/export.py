"""``dfer export RUN --frames``: one table of every face on every frame of a run, the time series to load into pandas.

One row per (clip, frame, person) where the person's face is present, from the faces stage's table of every face
(:data:`stages.faces.facetrack.FACES_FILE`), plus, for each person with a track of their own (the clip's subject and
everyone seen at least ``faces.min_subject_s``), a row for each frame without their face (``present`` false, empty
box), so that each of their series has every frame. Columns:

============================== ==============================================================================
``video``                      the clip's id (as in ``manifest.jsonl``)
``frame``, ``t``               frame index (decode order, from 0) and its time in seconds (from pts)
``shot``                       the shot the frame is in (0, 1, ...; ``scene.json``'s ``shots``)
``subject``                    the person (identity): 0 is the clip's subject, the others in the subject rule's
                               order; the same number across the clip's shots
``track``                      the face track within the shot (-1 on a row without the face)
``x1``, ``y1``, ``x2``, ``y2`` the face box in upright frame pixels (empty without the face)
``score``                      the detector's probability on detection frames, 0 elsewhere
``detected``                   1: detected on this frame; ``interpolated``: between two detections or held;
                               ``held``: the box of the nearest detection held at a track's end; ``present``
``<point>_x``, ``<point>_y``   the five landmarks: left_eye, right_eye, nose, mouth_left, mouth_right
``p_<class>``                  the embedded expression model's probabilities (angry, disgust, fear, happy, sad,
                               surprise, neutral) for the people with a track of their own, when the run computed
                               the expression stage; empty otherwise
============================== ==============================================================================

Rows are in clip order (the manifest's), then frame, then person. The output is CSV (``.csv``, the default
``RUN/frames.csv``) or Parquet (``.parquet``; needs ``pyarrow``). Clips that failed before their faces artifact
was made have no rows (the summary says how many).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from pipeline.core.errors import CacheError, ExportError
from pipeline.core.files import atomic_path
from pipeline.core.paths import output_file
from pipeline.engine.rundir import FRAMES, RunDir
from pipeline.models.expression import CLASSES
from stages import expression
from stages.faces.facetrack import FACES_FILE, FaceTrack, Scene

POINTS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
FLAGS = ("detected", "interpolated", "held", "present")
COLUMNS = ("video", "frame", "t", "shot", "subject", "track", "x1", "y1", "x2", "y2", "score", *FLAGS,
           *[f"{p}_{xy}" for p in POINTS for xy in "xy"], *[f"p_{c}" for c in CLASSES])


def clip_frames(video: str, faces, expr=None) -> dict[str, np.ndarray]:
    """The table's columns for one clip (``faces``/``expr``: its faces and expression artifacts)."""
    table = faces.npz(FACES_FILE)
    scene = Scene.load(faces)
    meta = faces.meta()
    n = int(meta["n_frames"])
    t_all = FaceTrack.load(faces, 0).t
    shot_of = scene.shot_ids(n)
    frame, subject = table["frame"].astype(np.int64), table["identity"].astype(np.int64)
    cols: dict[str, np.ndarray] = {
        "frame": frame, "subject": subject, "track": table["track"].astype(np.int64), "box": table["box"],
        "landmarks": table["landmarks"], "score": table["score"], "detected": table["detected"],
        "interpolated": table["interpolated"], "held": table["held"], "present": np.ones(len(frame), bool),
    }
    for k in meta.get("subjects", []):  # the frames without a tracked person's face, so each series is whole
        missing = np.flatnonzero(~FaceTrack.load(faces, k).arrays["present"])
        m = len(missing)
        extra = {"frame": missing, "subject": np.full(m, k), "track": np.full(m, -1),
                 "box": np.full((m, 4), np.nan, np.float32), "landmarks": np.full((m, 5, 2), np.nan, np.float32),
                 "score": np.zeros(m, np.float32), **{f: np.zeros(m, bool) for f in FLAGS}}
        cols = {c: np.concatenate([cols[c], extra[c]]) for c in cols}
    order = np.lexsort((cols["subject"], cols["frame"]))
    cols = {c: v[order] for c, v in cols.items()}
    probs = np.full((len(order), len(CLASSES)), np.nan, np.float32)
    if expr is not None:
        classes = list(expr.meta()["classes"])
        for k in expr.meta().get("subjects", [0]):
            p = expression.load(expr, k).probs
            rows = np.flatnonzero(cols["subject"] == k)
            probs[rows] = p[cols["frame"][rows]][:, [classes.index(c) for c in CLASSES]]
    out = {"video": np.full(len(order), video, object), "frame": cols["frame"], "t": t_all[cols["frame"]],
           "shot": shot_of[cols["frame"]], "subject": cols["subject"], "track": cols["track"]}
    for j, name in enumerate(("x1", "y1", "x2", "y2")):
        out[name] = cols["box"][:, j]
    out["score"] = cols["score"]
    out.update({f: cols[f] for f in FLAGS})
    for j, p in enumerate(POINTS):
        out[f"{p}_x"], out[f"{p}_y"] = cols["landmarks"][:, j, 0], cols["landmarks"][:, j, 1]
    for j, c in enumerate(CLASSES):
        out[f"p_{c}"] = probs[:, j]
    return out


def _cell(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "1" if v else "0"
    if isinstance(v, (float, np.floating)):
        return "" if math.isnan(v) else f"{float(v):.6g}"
    return str(v)


def export_frames(run_dir: str | Path, output: str | Path | None = None) -> tuple[Path, int, int, list[str]]:
    """Write the per-frame table of a run (default ``RUN/frames.csv``); returns the file, its rows, the clips in
    it and notes (clips left out)."""
    run = RunDir(run_dir)
    out = run / FRAMES if output is None else output_file(output, "-o")
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise ExportError(f"{out}: the table is written as .csv or .parquet; name the file with one of those endings")
    if out.suffix.lower() == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ExportError(f"{out}: writing Parquet needs pyarrow (pip install pyarrow); or write .csv") from None
    cache = run.cache()  # a folder that is not a run is refused here, before anything is written
    if output is None:
        run.claim()  # RUN/frames.csv is the run directory's (an earlier dfer's run is taken over)
    parts, notes = [], []
    for row in run.manifest():
        if row.unit:  # a unit's rows come with its clip's
            continue
        faces = cache.get("faces", row.artifacts["faces"]) if row.artifacts.get("faces") else None
        if faces is None:
            notes.append(f"{row.video}: no faces artifact (the clip failed before it, or it left the cache)")
            continue
        expr = cache.get("expression", row.artifacts["expression"]) if row.artifacts.get("expression") else None
        try:
            parts.append(clip_frames(row.video, faces, expr))
        except (CacheError, KeyError) as exc:
            notes.append(f"{row.video}: its faces artifact is not one this dfer can read ({exc!r})")
    n_rows = sum(len(p["frame"]) for p in parts)
    if out.suffix.lower() == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {c: np.concatenate([p[c] for p in parts]) if parts else np.array([]) for c in COLUMNS}
        with atomic_path(out) as tmp:
            pq.write_table(pa.table({c: (v.astype(str) if c == "video" else v) for c, v in columns.items()}), tmp)
    else:
        with atomic_path(out) as tmp:
            with open(tmp, "x", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(COLUMNS)
                for p in parts:
                    for i in range(len(p["frame"])):
                        w.writerow([_cell(p[c][i]) for c in COLUMNS])
    return out, n_rows, len(parts), notes
