"""Pipeline stages, one module each, in execution order.

A stage module defines:

- ``NAME`` (str), ``VERSION`` (int, bumped by hand when the output changes meaning),
  ``UPSTREAM`` (names of the stages whose artifacts it reads) and a pydantic ``Config``;
- ``key_extras(cfg) -> dict`` (optional): more inputs of the cache key (model identity, prompt hashes);
- either ``process(job, cfg, resources, out) -> dict | None`` for per-clip work that runs in worker
  processes (``out`` is an :class:`pipeline.cache.ArtifactWriter`; the return value is extra meta),
- or ``process_batch(jobs, cfg, resources) -> list[fill | Exception]`` for model stages that run in
  the main process on batches of clips (``fill(out) -> dict | None`` writes one clip's artifact);
- ``open(cfg) -> resources`` / ``close(resources)`` (optional): load a model once per process;
- ``upstream(cfg) -> tuple`` (optional): the upstream stages actually read under this config;
- ``preflight(cfg) -> str | None`` (optional): checks before any clip is processed; raises on a
  configuration that cannot work, returns a message when the run must stop before this stage
  (model weights not available here).

No base classes; :class:`StageModule` below is the protocol the runner relies on.
"""

from __future__ import annotations

from typing import Any, Protocol

from stages import classify, context, expression, faces, keyframes


class StageModule(Protocol):
    NAME: str
    VERSION: int
    UPSTREAM: tuple[str, ...]
    Config: Any


STAGE_MODULES = [faces, expression, keyframes, context, classify]
STAGES = {m.NAME: m for m in STAGE_MODULES}
STAGE_ORDER = [m.NAME for m in STAGE_MODULES]
