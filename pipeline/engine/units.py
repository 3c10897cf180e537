"""Units of work: what the per-unit stages run on, once each.

A run starts with one unit per clip (its id is the clip's id). The per-clip stages (``faces``, ``expression``) run
once per file. Before the first per-unit stage (``Stage.per_unit``: keyframes, context, classify), every per-clip
stage that splits clips under its config (``Stage.unit_fields``, e.g. ``faces.subjects=all``) names the units of
each clip beyond its own (``Stage.units``, from its artifact: one per other subject); several such stages would
multiply out. A unit is the clip plus a ``part`` (``{"subject": 1}``; ``{}`` for the clip's own unit), named
``clip#subject=1`` (:func:`pipeline.core.jobs.unit_id`). Segments (``faces.segments``, :mod:`stages.faces.segments`)
are units too (``clip#segment=3,start_s=12.0,end_s=16.0``), and they replace the clip's own unit: a segmented clip is
not scored whole (``Stage.keeps_clip``). Its jobs carry the part (``ClipJob.unit``), its cache keys
hold it (the clip's own unit adds nothing, so a run that splits nothing keeps its keys), and it has its own row in
the manifest, the failures, ``scores.jsonl`` and ``predictions.csv`` (the fields as columns, only when asked).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.core.cache import Artifact, Cache
from pipeline.core.jobs import unit_id


@dataclass(frozen=True)
class Unit:
    id: str
    video: str
    part: dict = field(default_factory=dict)

    @property
    def own(self) -> bool:
        """The clip's own unit (what a run that splits nothing has)."""
        return not self.part


class Units:
    """The units of one run, by id, in clip order."""

    def __init__(self, videos: list[str]):
        self.by_id: dict[str, Unit] = {v: Unit(v, v) for v in videos}
        self.fields: dict = {}  # the fields units were split by, with their value for a clip's own unit

    def __getitem__(self, uid: str) -> Unit:
        return self.by_id[uid]

    def of(self, video: str) -> list[Unit]:
        """A clip's units, its own first."""
        return [u for u in self.by_id.values() if u.video == video]

    def split(self, stages: list, sections: dict, cache: Cache, keys: dict[str, dict[str, str]],
              active: list[str]) -> list[str]:
        """Split the ``active`` clips by every stage of ``stages`` (those run so far) that splits under its section
        (``sections[name]``); new units get a copy of their clip's keys. Returns the active unit ids: each clip's own
        unit and its others, or only the others where a splitter does not keep the clip (``Stage.keeps_clip``:
        segments)."""
        splitters = [s for s in stages if s.unit_fields(sections[s.name])]
        for s in splitters:
            self.fields.update(s.unit_fields(sections[s.name]))
        if not splitters:
            return active
        out = []
        for vid in active:
            parts = [{}]
            for s in splitters:
                art = Artifact(s.name, keys[vid][s.name], cache.dir_for(s.name, keys[vid][s.name]))
                parts = [{**p, **q} for p in parts for q in [{}, *s.units(sections[s.name], art)]]
            if not all(s.keeps_clip(sections[s.name]) for s in splitters):
                parts = [p for p in parts if p]  # segments: the clip is its parts only
            for part in parts:
                uid = unit_id(vid, part)
                if part:
                    self.by_id[uid] = Unit(uid, vid, part)
                    keys[uid] = dict(keys[vid])
                out.append(uid)
        return out

    @staticmethod
    def extras(unit: Unit, extras: dict) -> dict:
        """A per-unit stage's key extras for ``unit``: the part joins them (nothing for a clip's own unit)."""
        return {**extras, "unit": unit.part} if unit.part else extras

    @staticmethod
    def record(fingerprint: str, unit: Unit) -> str:
        """The name under which the cache remembers a unit's last inputs (the fingerprint for a clip's own)."""
        return fingerprint if unit.own else fingerprint + "." + "-".join(f"{k}{v}" for k, v in sorted(unit.part.items()))

    def columns(self, unit: Unit) -> dict:
        """The unit's value of each field the run split by (``{}`` when it split nothing)."""
        return {k: unit.part.get(k, default) for k, default in self.fields.items()}
