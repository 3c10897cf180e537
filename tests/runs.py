"""Helpers to run the pipeline in-process and read what a run wrote."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from pipeline.cache import Cache
from pipeline.config import load_config
from pipeline.facetrack import FaceTrack
from pipeline.runner import run_pipeline


def run(input_path, out, cache, *overrides: str, workers: int = 1, log=None, **kwargs):
    cfg = load_config(None, ["run.progress=false", f"run.workers={workers}", *overrides])
    return run_pipeline(input_path, out, cfg, cache_dir=cache, log=log or io.StringIO(), **kwargs)


def failures(run_dir) -> list[dict]:
    p = Path(run_dir) / "failures.jsonl"
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def manifest(run_dir) -> dict[str, dict]:
    p = Path(run_dir) / "manifest.jsonl"
    rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["video"]: r for r in rows}


def track_of(result, video_id: str) -> FaceTrack:
    cache = Cache(Path((Path(result.run_dir) / "cache_dir.txt").read_text().strip()))
    return FaceTrack.load(cache.get("faces", result.keys[video_id]["faces"]))


def artifact(result, video_id: str, stage: str):
    cache = Cache(Path((Path(result.run_dir) / "cache_dir.txt").read_text().strip()))
    return cache.get(stage, result.keys[video_id][stage])


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
        (dst / "cache_dir.txt").write_text(str(Path(cache).resolve()) + "\n", encoding="utf-8")
    return dst


def scale_run(src, dst, n: int, seed: int = 0, fail_every: int = 50) -> Path:
    """A run of ``n`` clips made from the scored clips of the real run ``src``: clip ``i`` reuses the
    cached artifacts (crops, keyframes, summaries) of scored clip ``i % k`` and gets head-biased random
    scores and a true label (scores.jsonl, predictions.csv); every ``fail_every``-th clip failed at faces.
    For page-size benchmarks and for tests that need many clips with varied predictions."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True)
    for name in ("config.yaml", "cache_dir.txt", "labelset.json"):
        shutil.copyfile(src / name, dst / name)
    labels = json.loads((src / "labelset.json").read_text(encoding="utf-8"))["labels"]
    scored = {json.loads(line)["video"] for line in (src / "scores.jsonl").read_text(encoding="utf-8").splitlines()}
    templates = [r for r in manifest(src).values() if r["video"] in scored]
    rng = np.random.default_rng(seed)
    bias = np.log(np.linspace(2.0, 0.2, len(labels)))
    with open(dst / "manifest.jsonl", "w", encoding="utf-8") as fm, \
            open(dst / "scores.jsonl", "w", encoding="utf-8") as fs, open(dst / "failures.jsonl", "w", encoding="utf-8") as ff, \
            open(dst / "predictions.csv", "w", encoding="utf-8") as fp:
        fp.write(",".join(["video", "prediction", *[f"p_{lab}" for lab in labels], "label"]) + "\n")
        for i in range(n):
            t = templates[i % len(templates)]
            vid, y = f"clips/{i:05d}.mp4", int(rng.integers(len(labels)))
            failed = fail_every and i % fail_every == fail_every - 1
            arts = {"faces": t["artifacts"]["faces"]} if failed else t["artifacts"]
            fm.write(json.dumps({**t, "video": vid, "label": labels[y], "artifacts": arts}) + "\n")
            if failed:
                ff.write(json.dumps({"video": vid, "stage": "faces", "error": "NoFaceError", "message": f"{vid}: no face"}) + "\n")
                continue
            s = rng.normal(-8, 1, len(labels)) + bias
            s[y] += 1.2
            s = s.round(4)
            fs.write(json.dumps({"video": vid, "label": labels[y], "labels": labels,
                                 "scores": dict(zip(labels, s.tolist())), "prediction": labels[int(np.argmax(s))],
                                 "raw": {lab: {"logprob": float(v), "n_tokens": 1, "exact": True} for lab, v in zip(labels, s)},
                                 "prompt_tokens": 250}) + "\n")
            p = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
            fp.write(",".join([vid, labels[int(np.argmax(s))], *[f"{x:.6f}" for x in p], labels[y]]) + "\n")
    (dst / "status.json").write_text(json.dumps({"status": "complete", "clips": n, "failed": n // fail_every if fail_every else 0,
                                                 "stages": ["faces", "keyframes", "context", "classify"]}), encoding="utf-8")
    return dst
