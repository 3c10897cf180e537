"""Everything ``dfer view`` reads from a run directory and the cache it points to, in one place.

A run directory (written by :mod:`pipeline.runner` and :mod:`pipeline.outputs`) holds
``config.yaml``, ``manifest.jsonl`` (clip id, path, label, fingerprint, the cache key of every
stage computed), ``failures.jsonl``, ``status.json``, ``cache_dir.txt`` and, once classify ran,
``scores.jsonl``, ``predictions.csv`` and ``labelset.json``. Metrics and calibration come from
:func:`pipeline.report.build_report`; artifacts are opened through :class:`pipeline.cache.Cache`.
Nothing here interprets the files beyond reading them: :mod:`pipeline.view.cards` does that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.cache import Artifact, Cache
from pipeline.config import ConfigError, load_config
from pipeline.errors import RunDirError
from pipeline.report import build_report
from pipeline.rundir import read_jsonl


@dataclass
class Clip:
    video: str
    path: str | None = None
    label: str | None = None  # as written in the input list, before the label set resolves it
    fingerprint: str | None = None
    keys: dict[str, str] = field(default_factory=dict)  # stage -> cache key (manifest.jsonl)
    artifacts: dict[str, Artifact | None] = field(default_factory=dict)  # None: key known, artifact gone
    score: dict | None = None  # its row of scores.jsonl
    failure: dict | None = None  # its row of failures.jsonl


@dataclass
class RunData:
    run_dir: Path
    config: Any  # the resolved PipelineConfig, or None when config.yaml is missing or unreadable
    status: dict | None
    clips: list[Clip]
    cache_root: Path | None
    report: dict | None  # build_report's dict, or None when nothing was scored
    notes: list[str]


def _jsonl(path: Path) -> list[dict]:
    return [row for _, row in read_jsonl(path)]


def _check_run_dir(run_dir: Path) -> None:
    if not run_dir.exists():
        raise RunDirError(f"{run_dir}: no such folder")
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file, not a run directory written by `dfer run`")
    if (run_dir / "manifest.jsonl").is_file() or (run_dir / "scores.jsonl").is_file():
        return
    if (run_dir / "config.yaml").is_file():
        raise RunDirError(f"{run_dir} has a config.yaml but no manifest.jsonl: the run did not finish (`dfer run` "
                          "writes the manifest once its stages are done); run the same command again, the cache keeps "
                          "what was computed")
    raise RunDirError(f"{run_dir} is not a run directory written by `dfer run` (it has neither manifest.jsonl nor "
                      "scores.jsonl)")


def collect_run(run_dir: str | Path, **report_kwargs: Any) -> RunData:
    """Read a run directory and open the cached artifacts its manifest names.

    ``report_kwargs`` go to :func:`pipeline.report.build_report` (labels file, calibration, ...).
    Raises :class:`RunDirError` for a folder that is not a run.
    """
    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    notes: list[str] = []
    config = None
    if (run_dir / "config.yaml").is_file():
        try:
            config = load_config(run_dir / "config.yaml")
        except ConfigError as exc:
            notes.append(f"config.yaml could not be read ({exc}); timelines assume the default classify settings")
    else:
        notes.append(f"{run_dir / 'config.yaml'} is missing; timelines assume the default classify settings")
    status_path = run_dir / "status.json"
    status = json.loads(status_path.read_text(encoding="utf-8")) if status_path.is_file() else None

    cache = None
    cache_txt = run_dir / "cache_dir.txt"
    if cache_txt.is_file():
        root = Path(cache_txt.read_text(encoding="utf-8").strip())
        if root.is_dir():
            cache = Cache(root)
        else:
            notes.append(f"the cache folder {root} named in cache_dir.txt does not exist: faces, keyframes and motion "
                         "summaries cannot be shown")

    if not (run_dir / "manifest.jsonl").is_file():
        notes.append(f"{run_dir / 'manifest.jsonl'} is missing: the clips' faces, keyframes and summaries cannot be found")
    clips: dict[str, Clip] = {}
    for row in _jsonl(run_dir / "manifest.jsonl"):
        keys = dict(row.get("artifacts") or {})
        clips[row["video"]] = Clip(
            row["video"], row.get("path"), row.get("label"), row.get("fingerprint"), keys,
            {stage: cache.get(stage, key) for stage, key in keys.items()} if cache else {},
        )
    scores = _jsonl(run_dir / "scores.jsonl")
    for row in scores:
        clips.setdefault(str(row["video"]), Clip(str(row["video"]))).score = row
    for row in _jsonl(run_dir / "failures.jsonl"):
        clip = clips.setdefault(str(row["video"]), Clip(str(row["video"])))
        clip.failure = clip.failure or row

    report = None
    if scores:
        report = build_report(run_dir, **report_kwargs)
    return RunData(run_dir, config, status, list(clips.values()), cache.root if cache else None, report, notes)
