"""Pipeline stages, one module each; each module ends with ``STAGE = Stage(...)`` (see :mod:`stages.base`).

``PIPELINE`` is what ``dfer run`` runs, in execution order. ``STAGES`` also holds the stages that tools run
through the runner (``features``: frozen visual features for ``dfer probe`` and SocialFusion), so they get the
cache, ``failures.jsonl``, the reasons for recomputing and the executors (local processes, Ray) for free.
"""

from __future__ import annotations

from stages import classify, context, expression, faces, features, keyframes
from stages.base import Stage

PIPELINE: list[Stage] = [faces.STAGE, expression.STAGE, keyframes.STAGE, context.STAGE, classify.STAGE]
STAGES: dict[str, Stage] = {s.name: s for s in [*PIPELINE, features.STAGE]}
STAGE_ORDER: list[str] = [s.name for s in PIPELINE]
