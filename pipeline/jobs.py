"""What a stage receives for one clip, and what executors carry between the runner and their workers."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.cache import Artifact


@dataclass
class ClipJob:
    video_id: str
    path: Path
    fingerprint: str
    label: str | None = None
    upstream: dict[str, Artifact] = field(default_factory=dict)


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
