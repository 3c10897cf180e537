"""Everything ``dfer view`` reads from a run directory and the cache it points to, in one place.

A run directory (its format: :mod:`pipeline.engine.rundir`, whose readers are used here) holds
``config.yaml``, ``manifest.jsonl`` (clip id, path, label, fingerprint, the cache key of every
stage computed), ``failures.jsonl``, ``status.json``, ``cache_dir.txt`` and, once classify ran,
``scores.jsonl``, ``predictions.csv`` and ``labelset.json``. Metrics and calibration come from
:func:`pipeline.report.build_report`; artifacts are opened through :class:`pipeline.core.cache.Cache`.
Nothing here interprets the files beyond reading them: :mod:`pipeline.view.cards` does that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.cache import Artifact
from pipeline.engine.config import ConfigError, load_config
from pipeline.core.errors import RunDirError
from pipeline.report import build_report
from pipeline.engine.rundir import CACHE_DIR, CONFIG, MANIFEST, SCORES, RunDir


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
    unit: dict = field(default_factory=dict)  # the part of the clip it is ({}: the clip's own; {"subject": 1})


@dataclass
class RunData:
    run_dir: Path
    config: Any  # the resolved PipelineConfig, or None when config.yaml is missing or unreadable
    status: dict | None
    clips: list[Clip]
    cache_root: Path | None
    report: dict | None  # build_report's dict, or None when nothing was scored
    notes: list[str]


def _check_run_dir(run: RunDir) -> None:
    run_dir = run.path
    if not run_dir.exists():
        raise RunDirError(f"{run_dir}: no such folder")
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file, not a run directory written by `dfer run`")
    if (run / MANIFEST).is_file() or (run / SCORES).is_file():
        return
    if (run / CONFIG).is_file():
        raise RunDirError(f"{run_dir} has a {CONFIG} but no {MANIFEST}: the run did not finish (`dfer run` "
                          "writes the manifest once its stages are done); run the same command again, the cache keeps "
                          "what was computed")
    raise RunDirError(f"{run_dir} is not a run directory written by `dfer run` (it has neither {MANIFEST} nor {SCORES})")


def collect_run(run_dir: str | Path, **report_kwargs: Any) -> RunData:
    """Read a run directory and open the cached artifacts its manifest names.

    ``report_kwargs`` go to :func:`pipeline.report.build_report` (labels file, calibration, ...).
    Raises :class:`RunDirError` for a folder that is not a run.
    """
    run = RunDir(run_dir)
    run_dir = run.path
    _check_run_dir(run)
    notes: list[str] = []
    config = None
    if (run / CONFIG).is_file():
        try:
            config = load_config(run / CONFIG)
        except ConfigError as exc:
            notes.append(f"{CONFIG} could not be read ({exc}); timelines assume the default classify settings")
    else:
        notes.append(f"{run / CONFIG} is missing; timelines assume the default classify settings")
    status = run.status()

    cache = run.cache() if (run / CACHE_DIR).is_file() else None
    if cache is not None and not cache.root.is_dir():
        notes.append(f"the cache folder {cache.root} named in {CACHE_DIR} does not exist: faces, keyframes and motion "
                     "summaries cannot be shown")
        cache = None

    rows = []
    if (run / MANIFEST).is_file():
        rows = run.manifest()
    else:
        notes.append(f"{run / MANIFEST} is missing: the clips' faces, keyframes and summaries cannot be found")
    clips: dict[str, Clip] = {}
    segmented = {row.video for row in rows if "segment" in row.unit}  # their clips are their segments only
    for row in rows:  # one card per unit: a clip, or each subject of a clip (faces.subjects=all), or each segment
        if not row.unit and row.video in segmented:
            continue
        keys = dict(row.artifacts)
        clips[row.id] = Clip(row.id, row.path, row.label, row.fingerprint, keys,
                             {stage: cache.get(stage, key) for stage, key in keys.items()} if cache else {}, unit=row.unit)
    scores = [row for _, row in run.scores()]
    for row in scores:
        uid = str(row.get("unit") or row["video"])
        clips.setdefault(uid, Clip(uid)).score = row
    for _, row in run.failures():
        clip = clips.setdefault(str(row["video"]), Clip(str(row["video"])))
        clip.failure = clip.failure or row

    report = build_report(run_dir, **report_kwargs) if scores else None
    return RunData(run_dir, config, status, list(clips.values()), cache.root if cache else None, report, notes)
