"""Stage-major runner: each stage runs over all clips (in batches) before the next one starts.

For each stage and clip the runner derives the cache key, reuses a cached artifact when there is
one, and otherwise computes it (per-clip stages with the executor's ``map``, model stages in
batches with its ``map_batched``) and says why: new clip, config changed, upstream changed or
forced, or damaged in cache. A clip that fails is recorded in ``RUN/failures.jsonl`` and left out of later
stages; the others go on. Tools run their own stages the same way (``until="features"`` with a ``sections``
entry for it), so they get all of this too.

What the cache holds is checked before it is used (:func:`pipeline.engine.cachecheck.check_artifact`): a damaged
artifact is named, moved aside and recomputed ("damaged in cache"); one that a stage finds damaged while reading it
(damage after the check) is moved aside and its clip goes through the stages again from there, once. A failure of
the run rather than of a clip (:class:`pipeline.core.errors.RunStopError`: a full disk, a cache that cannot be
written or vanished, a model server that stopped answering) stops the run at the first one, whichever process met
it, with its one message; what is finished stays in the cache.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel

from pipeline.core.errors import (REMEMBERED_FAILURES, ClipError, ConfigError, DamagedArtifactError, PreflightError,
                                  StrictFailure, UnknownStageError, UnreadableFileError, UpstreamMissingError,
                                  VideoChangedError, run_stop_class)
from pipeline.core.cache import Artifact, Cache, artifact_key, default_cache_dir
from pipeline.engine.cachecheck import check_artifact
from pipeline.core.paths import shown
from pipeline.engine.config import dump_config, key_fields
from pipeline.engine.executor import Executor, LocalExecutor
from pipeline.engine.executor_ray import RayExecutor
from pipeline.backends.adapter import training_clips
from pipeline.engine.disjoint import check_disjoint
from pipeline.engine.fingerprints import FingerprintMemo
from pipeline.engine.inputs import VideoRef, discover, parse_shard, same_content_different_labels, shard_of
from pipeline.engine.outputs import write_predictions
from pipeline.core.jobs import ClipJob, ClipTask
from pipeline.eval.labels import LabelError, load_label_set
from pipeline.engine.rundir import (LABELSET, MANIFEST, PREDICTIONS, RUNCARD, SCORES, SPAN_PREDICTIONS, STATUS, TIMELINE,
                                    TIMELINE_SUMMARY,
                                    ManifestRow, RunDir)
from pipeline.engine.timeline import write_timeline
from pipeline.engine.runcard import build_card
from pipeline.engine.units import Units
from pipeline.backends.base import ModelConfig, model_name
from stages import STAGE_ORDER, STAGES
from stages.classify import scored_by
from stages.modelstage import check_fallbacks


@dataclass
class StageReport:
    stage: str
    cached: int = 0
    computed: int = 0
    failed: int = 0
    remembered: int = 0  # of the failed: as in an earlier run, not tried again
    warned: int = 0  # clips its assessment warned about
    reasons: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    note: str = ""

    def add(self, other: "StageReport") -> None:
        """Count what a second pass over some clips did (their artifacts recomputed after damage)."""
        self.computed += other.computed
        self.failed += other.failed
        self.remembered += other.remembered
        self.warned += other.warned
        self.reasons.update(other.reasons)
        self.seconds += other.seconds

    def line(self) -> str:
        why = ", ".join(f"{n} {r}" for r, n in self.reasons.most_common())
        computed = f"{self.computed} computed" + (f" ({why})" if why else "")
        note = f"; {self.note}" if self.note else ""
        failed = f"{self.failed} failed" + (f" ({self.remembered} as in an earlier run: --retry-failed tries them again)"
                                             if self.remembered else "")
        warned = f", {self.warned} warned about" if self.warned else ""
        return f"{self.stage}: {self.cached} cached, {computed}, {failed}{warned} [{self.seconds:.1f} s]{note}"


@dataclass
class RunResult:
    run_dir: Path
    reports: list[StageReport]
    n_clips: int
    n_failed: int
    status: str = "complete"  # complete | stopped | failed (nothing scored)
    stop_message: str | None = None
    keys: dict[str, dict[str, str]] = field(default_factory=dict)  # unit id (a clip's id for its own) -> stage -> key
    warnings: list[dict] = field(default_factory=list)  # video (unit id), stage, message


def stages_to_run(cfg, until: str | None = None, sections: dict[str, BaseModel] | None = None) -> list[str]:
    """Stages a run computes: ``until`` (default: the last pipeline stage) and what it reads, transitively, under
    this config (e.g. not context when classify.use_summaries is off), in execution order. ``sections``: config
    sections of stages that are not in ``cfg`` (tool stages)."""
    sections = sections or {}
    needed = {until or STAGE_ORDER[-1]}
    for name in reversed(list(STAGES)):
        if name in needed:
            needed.update(STAGES[name].upstream_of(sections[name] if name in sections else getattr(cfg, name)))
    return [n for n in STAGES if n in needed]


def check_stage(name: str | None, flag: str) -> None:
    if name is not None and name not in STAGES:
        raise UnknownStageError(f"{flag} {name}: unknown stage; stages are {', '.join(STAGES)}")


def check_labels(refs: list[VideoRef], label_set: str) -> None:
    """Every label a list file gives must be in the label set the clips are scored on; :class:`LabelError` names
    the file, the line and the known labels (before any clip is processed)."""
    labelled = [r for r in refs if r.label or r.spans]
    if labelled:
        ls = load_label_set(label_set)
        for r in labelled:
            if r.label:
                ls.canonical(r.label, r.where or r.id)
            for span in r.spans:
                ls.canonical(span.label, span.where or r.id)


def check_spans(refs: list[VideoRef], segments: str | None) -> None:
    """Labels with times (a list file with start_s/end_s) label segments: they need a segmented run."""
    timed = next((r for r in refs if r.spans), None)
    if timed is not None and not segments:
        raise ConfigError(f"{timed.where}: the list file gives labels with times (start_s, end_s), which are scored "
                          "by the segments of a timeline: run with --segments (e.g. --segments 4s; docs/timelines.md)")


DAMAGED = "damaged in cache"


def _reason(cache: Cache, stage: str, key: str, fp: str, upstream: dict, forced: bool) -> str:
    if forced:
        return "forced"
    if cache.was_damaged(stage, key):
        return DAMAGED
    last = cache.last_inputs(stage, fp)
    if last is None:
        return "new clip"
    if last.get("upstream") != upstream:
        return "upstream changed"
    return "config changed"


class _Progress:
    def __init__(self, stage: str, total: int, enabled: bool, stream: TextIO):
        self.bar = None
        if enabled and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"{stage:>10}", unit="clip", file=stream, dynamic_ncols=True, leave=True)

    def update(self, n: int = 1, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Runner:
    def __init__(
        self,
        cfg,
        out_dir: str | Path,
        *,
        cache_dir: str | Path | None = None,
        until: str | None = None,
        force: str | None = None,
        shard: str | None = None,
        strict: bool = False,
        quiet: bool = False,
        log: TextIO | None = None,
        executor: Executor | None = None,
        sections: dict[str, BaseModel] | None = None,
        rehash: bool = False,
        retry_failed: bool = False,
        allow_overlap: bool = False,
        protect: tuple = (),
    ):
        check_stage(until, "--until")
        check_stage(force, "--force")
        self.cfg = cfg
        self.run_dir = RunDir(out_dir)
        self.cache = Cache(cache_dir if cache_dir is not None else default_cache_dir(), create_root=False)
        self.until = until
        self.force = force
        self.shard = parse_shard(shard) if shard else None
        self.strict = strict
        self.retry_failed = retry_failed
        self.quiet = quiet
        self.log = log or sys.stderr
        self.executor = executor or LocalExecutor(cfg.run.workers)
        self.sections = dict(sections or {})  # config sections of stages that are not in cfg (tool stages)
        self.swapped: dict[str, BaseModel] = {}  # sections run in place of the config's (the embedded model's fallback)
        self.fallbacks: dict[str, dict] = {}  # stage -> what was asked for, what ran, why
        self.fingerprints = FingerprintMemo(self.cache.root, rehash=rehash)
        self._stamps: dict[str, dict] = {}  # video id -> the file's stamp when it was fingerprinted
        self.allow_overlap = allow_overlap
        self.overlap: dict | None = None  # the adapter's training clips among this run's, where allowed
        self._failures = None
        self.protect = tuple(protect)  # files the run reads (--config, the list file): never written or removed
        self.units = Units([])  # the units of work of the run (pipeline/engine/units.py)
        self.warnings: list[dict] = []  # the stages' assessments (Stage.assess)
        self.failed: dict[str, str] = {}  # unit id -> what failed (for the timeline)

    # ----------------------------------------------------------------------------------------
    def say(self, msg: str) -> None:
        print(msg, file=self.log, flush=True)

    def _fail(self, video: str, stage: str, error: str, message: str) -> None:
        stop = run_stop_class(error)
        if stop is not None:  # not the clip's problem, and every later clip would fail alike
            raise stop(message)
        self._failures.write({"video": video, "stage": stage, "error": error, "message": shown(message)})
        self.failed[video] = f"{stage}: {error}: {shown(message)}"
        if self.strict:
            raise StrictFailure(f"stopped at the first failure (--strict): [{stage}] {video}: {error}: {message}")

    def section(self, name: str) -> BaseModel:
        """The config section stage ``name`` runs with (its fallback's, if it fell back)."""
        for sections in (self.swapped, self.sections):
            if name in sections:
                return sections[name]
        return getattr(self.cfg, name)

    def stages(self) -> list[str]:
        """Stages to run (:func:`stages_to_run`)."""
        return stages_to_run(self.cfg, self.until, {**self.sections, **self.swapped})

    # ----------------------------------------------------------------------------------------
    def run(self, refs: list[VideoRef]) -> RunResult:
        if self.shard:
            i, n = self.shard
            refs = [r for r in refs if shard_of(r.id, n) == i]
        blocked = self.check(refs)  # before anything is written: a config that cannot work leaves nothing
        stages = self.stages()  # a fallback may read more (the embedded model reads the expression stage)
        self.cache.create()  # the one place the cache's root is made (one that vanishes later stops the run)
        self.executor.start(self.cache.root)  # e.g. Ray: connect and check the cluster before any clip
        rewritten = {MANIFEST, STATUS, RUNCARD} | ({SCORES, PREDICTIONS, LABELSET} if "classify" in stages else set())
        if "classify" in stages and self.section("faces").segments:
            rewritten |= {TIMELINE, TIMELINE_SUMMARY, SPAN_PREDICTIONS}
        removed, taken_over = self.run_dir.begin_run(self.protect)
        if taken_over:
            self.say(taken_over)
        gone = [name for name in removed if name not in rewritten]
        if gone:  # they described an earlier run in this directory (its artifacts stay in the cache)
            self.say(f"{self.run_dir.path}: removed {', '.join(gone)} of an earlier run there")
        self.run_dir.write_config(dump_config(self.cfg, self.sections))
        self.run_dir.write_runcard(build_card({name: self.section(name) for name in stages}, complete=False))
        self._failures = self.run_dir.failure_log()
        try:
            return self._run(refs, stages, blocked)
        finally:
            self._failures.close()
            self.executor.close()

    def check(self, refs: list[VideoRef]) -> tuple[str, str] | None:
        """What :meth:`run` checks before it writes anything: that the run directory may be written
        (:meth:`RunDir.check_begin`), every stage's preflight (which may make a stage fall back to the embedded model)
        and the labels of a list file. Raises on a configuration that cannot work;
        returns (stage, message) of the first stage the run will stop before (its model weights are not available
        here and nothing can stand in), else None. Writes nothing."""
        self.run_dir.check_begin(self.protect)  # a folder of the user's, or an input it would overwrite: refused
        check_spans(refs, self.section("faces").segments)
        blocked = self._preflight()
        if "classify" in self.stages():
            check_labels(refs, self.cfg.classify.labels)
            if blocked is None:  # classify runs (a run that stops never reaches it, the last stage)
                self._check_adapter_clips(refs)
        return blocked

    def _check_adapter_clips(self, refs: list[VideoRef]) -> None:
        """The clips of this run must not be among those ``classify.adapter`` was trained or validated on (by content
        fingerprint): :class:`OverlapError` unless ``allow_overlap`` (then :attr:`overlap` records them)."""
        adapter = self.section("classify").adapter
        trained = training_clips(adapter) if adapter is not None else None
        if trained is None:
            if adapter is not None:
                self.say(f"note: the adapter {adapter} does not record the clips it was trained on (made by another "
                         "tool or an older dfer): whether this run tests on them cannot be checked")
            return
        mine = {}
        for ref in refs:
            try:
                mine[ref.id] = self.fingerprints.fingerprint(ref.path)
            except OSError:
                continue  # the run records it as a failure of its own
        pairs = check_disjoint(trained, mine, f"the training and validation clips of the adapter {adapter}",
                               "this run", self.allow_overlap)
        if pairs:
            self.overlap = {"adapter": adapter, "clips": [t for t, _ in pairs]}
            self.say(f"warning: {len(pairs)} clip(s) of this run are among the adapter's training or validation clips "
                     f"(allowed): {', '.join(t for t, _ in pairs[:10])}")

    def _preflight(self) -> tuple[str, str] | None:
        """Checks of every stage to run, before any clip is processed. A configuration that cannot
        work raises; weights that are not available here make the stage fall back to the embedded model
        (:meth:`_fall_back`) or, where it cannot, the run stop before that stage (returns (stage, message)
        of the first such stage)."""
        blocked, checked = None, set()
        while todo := [n for n in self.stages() if n not in checked]:  # a fallback may add stages to check
            for name in todo:
                checked.add(name)
                message = STAGES[name].preflight(self.section(name))
                if message and not self._fall_back(name, message) and blocked is None:
                    self.say(f"note: the run will stop before stage '{name}': {message}")
                    blocked = (name, message)
        check_fallbacks(self.fallbacks, self.section, self.stages(), blocked[0] if blocked else None)
        return blocked

    def _fall_back(self, name: str, message: str) -> bool:
        """Run stage ``name`` with the embedded model (its ``fallback``) since its model cannot be had here, loudly;
        False where it must not (``run.fallback=stop``, ``--strict``) or cannot (no fallback, or one that would not
        pass the stage's checks either)."""
        if self.strict or self.cfg.run.fallback == "stop":
            return False
        fb = STAGES[name].fallback(self.section(name))
        if fb is None:
            return False
        try:
            if STAGES[name].preflight(fb.section) is not None:
                return False
        except PreflightError as exc:
            self.say(f"note: the embedded model cannot stand in for {fb.asked} in stage '{name}': {exc}")
            return False
        self.swapped[name] = fb.section
        self.fallbacks[name] = {"stage": name, "asked": fb.asked, "ran": fb.ran, "reason": message}
        self.say(f"warning: {message}\nwarning: stage '{name}' falls back to the embedded model {fb.ran} instead of "
                 f"{fb.asked} (run.fallback=stop or --strict stop the run before it instead)")
        return True

    def _canonical_label(self):
        """A label's canonical name in the label set classify scores (the label as written when it is not known)."""
        try:
            ls = load_label_set(self.cfg.classify.labels)
        except LabelError:
            return str

        def canonical(label: str) -> str:
            try:
                return ls.canonical(label)
            except LabelError:
                return label

        return canonical

    def _fingerprints(self, refs: list[VideoRef]) -> dict[str, str]:
        def fp(ref: VideoRef):
            try:
                return ref, self.fingerprints.fingerprint_and_stamp(ref.path), None
            except VideoChangedError as exc:
                return ref, None, (VideoChangedError.__name__, str(exc))
            except UnreadableFileError as exc:  # not a regular file (a FIFO, a device): never opened
                return ref, None, ("UnreadableFileError", str(exc))
            except FileNotFoundError:
                return ref, None, ("UnreadableFileError", f"{ref.path}: file not found")
            except PermissionError:
                return ref, None, ("UnreadableFileError", f"{ref.path}: permission denied (cannot read the file)")
            except IsADirectoryError:
                return ref, None, ("UnreadableFileError", f"{ref.path}: is a directory, not a video file")
            except OSError as exc:
                return ref, None, ("UnreadableFileError", f"{ref.path}: cannot read the file ({exc.strerror})")

        out = {}
        with ThreadPoolExecutor(max_workers=4) as pool:
            for ref, value, err in pool.map(fp, refs):
                if err:
                    self._fail(ref.id, "input", *err)
                else:
                    out[ref.id], self._stamps[ref.id] = value
        return out

    def _run(self, refs: list[VideoRef], stages: list[str], blocked) -> RunResult:
        t_start = time.time()
        fps = self._fingerprints(refs)
        for note in same_content_different_labels(refs, fps, self._canonical_label()):
            self.say(f"warning: {note}")
        by_id = {r.id: r for r in refs}
        active = [r.id for r in refs if r.id in fps]
        keys: dict[str, dict[str, str]] = {vid: {} for vid in active}
        self.units = Units(active)
        reports: dict[str, StageReport] = {}
        n_failed = len(refs) - len(active)
        status, stop_message = "complete", None
        split = False
        for i, name in enumerate(stages):
            if blocked and blocked[0] == name:
                status, stop_message = "stopped", blocked[1]
                break
            if STAGES[name].per_unit and not split:  # the clips' units (subjects) from the per-clip stages before
                active = self.units.split([STAGES[n] for n in stages[:i]], {n: self.section(n) for n in stages[:i]},
                                          self.cache, keys, active)
                split = True
            report, failed_ids, redo = self._run_stage(name, active, by_id, fps, keys, self._forced(name, stages))
            reports[name] = report
            if redo:  # upstream artifacts found damaged while this stage read them: moved aside; once more from there
                failed_ids |= self._redo(stages[: i + 1], redo, by_id, fps, keys, reports)
            failed_ids |= self._assess(name, [u for u in active if u not in failed_ids], keys, report)
            if name in self.fallbacks:
                report.note = f"fallback: {self.fallbacks[name]['ran']} instead of {self.fallbacks[name]['asked']}"
            elif report.computed + report.failed and self.executor.note(name):
                report.note = self.executor.note(name)
            n_failed += len(failed_ids)
            active = [v for v in active if v not in failed_ids]
            self.say(report.line())
            self._say_warnings(name)
        self._write_manifest(refs, fps, keys)
        scoring = None
        if status == "complete" and "classify" in stages:
            damaged: list[tuple[str, DamagedArtifactError]] = []
            outputs = write_predictions(self.run_dir, self.section("classify"), self.cache, refs, keys,
                                        on_damaged=lambda vid, exc: damaged.append((vid, exc)), units=self.units)
            for vid, exc in damaged:  # damaged after the stage checked it: its clip has no prediction this time
                n_failed += 1
                self._fail(vid, "classify", type(exc).__name__, self._moved_aside(exc.stage, exc.key, str(exc))
                           + "; run the same command again to recompute it")
            self.say(outputs.summary)
            scoring = outputs.status()
            if self.section("faces").segments:
                timeline = write_timeline(self.run_dir, self.section("classify"), self.section("faces"), self.cache,
                                          refs, keys, self.failed, scored_by(self.section("classify")))
                self.say(timeline.line(self.run_dir))
                scoring["timeline"] = timeline.status()
            if not outputs.scored:
                status = "failed"
                stop_message = (f"nothing scored: none of the {len(refs)} clips reached a classify score "
                                f"({n_failed} failed; see {self.run_dir.path / 'failures.jsonl'})")
        status_doc = {
            "status": status,
            "stopped_before": blocked[0] if status == "stopped" else None,
            "message": stop_message,
            "clips": len(refs),
            "failed": n_failed,
            "stages": list(reports),
            "fallbacks": [self.fallbacks[r] for r in reports if r in self.fallbacks],
            **({"training_overlap": self.overlap} if self.overlap else {}),
            "models": self._models(list(reports)),
            "scoring": scoring,
            "seconds": round(time.time() - t_start, 2),
        }
        if self.warnings:
            status_doc["warnings"] = self.warnings
        self.run_dir.write_status(status_doc)
        self.run_dir.write_runcard(build_card({name: self.section(name) for name in reports}, complete=True,
                                              here=not isinstance(self.executor, RayExecutor)))
        return RunResult(self.run_dir.path, list(reports.values()), len(refs), n_failed, status, stop_message, keys,
                         self.warnings)

    def _forced(self, name: str, stages: list[str]) -> bool:
        """``--force``: this stage and every one after it are recomputed."""
        return self.force in stages and stages.index(name) >= stages.index(self.force)

    def _redo(self, stages: list[str], redo: dict[str, str], by_id, fps, keys, reports) -> set[str]:
        """The clips ``redo`` (video id -> the stage whose artifact of it was found damaged and moved aside) once more
        through ``stages`` from the earliest such stage: the damaged artifact is recomputed, the sound ones between
        are reused. Returns the clips that failed this time (a damaged artifact again is a failure now)."""
        first = min(stages.index(s) for s in redo.values())
        failed: set[str] = set()
        for name in stages[first:]:
            todo = [v for v in sorted(redo) if v not in failed]
            if not todo:
                break
            report, failed_ids, _ = self._run_stage(name, todo, by_id, fps, keys, self._forced(name, stages), again=True)
            self.say(f"{report.line()} (again for {len(todo)} clip(s) with an upstream artifact found damaged)")
            reports[name].add(report)
            failed |= failed_ids
        return failed

    def _moved_aside(self, stage: str, key: str, message: str) -> str:
        """Move a damaged artifact aside (``Cache.quarantine``); ``message`` with where it went. A cache that vanished
        is not damage: it stops the run."""
        self.cache.check_root()
        moved = self.cache.quarantine(stage, key, message)
        return f"{message}; moved aside to {moved}" if moved else message

    def _sound(self, name: str, candidates: dict[str, str]) -> tuple[set[str], set[str]]:
        """Which cached artifacts of stage ``name`` (video id -> key) are sound, which were damaged (each named in a
        warning and moved aside, to be recomputed). Checked in a few threads (hashing reads every byte)."""
        present = [(vid, art) for vid, key in candidates.items() if (art := self.cache.get(name, key)) is not None]

        def one(item):
            vid, art = item
            try:
                check_artifact(art)
            except DamagedArtifactError as exc:
                return vid, exc
            return vid, None

        sound, damaged = set(), set()
        with ThreadPoolExecutor(max_workers=4) as pool:
            for vid, exc in pool.map(one, present):
                if exc is None:
                    sound.add(vid)
                else:
                    damaged.add(vid)
                    self.say(f"warning: {self._moved_aside(exc.stage, exc.key, str(exc))}; recomputing it")
        return sound, damaged

    def _models(self, stages: list[str]) -> dict[str, str]:
        """The model each model stage that ran ran (its fallback's where it fell back), as messages name it."""
        out = {}
        for name in stages:
            model = getattr(self.section(name), "model", None)
            if isinstance(model, ModelConfig):
                out[name] = model_name(model)
        return out

    def _write_manifest(self, refs, fps, keys) -> None:
        def rows():
            for r in refs:
                yield ManifestRow(r.id, str(r.path), r.label, fps.get(r.id), keys.get(r.id, {}))
                for u in self.units.of(r.id)[1:]:  # the clip's other units (subjects), each with its own keys
                    yield ManifestRow(r.id, str(r.path), None, fps.get(r.id), keys.get(u.id, {}), u.part)

        self.run_dir.write_manifest(rows(), self.cache.root)

    def _assess(self, name: str, active: list[str], keys, report: StageReport) -> set[str]:
        """A stage's verdict on each unit's artifact (``Stage.assess``: thin evidence, ...), cached or new: its
        warnings are kept for the run's output and status.json; a unit it fails leaves the later stages."""
        stage, section, failed = STAGES[name], self.section(name), set()
        for uid in active:
            key = keys[uid][name]
            try:
                notes = stage.assess(section, Artifact(name, key, self.cache.dir_for(name, key)))
            except ClipError as exc:
                report.failed += 1
                failed.add(uid)
                self._fail(uid, name, type(exc).__name__, str(exc))
                continue
            if notes:
                report.warned += 1
                self.warnings += [{"video": uid, "stage": name, "message": m} for m in notes]
        return failed

    def _say_warnings(self, name: str, most: int = 5) -> None:
        mine = [w for w in self.warnings if w["stage"] == name]
        for w in mine[:most]:
            self.say(f"warning: {w['message']}")
        if len(mine) > most:
            self.say(f"warning: ... and {len(mine) - most} more from stage {name} (all in {self.run_dir / STATUS})")

    def _run_stage(self, name, active, by_id, fps, keys, forced,
                   again: bool = False) -> tuple[StageReport, set[str], dict[str, str]]:
        """Stage ``name`` over the clips ``active``: returns its report, the clips that failed, and the clips to go
        through the stages again (video id -> the upstream stage whose artifact a worker found damaged; never when
        ``again``, where that is a failure)."""
        stage = STAGES[name]
        section = self.section(name)
        kcfg = key_fields(section)
        extras = stage.key_extras(section)
        report = StageReport(name)
        t0 = time.time()
        self.cache.check_root()
        self.cache.sweep_stale(name)  # temporary folders of runs killed more than a day ago
        failed: set[str] = set()
        redo: dict[str, str] = {}
        todo: list[tuple[str, ClipTask]] = []
        reasons: dict[str, str] = {}
        ups = stage.upstream_of(section)
        mine = []  # the units this stage runs on: each unit for a per-unit stage, a clip's own unit otherwise
        for uid in active:
            unit = self.units[uid]
            if not stage.per_unit and not unit.own:  # a per-clip stage after the split: once per clip, its units share it
                keys[uid][name] = keys[unit.video][name]
                continue
            upstream = {u: keys[uid][u] for u in ups}
            extras_u = self.units.extras(unit, extras) if stage.per_unit else extras
            keys[uid][name] = artifact_key(name, stage.version, kcfg, upstream, fps[unit.video], extras_u)
            mine.append(uid)
        sound, damaged = (set(), set()) if forced else self._sound(name, {uid: keys[uid][name] for uid in mine})
        for uid in mine:
            unit = self.units[uid]
            vid = unit.video
            key = keys[uid][name]
            upstream = {u: keys[uid][u] for u in ups}
            if uid in sound:
                report.cached += 1
                continue
            known = None if forced or self.retry_failed or uid in damaged else self.cache.failure(name, key)
            if known is not None:  # the same file, settings and code failed before: not tried again
                report.failed += 1
                report.remembered += 1
                failed.add(uid)
                self._fail(uid, name, known["error"], known["message"])
                continue
            ref = by_id[vid]
            job = ClipJob(
                vid,
                ref.path,
                fps[vid],
                ref.label if unit.own else None,
                {u: self.cache.get(u, keys[uid][u]) for u in ups},
                self._stamps.get(vid),
                unit=unit.part,
            )
            missing = [u for u, a in job.upstream.items() if a is None]
            if missing:
                self.cache.check_root()  # a cache that vanished stops the run instead of blaming every clip
                failed.add(uid)
                self._fail(uid, name, UpstreamMissingError.__name__, f"{ref.path}: upstream artifact(s) {missing} missing from the cache")
                continue
            record = self.units.record(fps[vid], unit)
            reason = DAMAGED if uid in damaged else _reason(self.cache, name, key, record, upstream, forced)
            meta = {
                "video_id": vid,
                "fingerprint": fps[vid],
                "stage_version": stage.version,
                "config": kcfg,
                "upstream": upstream,
                "extras": self.units.extras(unit, extras) if stage.per_unit else extras,
            }
            if unit.part:
                meta["unit"] = unit.part
            reasons[uid] = reason
            todo.append((uid, ClipTask(name, section.model_dump(mode="json"), job, str(self.cache.root), key, meta, forced)))
        progress = _Progress(name, len(todo), self.cfg.run.progress and not self.quiet, self.log)
        try:
            for vid, result in self._compute(stage, section, todo):  # vid: a unit id (a clip's id for its own unit)
                if result.ok:
                    report.computed += 1
                    report.reasons[reasons[vid]] += 1
                    task_meta = result.meta or {}
                    unit = self.units[vid]
                    self.cache.record_last(name, self.units.record(fps[unit.video], unit),
                                           {"key": keys[vid][name], "upstream": task_meta.get("upstream", {})})
                    if forced or self.retry_failed:
                        self.cache.forget_failure(name, keys[vid][name])
                elif result.damaged and result.damaged[0] in ups and not again:
                    message = self._moved_aside(*result.damaged, result.message or "")
                    self.say(f"warning: {message}; recomputing it")
                    redo[vid] = result.damaged[0]
                else:
                    message = result.message or ""
                    if result.damaged:
                        message = self._moved_aside(*result.damaged, message) + "; run the same command again to recompute it"
                    report.failed += 1
                    failed.add(vid)
                    if result.error_type in REMEMBERED_FAILURES:
                        self.cache.record_failure(name, keys[vid][name], {"error": result.error_type, "message": message})
                    self._fail(vid, name, result.error_type or "Error", message)
                progress.update(1, failed=report.failed)
        finally:
            progress.close()
        report.seconds = time.time() - t0
        return report, failed, redo

    def _compute(self, stage, section, todo):
        if not todo:
            return
        if stage.batched:
            yield from self.executor.map_batched(stage, section, todo, self.cache, self.cfg.run.batch_size)
            return
        for i, result in self.executor.map([t for _, t in todo]):
            yield todo[i][0], result


def executor_for(kind: str, run_section, address: str | None = None):
    """The executor ``dfer run --executor KIND [--ray-address ADDR]`` means (``run_section``: ``cfg.run``)."""
    if kind == "ray":
        return RayExecutor.from_config(run_section, address=address)
    if address:
        raise ConfigError("--ray-address needs --executor ray")
    return LocalExecutor(run_section.workers)


def run_pipeline(input_path, out_dir, cfg, **kwargs) -> RunResult:
    """Library entry point behind ``dfer run`` (``protect``: more files the run reads, e.g. ``--config``; the input
    itself is protected anyway)."""
    refs = discover(input_path)
    kwargs["protect"] = (input_path, *kwargs.get("protect", ()))
    return Runner(cfg, out_dir, **kwargs).run(refs)
