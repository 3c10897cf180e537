"""Frozen visual features for the diagnostics: the ``features`` stage (:mod:`stages.features`) run through the
runner once per encoder, and the per-clip arrays it cached.

:func:`extract` runs faces (and keyframes) and then ``features`` over the clips with the normal runner, into a
run directory of its own (``RUN/config.yaml`` holds the ``features`` section, ``RUN/failures.jsonl`` the clips
that failed, and the stage line says how many were cached and why the others were recomputed); the local
executor or Ray (``executor``) computes them, and nothing is computed twice. :class:`Features` then reads them:
per clip and frame (what SocialFusion trains on) or per clip, averaged over its frames (what a probe reads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from pipeline.models import hub
from pipeline.core.cache import Cache
from pipeline.core.errors import DiagnosticsError
from pipeline.engine.inputs import VideoRef, discover
from pipeline.engine.rundir import MANIFEST, RunDir
from pipeline.engine.runner import Runner, StageReport
from stages import features as stage

FeatureConfig = stage.Config


def clips_of(input_path: str | Path) -> tuple[list[VideoRef], Path | None]:
    """The clips of ``input_path`` (what ``dfer run`` takes, or a run directory: its manifest) and, for a run
    directory, the cache it used (the default cache of a command given that run directory)."""
    src = Path(input_path).expanduser()
    if src.is_dir() and (src / MANIFEST).is_file():
        run = RunDir(src)
        return [VideoRef(r.video, Path(r.path), r.label) for r in run.manifest()], run.cache().root
    return discover(src), None


@dataclass
class Features:
    """Where each clip's features are after :func:`extract` (``keys``: video -> artifact key) and what it did."""

    config: FeatureConfig
    identity: dict
    layers: list[int]
    cache: Cache
    keys: dict[str, str] = field(default_factory=dict)
    report: StageReport | None = None
    failed: dict[str, str] = field(default_factory=dict)  # video -> "stage: error: message"

    def load(self, video: str) -> stage.ClipFeatures:
        art = self.cache.get(stage.NAME, self.keys[video])
        if art is None:
            raise DiagnosticsError(f"features of {video!r} ({self.keys[video][:12]}) are not in the cache {self.cache.root}")
        return stage.load(art)

    def frame_level(self, layer: int, videos: list[str]) -> list[np.ndarray]:
        """Per-frame features of one layer, one ``(frames, dim)`` array per clip (what SocialFusion reads)."""
        return [self.load(v).layers[layer] for v in videos]

    def clip_level(self, layer: int, videos: list[str]) -> np.ndarray:
        """Clip-level features ``(len(videos), dim)``: the **mean over the clip's frames** of one layer's pooled
        features (probes are trained per clip, never per frame)."""
        return np.stack([f.mean(0) for f in self.frame_level(layer, videos)]).astype(np.float32)


def extract(clips: list[VideoRef], fcfg: FeatureConfig, cfg, run_dir: str | Path, *, cache_dir=None,
            force: bool = False, quiet: bool = False, log: TextIO | None = None, executor=None) -> Features:
    """Run the ``features`` stage (and what it reads) over ``clips`` through the runner, into ``run_dir``.
    The encoder and layers are checked before any clip is processed; the encoder is loaded only if a clip needs
    computing."""
    runner = Runner(cfg, run_dir, cache_dir=cache_dir, until=stage.NAME, force=stage.NAME if force else None,
                    quiet=quiet, log=log, executor=executor, sections={stage.NAME: fcfg})
    result = runner.run(clips)
    run = RunDir(result.run_dir)
    failed = {row["video"]: f"{row['stage']}: {row['error']}: {row['message']}" for _, row in run.failures()}
    keys = {vid: k[stage.NAME] for vid, k in result.keys.items() if vid not in failed and stage.NAME in k}
    return Features(fcfg, hub.model_identity(fcfg.encoder, fcfg.revision), stage.layers_of(fcfg), runner.cache, keys,
                    result.reports[-1] if result.reports else None, failed)
