"""Helpers to run the pipeline in-process and read what a run wrote."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

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
