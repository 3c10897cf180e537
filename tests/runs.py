"""Helpers to run the pipeline in-process and read what a run wrote."""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path

import numpy as np

from pipeline.engine.config import load_config
from stages.faces.facetrack import FaceTrack
from pipeline.engine.rundir import RunDir
from pipeline.engine.runner import run_pipeline


def run(input_path, out, cache, *overrides: str, workers: int = 1, log=None, **kwargs):
    cfg = load_config(None, ["run.progress=false", f"run.workers={workers}", *overrides])
    return run_pipeline(input_path, out, cfg, cache_dir=cache, log=log or io.StringIO(), **kwargs)


def failures(run_dir) -> list[dict]:
    return [row for _, row in RunDir(run_dir).failures()]


def manifest(run_dir) -> dict[str, dict]:
    return {r.video: r.to_json() for r in RunDir(run_dir).manifest()}


def track_of(result, video_id: str) -> FaceTrack:
    return FaceTrack.load(artifact(result, video_id, "faces"))


def artifact(result, video_id: str, stage: str):
    return RunDir(result.run_dir).cache().get(stage, result.keys[video_id][stage])


def leftover_tmp(folder, age_s: float = 0.0) -> Path:
    """A temporary artifact folder as a killed run leaves it (a partial file), last touched ``age_s`` ago."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    part = folder / "partial.bin"
    part.write_bytes(b"half written")
    if age_s:
        past = time.time() - age_s
        for p in (part, folder):
            os.utime(p, (past, past))
    return folder


def copy_run(src, dst, cache=None) -> Path:
    """A copy of run directory ``src`` at ``dst`` whose cache_dir.txt names ``cache`` (default: src's cache)."""
    dst = Path(dst)
    shutil.copytree(src, dst)
    if cache is not None:
        run = RunDir(dst)
        run.write_manifest(run.manifest(), cache)
    return dst


def scale_run(src, dst, n: int, seed: int = 0, fail_every: int = 50) -> Path:
    """A run of ``n`` clips made from the scored clips of the real run ``src``: clip ``i`` reuses the
    cached artifacts (crops, keyframes, summaries) of scored clip ``i % k`` and gets head-biased random
    scores and a true label (scores.jsonl, predictions.csv); every ``fail_every``-th clip failed at faces.
    For page-size benchmarks and for tests that need many clips with varied predictions."""
    from pipeline.engine.rundir import ManifestRow

    source, run = RunDir(src), RunDir(dst)
    run.create()
    run.write_config((source / "config.yaml").read_text(encoding="utf-8"))
    name, labels = source.labelset()
    run.write_labelset(name, labels)
    scored = {row["video"] for _, row in source.scores()}
    templates = [r for r in source.manifest() if r.video in scored]
    rng = np.random.default_rng(seed)
    bias = np.log(np.linspace(2.0, 0.2, len(labels)))
    rows = []
    scores, predictions = run.score_writers(labels)
    with run.failure_log() as failures_log:
        for i in range(n):
            t = templates[i % len(templates)]
            vid, y = f"clips/{i:05d}.mp4", int(rng.integers(len(labels)))
            failed = fail_every and i % fail_every == fail_every - 1
            arts = {"faces": t.artifacts["faces"]} if failed else t.artifacts
            rows.append(ManifestRow(vid, t.path, labels[y], t.fingerprint, arts))
            if failed:
                failures_log.write({"video": vid, "stage": "faces", "error": "NoFaceError", "message": f"{vid}: no face"})
                continue
            s = rng.normal(-8, 1, len(labels)) + bias
            s[y] += 1.2
            s = s.round(4)
            scores.write({"video": vid, "label": labels[y], "labels": labels, "scores": dict(zip(labels, s.tolist())),
                          "prediction": labels[int(np.argmax(s))],
                          "raw": {lab: {"logprob": float(v), "n_tokens": 1, "exact": True} for lab, v in zip(labels, s)},
                          "prompt_tokens": 250})
            predictions.write(vid, labels[int(np.argmax(s))], np.exp(s - s.max()) / np.exp(s - s.max()).sum(), labels[y])
    scores.close()
    predictions.close()
    run.write_manifest(rows, source.cache().root)
    run.write_status({"status": "complete", "clips": n, "failed": n // fail_every if fail_every else 0,
                      "stages": ["faces", "keyframes", "context", "classify"]})
    return dst
