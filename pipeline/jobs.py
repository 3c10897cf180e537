"""What a stage receives for one clip."""

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
