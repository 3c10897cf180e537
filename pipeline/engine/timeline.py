"""A segmented run's timelines: ``RUN/timeline.csv`` and ``RUN/timeline_summary.csv`` (``docs/timelines.md``).

Written after ``predictions.csv`` from the same cached classify scores and by the same rule
(:func:`pipeline.eval.ranking.decide`), one clip at a time (memory flat in the number of segments): every segment
of the clip (and of each person under ``faces.subjects=all``) in time order, including those that were not scored,
with why (``too_little_face``: the face is on less than ``faces.segment_min_face`` of its frames; ``failed``: a
stage failed on it, the failure named). Per clip (and person) one summary row: the dominant label (most scored
time), the share of the scored time per label (a segment counts for its length; overlapping segments of a stride
shorter than the length each count), and the number of changes of the predicted label between consecutive scored
segments.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from pipeline.core.cache import Cache
from pipeline.core.errors import DamagedArtifactError
from pipeline.core.jobs import unit_id
from pipeline.engine.outputs import probabilities
from pipeline.engine.rundir import RunDir
from pipeline.eval.answers import AnswerParser
from pipeline.eval.labels import load_label_set
from pipeline.eval.ranking import decide
from pipeline.eval.spans import Span, score_span, span_label
from stages.faces.stage import segment_rows

TOO_LITTLE_FACE = "too_little_face"
FAILED = "failed"


@dataclass
class TimelineOutputs:
    segments: int = 0
    scored: int = 0
    unscored: Counter = field(default_factory=Counter)
    videos: int = 0
    spans: int = 0  # labelled spans scored into span_predictions.csv

    def status(self) -> dict:
        """``status.json``'s ``scoring.timeline``."""
        return {"segments": self.segments, "scored": self.scored, "unscored": dict(self.unscored),
                "labelled_spans": self.spans}

    def line(self, run_dir: RunDir) -> str:
        why = ", ".join(f"{n} {k}" for k, n in self.unscored.most_common())
        spans = f"; {self.spans} labelled spans scored -> {run_dir / 'span_predictions.csv'}" if self.spans else ""
        return (f"timeline: {self.segments} segments of {self.videos} clips, {self.scored} scored"
                + (f" ({why})" if why else "") + f" -> {run_dir / 'timeline.csv'}{spans}")


def write_timeline(run_dir: RunDir, cfg, faces_cfg, cache: Cache, refs, keys: dict, failures: dict[str, str],
                   model: str) -> TimelineOutputs:
    """``timeline.csv`` and ``timeline_summary.csv`` of a run segmented by ``faces_cfg.segments`` (``cfg``: the
    classify section that ran; ``keys`` by unit id; ``failures``: unit id -> what failed), and where the clips have
    labelled spans (``VideoRef.spans``) ``span_predictions.csv``: each span scored by the segments that overlap it
    (:func:`pipeline.eval.spans.score_span`; ``model``: the model that scored the segments)."""
    label_set = load_label_set(cfg.labels)
    names = label_set.names
    parse = AnswerParser(label_set).parse
    out = TimelineOutputs()
    tw, sw = run_dir.timeline_writers(names)
    pw = run_dir.span_writer(names) if any(_spans_of(r) for r in refs) else None
    try:
        for ref in refs:
            fkey = keys.get(ref.id, {}).get("faces")
            faces = cache.get("faces", fkey) if fkey else None
            if faces is None:
                continue  # the clip failed before it had segments (failures.jsonl says why)
            try:
                rows = segment_rows(faces_cfg, faces)
            except DamagedArtifactError as exc:
                failures[ref.id] = str(exc)
                continue
            out.videos += 1
            labelled = [replace(sp, label=label_set.canonical(sp.label)) for sp in _spans_of(ref)]
            scored_rows: list[dict] = []  # the subject's segments, for the labelled spans
            for subject in dict.fromkeys(r["subject"] for r in rows):
                mine = [r for r in rows if r["subject"] == subject]
                summary = _Summary(len(names))
                for r in mine:
                    prediction, probs, scored, reason = _outcome(r, ref.id, faces_cfg, cache, keys, failures, names,
                                                                 cfg.length_norm, parse)
                    label = span_label(labelled, r["start_s"], r["end_s"]) if subject == 0 else None
                    tw.write(ref.id, subject, r["segment"], r["start_s"], r["end_s"], r["face_share"], prediction,
                             probs, label, scored, reason)
                    if subject == 0 and pw is not None:
                        scored_rows.append({"start_s": r["start_s"], "end_s": r["end_s"], "prediction": prediction,
                                            **({f"p_{lab}": float(p) for lab, p in zip(names, probs)}
                                               if probs is not None else {})})
                    out.segments += 1
                    if prediction is None:
                        out.unscored[scored if scored in (TOO_LITTLE_FACE, FAILED) else "abstained"] += 1
                    else:
                        out.scored += 1
                    summary.add(r["end_s"] - r["start_s"], prediction, names)
                duration = max((r["end_s"] for r in mine), default=0.0)
                sw.write(ref.id, subject, duration, len(mine), summary.n, summary.dominant(names), summary.shares(),
                         summary.changes, len(names))
            for sp in labelled:
                pred, probs, n, why = score_span(sp, scored_rows, names)
                pw.write(ref.id, pred, probs if pred is not None else None, sp.label, model,
                         "exact" if pred is not None else "none", why,
                         {"start_s": f"{sp.start:.3f}", "end_s": "" if sp.end is None else f"{sp.end:.3f}", "segments": n})
                out.spans += 1
    finally:
        tw.close()
        sw.close()
        if pw is not None:
            pw.close()
    return out


def _spans_of(ref) -> tuple:
    """A clip's labelled spans: those of a list file with times, else its clip-level label as one span over the whole
    recording (so a labelled dataset run with ``--segments`` is scored per clip from its segments)."""
    return ref.spans or ((Span(0.0, None, ref.label, ref.where),) if ref.label else ())


def _outcome(r: dict, video: str, faces_cfg, cache: Cache, keys: dict, failures: dict, names, length_norm, parse):
    """(prediction, probabilities, scored, reason) of one segment row."""
    if not r["enough"]:
        return None, None, TOO_LITTLE_FACE, (f"the face is on {r['face_share']:.0%} of the segment's frames, below "
                                             f"faces.segment_min_face={faces_cfg.segment_min_face:g}")
    uid = unit_id(video, r["part"])
    key = keys.get(uid, {}).get("classify")
    art = cache.get("classify", key) if key else None
    if art is None:
        return None, None, FAILED, failures.get(uid, "not scored (see failures.jsonl)")
    try:
        d = decide(art.json("scores.json"), names, length_norm, parse)
    except DamagedArtifactError as exc:
        return None, None, FAILED, str(exc)
    probs = None if d.prediction is None else probabilities([d.scores[lab] for lab in names])
    return d.prediction, probs, d.scored, d.abstained


class _Summary:
    def __init__(self, n_labels: int):
        self.time = [0.0] * n_labels
        self.n = 0
        self.changes = 0
        self._last: str | None = None

    def add(self, seconds: float, prediction: str | None, names: list[str]) -> None:
        if prediction is None:
            return
        self.n += 1
        self.time[names.index(prediction)] += seconds
        if self._last is not None and prediction != self._last:
            self.changes += 1
        self._last = prediction

    def shares(self) -> list[float] | None:
        total = sum(self.time)
        return [t / total for t in self.time] if total > 0 else None

    def dominant(self, names: list[str]) -> str | None:
        """The label with the most scored time (None without any, or when two share the most: no tie is broken)."""
        best = max(self.time, default=0.0)
        if best <= 0 or self.time.count(best) > 1:
            return None
        return names[self.time.index(best)]
