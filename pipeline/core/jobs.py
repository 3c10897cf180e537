"""What a stage receives for one clip, and what executors carry between the runner and their workers."""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.cache import Artifact, cache_fault
from pipeline.core.errors import ClipError, DamagedArtifactError, RunStopError, is_disk_full


@dataclass
class ClipJob:
    video_id: str
    path: Path
    fingerprint: str
    label: str | None = None
    upstream: dict[str, Artifact] = field(default_factory=dict)
    stamp: dict | None = None  # size, mtime_ns and inode of the file when it was fingerprinted
    unit: dict = field(default_factory=dict)  # the part of the clip a per-unit stage works on ({}: the clip's own)


def unit_id(video: str, unit: dict) -> str:
    """How runs name a unit of work: the clip's id for its own unit, else ``clip#field=value,...`` (the fields in the
    part's order: ``clip#subject=1,segment=3,start_s=12.0,end_s=16.0``)."""
    return video if not unit else video + "#" + ",".join(f"{k}={v}" for k, v in unit.items())


@dataclass
class ClipTask:
    """One clip's work for one stage, as plain data (it crosses process and machine boundaries)."""

    stage: str
    config: dict  # the stage's full config, as JSON data
    job: ClipJob
    cache_root: str
    key: str
    meta: dict
    replace: bool = False


@dataclass
class TaskResult:
    ok: bool
    meta: dict | None = None
    error_type: str | None = None
    message: str | None = None
    damaged: tuple[str, str] | None = None  # (stage, key) of an upstream artifact found damaged while reading it


def task_failure(task: ClipTask, exc: BaseException) -> TaskResult:
    """The failure row of one clip: a :class:`ClipError`'s own message; a damaged upstream artifact (the runner
    moves it aside and recomputes it); a failure of the run (:class:`RunStopError`, a full disk included: the
    runner stops on this row instead of writing it); out of memory; or, for a bug or an unexpected library error,
    the message with the file and line it came from (per-clip and model stages alike)."""
    if isinstance(exc, ClipError):
        return TaskResult(False, error_type=type(exc).__name__, message=str(exc))
    if isinstance(exc, DamagedArtifactError):
        return TaskResult(False, error_type=type(exc).__name__, message=f"{task.job.path}: stage {task.stage}: {exc}",
                          damaged=(exc.stage, exc.key))
    if is_disk_full(exc) and not isinstance(exc, RunStopError):
        exc = cache_fault(exc, Path(task.cache_root), f"{task.job.path}: stage {task.stage} could not write its artifact")
    if isinstance(exc, RunStopError):
        return TaskResult(False, error_type=type(exc).__name__, message=str(exc))
    if isinstance(exc, MemoryError):
        return TaskResult(False, error_type="MemoryError", message=f"{task.job.path}: out of memory in stage {task.stage}")
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else ""
    return TaskResult(False, error_type=type(exc).__name__,
                      message=f"{task.job.path}: unexpected error in stage {task.stage}{where}: {exc}")
