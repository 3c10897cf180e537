"""Checking cached artifacts: the one artifact at a time the runner relies on (:func:`check_artifact`), and a whole
cache (:func:`verify_cache`, behind ``dfer cache verify [--repair]``).

What is checked (docs/cache.md): every file's bytes against the size and sha256 its ``meta.json`` recorded when
it was written, and ``meta.json`` against its own recorded sha256 (:class:`pipeline.core.cache.Artifact`); on top
of that, what hashes cannot vouch for: that the files decode as what the stage wrote (every ``.json`` and ``.npz``,
and the stage's own :attr:`stages.base.Stage.check`, e.g. every JPEG face crop). An artifact written before hashes
were recorded (format 1) can only be decoded: it is counted as *old format* and used when it decodes.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.cache import Artifact, Cache
from pipeline.core.errors import CacheError, DamagedArtifactError
from stages import STAGES


def check_artifact(art: Artifact, deep: bool = False) -> None:
    """Raise :class:`DamagedArtifactError` if ``art`` is damaged. The runner's check before it uses a cached
    artifact: the hashes of every file (format 2; cheap next to decoding), else (format 1) every file decoded and the
    stage's own check. ``deep`` decodes and runs the stage's check on a hashed artifact too (``dfer cache verify``)."""
    art.verify(decode=deep)
    if (deep or not art.hashed) and art.stage in STAGES:
        STAGES[art.stage].check(art)


@dataclass
class Damage:
    stage: str
    key: str
    video: str
    file: str
    problem: str
    moved_to: Path | None = None


@dataclass
class VerifyReport:
    """What :func:`verify_cache` found."""

    root: Path
    ok: int = 0
    old: int = 0  # format 1: no hashes, decoded only
    damaged: list[Damage] = field(default_factory=list)
    by_stage: Counter = field(default_factory=Counter)
    repaired: bool = False

    @property
    def checked(self) -> int:
        return self.ok + self.old + len(self.damaged)

    def lines(self) -> list[str]:
        stages = ", ".join(f"{s} {n}" for s, n in sorted(self.by_stage.items()))
        out = [f"cache {self.root}: {self.checked} artifacts checked ({stages or 'none'}): {self.ok} ok, "
               f"{len(self.damaged)} damaged, {self.old} old format (no hashes recorded: checked by decoding only)"]
        for d in self.damaged:
            where = f"; moved to {d.moved_to}" if d.moved_to else ""
            out.append(f"damaged: {d.stage} {d.key} clip {d.video}: {d.file}: {d.problem}{where}")
        if self.damaged and self.repaired:
            out.append(f"repaired: {len(self.damaged)} damaged artifact(s) moved to {self.root / 'damaged'}; the next "
                       "dfer run recomputes them")
        elif self.damaged:
            out.append("run `dfer cache verify --repair` to move them aside (the next dfer run then recomputes them; "
                       "`dfer run` also does so by itself when it needs one)")
        return out


def verify_cache(root: str | Path, stage: str | None = None, repair: bool = False, threads: int = 4) -> VerifyReport:
    """Check every artifact of the cache at ``root`` (of ``stage`` only, if given): hashes and decoding
    (:func:`check_artifact` with ``deep``); ``repair`` moves the damaged ones aside (:meth:`Cache.quarantine`), so
    the next run recomputes them. Raises :class:`CacheError` for a folder that is not a cache."""
    cache = Cache(root)
    if not cache.root.is_dir():
        raise CacheError(f"{cache.root}: no such cache directory (give --cache DIR, or set $DFER_CACHE)")
    if stage is not None and not (cache.root / stage).is_dir():
        raise CacheError(f"{cache.root}: the cache has no artifacts of stage {stage!r}"
                         + (f" (it has: {', '.join(sorted(p.name for p in cache.root.iterdir() if p.is_dir()))})"))
    report = VerifyReport(cache.root)

    def one(art: Artifact):
        try:
            check_artifact(art, deep=True)
        except DamagedArtifactError as exc:
            return art, exc
        return art, None

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for art, exc in pool.map(one, cache.artifacts(stage)):
            report.by_stage[art.stage] += 1
            if exc is None:
                if art.hashed:
                    report.ok += 1
                else:
                    report.old += 1
                continue
            video = art.clip()
            moved = cache.quarantine(exc.stage, exc.key, str(exc)) if repair else None
            report.damaged.append(Damage(exc.stage, exc.key, video, exc.file, exc.problem, moved))
    report.repaired = repair
    return report
