"""The stage interface: what the runner and the executors call, with its defaults in one place.

Each stage module ends with one ``STAGE = Stage(...)`` that names its functions; everything it does not name
gets the default below, so no caller ever asks a module whether it has a function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel


def nothing(_) -> None:
    """Default ``open``, ``close``, ``preflight`` and ``fallback``: nothing to load, free or check, no stand-in."""


def no_extras(cfg) -> dict:
    """Default ``key_extras``: the stage's own config section is all its key needs."""
    return {}


def no_units(cfg, artifact) -> list:
    """Default ``units``: a clip is one unit."""
    return []


def keeps_clip(cfg) -> bool:
    """Default ``keeps_clip``: a clip split into units keeps its own unit (the whole clip)."""
    return True


def no_notes(cfg, artifact) -> list:
    """Default ``assess``: nothing to say."""
    return []


@dataclass(frozen=True)
class Fallback:
    """What a model stage runs instead when its model cannot be had here: ``section`` (its config section with the
    embedded model), and how messages name the model asked for (``asked``) and the one that runs (``ran``)."""

    section: Any
    asked: str
    ran: str


@dataclass(frozen=True)
class Stage:
    """One pipeline stage.

    ``name``, ``version`` (bumped by hand when the output changes meaning), ``Config`` (its pydantic section)
    and ``upstream`` (the most stages it reads) identify it. Exactly one of:

    * ``process(job, cfg, resources, out) -> dict | None``: per-clip work, run by the executor's workers
      (``out`` is an :class:`pipeline.core.cache.ArtifactWriter`; the return value is extra meta);
    * ``process_batch(jobs, cfg, resources) -> list[fill | Exception]``: a model stage, fed batches of clips
      where its model is loaded (``fill(out) -> dict | None`` writes one clip's artifact).

    Optional, with defaults: ``reads(cfg)`` (the upstream stages actually read under this config; default
    ``upstream``), ``key_extras(cfg)`` (more inputs of the cache key: model identity, prompt hashes),
    ``preflight(cfg)`` (checks before any clip: raises on a configuration that cannot work, returns a message
    when model weights are not available here), ``fallback(cfg)`` (a :class:`Fallback`: what runs instead when
    ``preflight`` returned a message, or None: the run stops before this stage), and ``open(cfg)``/``close(resources)``
    (load a model once per process), ``reads_video`` (the stage reads the clip's file itself: the runner checks
    that the file did not change while it did, before its artifact is cached under the file's fingerprint), and
    ``check(artifact)`` (what the cache's hashes do not check: that the files decode as this stage's artifact, e.g.
    every JPEG crop; raises :class:`pipeline.core.errors.DamagedArtifactError`).

    Units of work (see ``ARCHITECTURE.md``): ``per_unit`` marks a stage that runs once per unit of a clip (a subject,
    later a segment) instead of once per clip; such a stage's jobs carry the unit (``ClipJob.unit``) and its key holds
    it. A per-clip stage may split its clips into units: ``unit_fields(cfg)`` (the fields it splits by under this
    config, with their value for the clip's own unit; empty: no split) and ``units(cfg, artifact)`` (the units of one
    clip beyond its own, from the stage's artifact); ``keeps_clip(cfg)``: False where the split replaces the clip's own
    unit (segments: the whole clip is not scored). ``assess(cfg, artifact)``: warnings about one clip's artifact,
    cached or new (raises a :class:`pipeline.core.errors.ClipError` to fail the clip), for settings that are not in
    the key.
    """

    name: str
    version: int
    Config: type[BaseModel]
    upstream: tuple[str, ...] = ()
    process: Callable[..., Any] | None = None
    process_batch: Callable[..., list] | None = None
    reads: Callable[[Any], tuple[str, ...]] | None = None
    key_extras: Callable[[Any], dict] = no_extras
    preflight: Callable[[Any], str | None] = nothing
    fallback: Callable[[Any], Fallback | None] = nothing
    open: Callable[[Any], Any] = nothing
    close: Callable[[Any], None] = nothing
    reads_video: bool = False
    check: Callable[[Any], None] = nothing
    per_unit: bool = False
    unit_fields: Callable[[Any], dict] = no_extras
    units: Callable[[Any, Any], list] = no_units
    keeps_clip: Callable[[Any], bool] = keeps_clip
    assess: Callable[[Any, Any], list] = no_notes

    def __post_init__(self) -> None:
        if (self.process is None) == (self.process_batch is None):
            raise TypeError(f"stage {self.name}: give exactly one of process (per clip) or process_batch (model stage)")

    @property
    def batched(self) -> bool:
        """A model stage: batches of clips go where its model is loaded."""
        return self.process_batch is not None

    def upstream_of(self, cfg) -> tuple[str, ...]:
        """The stages whose artifacts this stage reads under ``cfg`` (some depend on switches)."""
        return tuple(self.reads(cfg)) if self.reads is not None else self.upstream
